/* The agent's get socket: key releases served by a native thread (docs/spec/protocol.md, "The get socket").
 *
 * Theory of operation. This is the fast twin of the JSON `get` (AgentState._get), and it does only
 * its success path. The Python agent decides everything: it mirrors here each unlocked vault whose
 * client rules this code decides exactly as Python does (none, or allow_uids), with put() (the
 * secret, the deadlines, allow_uids), and removes it on lock with drop() (wiped at once). A thread
 * of this module, which never takes the GIL, accepts clients on a second listening socket, checks
 * SO_PEERCRED (our uid or root; anyone else is closed before a byte is read), and gives each
 * request one of two answers:
 *   - the key, once its audit line is written whole (one write, its length checked); or
 *   - "ask the agent socket", for anything else: a vault not mirrored here, locked, or past a
 *     deadline the agent's timer has not acted on yet; a uid the rule refuses; a raw secret the vault
 *     does not release; a context or program path the audit line would have to escape; a malformed
 *     request; an audit log that cannot take the line or is due to rotate.
 * The client then sends the same get as JSON to the agent socket, which answers the refusal with its
 * code, its message and its audit line. So each refusal has one implementation, in Python, and this
 * file holds no message, no JSON or UTF-8 encoder, no name rule: only what a release needs, with
 * constants a test compares with the Python ones and vectors (tests/vectors/get-socket) both read.
 * Key releases push the idle deadline here; the agent reads it back with usage().
 *
 * The audit log has one writer in the process when this module is loaded: the function here that
 * appends a line (one write, its length checked, a line cut short truncated away), used by the
 * thread and, through audit_write(), by the agent socket's Python code (daemon/audit.py), under
 * one mutex, with the file's size kept here. Only the Python side rotates: a line that would take
 * the file past the cap is not written (the thread asks the agent socket instead); Python renames
 * the files and calls audit_reopen(), and the next line starts the new file.
 *
 * SHA-256, HMAC and HKDF are libcrypto's. Secrets live in one mmap'd, mlocked, MADV_DONTDUMP page
 * per vault (the secret and its HKDF pseudorandom key), wiped with explicit_bzero on drop and at
 * stop; answers holding a key are wiped once sent. One server per process. All shared state is
 * under one mutex; Python-facing calls hold the GIL and then the mutex, the thread only ever takes
 * the mutex, so the two cannot deadlock.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

/* Each of these equals its Python twin (tests/agent/test_get_socket.py compares them). */
#define VERSION 1
#define OP_GET 1
#define MAX_BODY 2048          /* protocol.GET_MAX_BODY: a larger length is asked elsewhere and ends the connection */
#define MAX_NAME 64            /* vault.check_name */
#define MAX_CONTEXT 256        /* state.MAX_CONTEXT (characters; served here only as printable ASCII) */
#define KEY_LEN 32             /* vault.crypto.KEY_LEN: a subkey */
#define MAX_SECRET 4096        /* vault.format.MAX_SECRET_LEN */
#define LABEL_CONTEXT "tokenagent/v1/context"  /* vault.crypto.LABEL_CONTEXT */

#define STATUS_KEY 0
#define STATUS_ASK 2           /* "ask the agent socket" (1 was a refusal with its message, answered by older agents) */
#define BUCKETS 256            /* of the vault table */

/* ---------------------------------------------------------------- HKDF-SHA256 (libcrypto) */

/* The vault's pseudorandom key: HKDF-Extract with no salt. 0 on success. */
static int hkdf_extract(const uint8_t *secret, size_t n, uint8_t prk[KEY_LEN])
{
    int mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY, ok;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, n),
        OSSL_PARAM_construct_end()};
    ok = ctx != NULL && EVP_KDF_derive(ctx, prk, KEY_LEN, params) == 1;
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return ok ? 0 : -1;
}

/* The subkey for a context: HKDF-Expand(PRK, LABEL || 0 || context, 32). The server thread keeps
 * one context (`kdf`) for its expansions; `info` is a scratch buffer of the caller. 0 on success. */
static int hkdf_expand(EVP_KDF_CTX *kdf, const uint8_t prk[KEY_LEN], const uint8_t *context, size_t n,
                       uint8_t out[KEY_LEN])
{
    uint8_t info[sizeof LABEL_CONTEXT + MAX_CONTEXT];
    int ok;
    OSSL_PARAM params[] = {  /* the digest and the mode were set once (new_expander) */
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)prk, KEY_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, sizeof LABEL_CONTEXT + n),
        OSSL_PARAM_construct_end()};
    if (n > MAX_CONTEXT)
        return -1;
    memcpy(info, LABEL_CONTEXT, sizeof LABEL_CONTEXT);  /* the label and its 0 separator */
    memcpy(info + sizeof LABEL_CONTEXT, context, n);
    ok = EVP_KDF_derive(kdf, out, KEY_LEN, params) == 1;
    explicit_bzero(info, sizeof info);
    return ok ? 0 : -1;
}

/* A context for hkdf_expand: HKDF-SHA256, expand only (the digest is looked up once, here). */
static EVP_KDF_CTX *new_expander(void)
{
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_end()};
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);  /* the context keeps its own reference */
    if (ctx != NULL && EVP_KDF_CTX_set_params(ctx, params) != 1) {
        EVP_KDF_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* ---------------------------------------------------------------- vaults (the agent's mirror) */

typedef struct {           /* the locked page */
    uint8_t prk[KEY_LEN];
    size_t secret_len;
    uint8_t secret[MAX_SECRET];
} vault_secret;

typedef struct vault {
    struct vault *next;
    char name[MAX_NAME + 1];
    size_t name_len;
    int allow_raw;
    vault_secret *key;     /* mmap'd, mlocked where allowed */
    size_t key_size;
    double idle_ttl;       /* each release pushes idle_deadline this far; 0: no idle lock */
    double idle_deadline;  /* < 0: none */
    double hard_deadline;  /* < 0: none */
    uint64_t releases;
    Py_ssize_t n_uids;     /* -1: no rule */
    unsigned long *uids;
} vault;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static vault *vaults[BUCKETS];         /* under lock: the table */
static pthread_mutex_t audit_mutex = PTHREAD_MUTEX_INITIALIZER;  /* taken after `lock`, never before */
static char *audit_path;               /* under audit_mutex; NULL: no audit log */
static long long audit_cap;            /* bytes; 0: no cap */
static int audit_fd = -1;
static off_t audit_size;               /* of the open file: read at open, then counted */
static int listen_fd = -1, wake_fd = -1, spare_fd = -1, epfd = -1;
static int max_clients = 512;
static double frame_timeout = 10.0;
static pthread_t thread;
static int running;

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void vault_free(vault *v)
{
    if (v->key != NULL) {
        explicit_bzero(v->key, v->key_size);
        munlock(v->key, v->key_size);
        munmap(v->key, v->key_size);
    }
    free(v->uids);
    explicit_bzero(v, sizeof *v);
    free(v);
}

/* The table: names hashed (FNV-1a) into BUCKETS lists, so a thousand vaults cost a get nothing. */
static unsigned bucket_of(const char *name, size_t n)
{
    uint32_t h = 2166136261u;
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ (uint8_t)name[i]) * 16777619u;
    return h % BUCKETS;
}

static vault **vault_slot(const char *name, size_t n)
{
    vault **p;
    for (p = &vaults[bucket_of(name, n)]; *p != NULL; p = &(*p)->next)
        if ((*p)->name_len == n && memcmp((*p)->name, name, n) == 0)
            return p;
    return p;
}

static vault *vault_find(const char *name, size_t n) { return *vault_slot(name, n); }

static int vault_unlink(const char *name, size_t n)
{
    vault **p = vault_slot(name, n), *v = *p;
    if (v == NULL)
        return 0;
    *p = v->next;
    vault_free(v);
    return 1;
}

static void vault_insert(vault *v)
{
    vault **head = &vaults[bucket_of(v->name, v->name_len)];
    vault_unlink(v->name, v->name_len);
    v->next = *head;
    *head = v;
}

static void vault_clear(void)
{
    int b;
    for (b = 0; b < BUCKETS; b++) {
        while (vaults[b] != NULL) {
            vault *v = vaults[b];
            vaults[b] = v->next;
            vault_free(v);
        }
    }
}

/* Text the audit line carries as it is: printable ASCII without '"' and '\\', which Python's
 * JSON encoder writes unchanged. Anything else is left to the agent socket. */
static int plain(const uint8_t *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- requests */

typedef struct {
    const uint8_t *name;
    size_t name_len;
    const uint8_t *context; /* NULL: the raw secret */
    size_t context_len;
} get_request;

/* 1 for a request this code may serve (version 1, get, a name of 1 to MAX_NAME bytes, no context
 * or a plain one of 1 to MAX_CONTEXT bytes, lengths adding up); 0: ask the agent socket. */
static int parse_request(const uint8_t *b, size_t n, get_request *r)
{
    size_t pos;
    if (n < 5 || b[0] != VERSION || b[1] != OP_GET || b[2] < 1 || b[2] > MAX_NAME || n < (size_t)5 + b[2])
        return 0;
    r->name = b + 3;
    r->name_len = b[2];
    pos = 3 + r->name_len;
    r->context_len = (size_t)b[pos] << 8 | b[pos + 1];
    pos += 2;
    if (pos + r->context_len != n || r->context_len > MAX_CONTEXT || !plain(b + pos, r->context_len))
        return 0;
    r->context = r->context_len ? b + pos : NULL;
    return 1;
}

/* ---------------------------------------------------------------- the audit line */

typedef struct {
    long pid;
    unsigned long uid;
    const char *exe, *parent_exe;   /* NULL: unknown (null in the line) */
} peer_info;

#define LINE_MAX_LEN (2 * PATH_MAX + MAX_CONTEXT + MAX_NAME + 256)

static int put_field(char *buf, size_t cap, size_t *n, const char *fmt, const char *value)
{
    int k;
    if (value == NULL)
        k = snprintf(buf + *n, cap - *n, fmt, "null", "", "");
    else
        k = snprintf(buf + *n, cap - *n, fmt, "\"", value, "\"");
    if (k < 0 || (size_t)k >= cap - *n)
        return -1;
    *n += (size_t)k;
    return 0;
}

/* The line of a release, as daemon/audit.py's audit_line() writes it (keys sorted; every string
 * plain, so no escaping). Its length, or 0 if it does not fit. */
static size_t release_line(char *buf, size_t cap, const get_request *r, const peer_info *p, double when)
{
    char context[MAX_CONTEXT + 1];
    size_t n = 0;
    int k;
    memcpy(context, r->context ? (const char *)r->context : "", r->context_len);
    context[r->context_len] = 0;
    if (put_field(buf, cap, &n, "{\"context\": %s%s%s, \"error\": null", r->context ? context : NULL) ||
        put_field(buf, cap, &n, ", \"exe\": %s%s%s, \"ok\": true, \"op\": \"get\"", p->exe) ||
        put_field(buf, cap, &n, ", \"parent_exe\": %s%s%s", p->parent_exe))
        return 0;
    k = snprintf(buf + n, cap - n, ", \"pid\": %ld, \"time\": %.3f, \"uid\": %lu, \"vault\": \"%.*s\"}\n", p->pid,
                 when, p->uid, (int)r->name_len, (const char *)r->name);
    if (k < 0 || (size_t)k >= cap - n)
        return 0;
    return n + (size_t)k;
}

/* Under audit_mutex. */
static void audit_close(void)
{
    if (audit_fd >= 0)
        close(audit_fd);
    audit_fd = -1;
}

/* Under audit_mutex: append one whole line. 0: written; 1: not written, it would take the file past
 * the cap (the agent socket's writer rotates first); -1: not written, errno says why, nothing of it
 * left in the file. */
static int audit_append(const char *line, size_t n)
{
    struct stat st;
    ssize_t k;
    off_t end;
    int err;
    if (audit_path == NULL)
        return 0;
    if (audit_fd < 0) {
        /* O_NONBLOCK: a FIFO planted at the path must not block this thread (and the mutex the
         * agent socket's writer waits on); anything but a regular file is refused (daemon/audit.py) */
        audit_fd = open(audit_path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
                        0600);
        if (audit_fd < 0)
            return -1;
        if (fstat(audit_fd, &st) != 0) {
            err = errno;
            audit_close();
            errno = err;
            return -1;
        }
        if (!S_ISREG(st.st_mode)) {
            audit_close();
            errno = ENXIO;
            return -1;
        }
        audit_size = st.st_size;
    }
    if (audit_cap > 0 && audit_size > 0 && audit_size + (off_t)n > audit_cap)
        return 1;
    k = write(audit_fd, line, n);
    if (k == (ssize_t)n) {
        audit_size += (off_t)n;
        return 0;
    }
    err = k < 0 ? errno : ENOSPC;
    /* cut short (a full disk): our bytes end at the offset O_APPEND left; take them out again */
    if (k > 0 && (end = lseek(audit_fd, 0, SEEK_CUR)) >= k && ftruncate(audit_fd, end - k) != 0) { /* closed below */ }
    audit_close();  /* reopened, and its size read again, by the next line */
    errno = err;
    return -1;
}

/* ---------------------------------------------------------------- connections */

#define OUT_SIZE (2 * (4 + 2 + MAX_SECRET) + 1024)

typedef struct conn {
    int fd;
    peer_info peer;
    int plain_peer;                  /* exe and parent_exe can go in the audit line unescaped */
    uint8_t in[4 + MAX_BODY];
    size_t in_len;
    double pending_since;            /* a frame started and is not complete yet */
    uint8_t out[OUT_SIZE];
    size_t out_len, out_pos;
    int closing;
    int waiting_out;                 /* registered for EPOLLOUT instead of EPOLLIN */
    struct conn *next;
} conn;

/* Room for one more answer of any kind (a raw secret is the longest). */
#define ROOM(c) (sizeof (c)->out - (c)->out_len >= 4 + 2 + MAX_SECRET)

static conn *conns;
static int n_conns;

static char *read_exe(long pid)
{
    char path[64], buf[PATH_MAX];
    ssize_t n;
    if (pid <= 0)
        return NULL;
    snprintf(path, sizeof path, "/proc/%ld/exe", pid);
    n = readlink(path, buf, sizeof buf - 1);
    if (n < 0)
        return NULL;
    buf[n] = 0;
    return strdup(buf);
}

static long parent_of(long pid)
{
    char path[64], buf[1024], *close_paren;
    long ppid;
    ssize_t n;
    int fd;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    close_paren = strrchr(buf, ')');
    if (close_paren == NULL || sscanf(close_paren + 1, " %*c %ld", &ppid) != 1)
        return 0;
    return ppid;
}

static int plain_or_null(const char *s) { return s == NULL || plain((const uint8_t *)s, strlen(s)); }

static void answer(conn *c, int status, const uint8_t *key, size_t n)
{
    size_t body = 2 + n;
    uint8_t *o = c->out + c->out_len;
    if (c->out_len + 4 + body > sizeof c->out)
        return;
    o[0] = (uint8_t)(body >> 24), o[1] = (uint8_t)(body >> 16), o[2] = (uint8_t)(body >> 8), o[3] = (uint8_t)body;
    o[4] = VERSION, o[5] = (uint8_t)status;
    if (n > 0)
        memcpy(o + 6, key, n);
    c->out_len += 4 + body;
}

static void ask_agent(conn *c) { answer(c, STATUS_ASK, NULL, 0); }

static int uid_allowed(const vault *v, unsigned long uid)
{
    Py_ssize_t i;
    if (v->n_uids < 0)
        return 1;
    for (i = 0; i < v->n_uids; i++)
        if (v->uids[i] == uid)
            return 1;
    return 0;
}

static EVP_KDF_CTX *expander;  /* the thread's */

/* Answer one complete request body: the key, or ask the agent socket. */
static void serve_get(conn *c, const uint8_t *body, size_t n)
{
    get_request r;
    char line[LINE_MAX_LEN];
    uint8_t key[MAX_SECRET];
    size_t key_len, line_len;
    struct timespec wall;
    vault *v;
    double now;
    int ok;

    if (!c->plain_peer || !parse_request(body, n, &r)) {
        ask_agent(c);
        return;
    }
    pthread_mutex_lock(&lock);
    now = monotonic();
    v = vault_find((const char *)r.name, r.name_len);
    if (v == NULL || (v->hard_deadline >= 0 && now >= v->hard_deadline) ||
        (v->idle_deadline >= 0 && now >= v->idle_deadline) || !uid_allowed(v, c->peer.uid) ||
        (r.context == NULL && !v->allow_raw)) {
        pthread_mutex_unlock(&lock);
        ask_agent(c);  /* a refusal: the agent socket gives it, its message and its audit line */
        return;
    }
    if (r.context != NULL) {
        ok = hkdf_expand(expander, v->key->prk, r.context, r.context_len, key) == 0;
        key_len = KEY_LEN;
    } else {
        key_len = v->key->secret_len;
        memcpy(key, v->key->secret, key_len);
        ok = 1;
    }
    clock_gettime(CLOCK_REALTIME, &wall);
    line_len = release_line(line, sizeof line, &r, &c->peer, (double)wall.tv_sec + (double)wall.tv_nsec / 1e9);
    if (ok && line_len > 0) {
        pthread_mutex_lock(&audit_mutex);
        ok = audit_append(line, line_len) == 0;
        pthread_mutex_unlock(&audit_mutex);
    }
    if (!ok || line_len == 0) {
        pthread_mutex_unlock(&lock);
        explicit_bzero(key, sizeof key);
        ask_agent(c);  /* no audit line, no key: the agent socket writes it, or says why it cannot */
        return;
    }
    if (v->idle_ttl > 0)
        v->idle_deadline = now + v->idle_ttl;
    v->releases++;
    pthread_mutex_unlock(&lock);
    answer(c, STATUS_KEY, key, key_len);
    explicit_bzero(key, sizeof key);
}

/* ---------------------------------------------------------------- the event loop */

static void conn_close(conn *c)
{
    conn **p;
    for (p = &conns; *p != NULL; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    /* Deregister before closing: epoll watches the open file, not the descriptor, and a child
     * forked at this moment (fork + exec of any helper, by any thread) holds the file open after
     * our close. Without this, epoll went on reporting the closed connection, and its freed
     * struct was used again: the "double free or corruption" in conn_close. */
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free((char *)c->peer.exe);
    free((char *)c->peer.parent_exe);
    explicit_bzero(c, sizeof *c);
    free(c);
    n_conns--;
}

/* Send what is queued; wipe it once sent. Returns 0, or -1 when the connection is gone. */
static int conn_flush(conn *c)
{
    struct epoll_event ev;
    while (c->out_pos < c->out_len) {
        ssize_t k = send(c->fd, c->out + c->out_pos, c->out_len - c->out_pos, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->waiting_out) {
                ev.events = EPOLLOUT;  /* no more requests read until the answers are taken */
                ev.data.ptr = c;
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->waiting_out = 1;
            }
            return 0;
        }
        if (k <= 0)
            return -1;
        c->out_pos += (size_t)k;
    }
    explicit_bzero(c->out, c->out_len);
    c->out_len = c->out_pos = 0;
    if (c->waiting_out) {
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.ptr = c;
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->waiting_out = 0;
        if (c->pending_since >= 0)
            c->pending_since = monotonic();  /* we read again: the rest of its frame gets the full time */
    }
    return c->closing ? -1 : 0;
}

static int frame_complete(const conn *c)
{
    size_t len;
    if (c->in_len < 4)
        return 0;
    len = (size_t)c->in[0] << 24 | (size_t)c->in[1] << 16 | (size_t)c->in[2] << 8 | c->in[3];
    return len > MAX_BODY || c->in_len >= 4 + len;
}

/* Serve the complete frames in the input buffer while there is room for their answers. */
static void conn_frames(conn *c)
{
    size_t pos = 0;
    while (!c->closing && ROOM(c) && c->in_len - pos >= 4) {
        uint8_t *p = c->in + pos;
        size_t len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (len > MAX_BODY) {
            ask_agent(c);  /* its JSON twin is within the agent socket's limits */
            c->closing = 1;
            break;
        }
        if (c->in_len - pos < 4 + len)
            break;
        serve_get(c, p + 4, len);
        pos += 4 + len;
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        explicit_bzero(c->in + c->in_len - pos, pos);
        c->in_len -= pos;
        c->pending_since = -1;
    }
    if (c->in_len == 0 || frame_complete(c))
        c->pending_since = -1;  /* nothing half-sent (complete frames wait for the client to read) */
    else if (c->pending_since < 0)
        c->pending_since = monotonic();  /* a frame has begun: it must end within frame_timeout */
}

/* Read and answer until the client has nothing more to say for now. A short read means the
 * socket is drained: epoll (level-triggered) says when there is more, without a recv that
 * would only fail with EAGAIN. */
static void conn_readable(conn *c)
{
    int drained = 0;
    for (;;) {
        size_t room;
        ssize_t k;
        conn_frames(c);
        if (c->out_len > 0) {
            if (conn_flush(c) < 0) {
                conn_close(c);
                return;
            }
            if (c->out_len > 0)
                return;  /* the client is not reading: EPOLLOUT brings us back */
        }
        if (frame_complete(c))
            continue;  /* frames that waited for room */
        if (drained)
            return;
        room = sizeof c->in - c->in_len;
        k = recv(c->fd, c->in + c->in_len, room, MSG_DONTWAIT);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (k <= 0) {  /* closed by the client, or an error */
            conn_close(c);
            return;
        }
        c->in_len += (size_t)k;
        drained = (size_t)k < room;
    }
}

static void accept_clients(void)
{
    for (;;) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        struct epoll_event ev;
        conn *c;
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && spare_fd >= 0) {
                /* out of descriptors: take the waiting client with the spare one and drop it,
                 * so the listening socket does not stay readable forever */
                close(spare_fd);
                fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd >= 0)
                    close(fd);
                spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            }
            return;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
            (cred.uid != getuid() && cred.uid != 0) || n_conns >= max_clients) {
            close(fd);  /* not a byte read from a stranger */
            continue;
        }
        c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->peer.pid = cred.pid;
        c->peer.uid = cred.uid;
        c->peer.exe = read_exe(cred.pid);
        c->peer.parent_exe = read_exe(parent_of(cred.pid));
        c->plain_peer = plain_or_null(c->peer.exe) && plain_or_null(c->peer.parent_exe);
        c->pending_since = -1;
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.ptr = c;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free((char *)c->peer.exe);
            free((char *)c->peer.parent_exe);
            free(c);
            continue;
        }
        c->next = conns;
        conns = c;
        n_conns++;
    }
}

static int next_timeout_ms(void)
{
    double soonest = -1, now = monotonic();
    conn *c;
    for (c = conns; c != NULL; c = c->next)
        if (c->pending_since >= 0 && !c->waiting_out && (soonest < 0 || c->pending_since + frame_timeout < soonest))
            soonest = c->pending_since + frame_timeout;
    if (soonest < 0)
        return -1;
    return soonest <= now ? 0 : (int)((soonest - now) * 1000) + 1;
}

static void close_stalled(void)
{
    double now = monotonic();
    conn *c = conns, *next;
    for (; c != NULL; c = next) {
        next = c->next;
        if (c->pending_since >= 0 && !c->waiting_out && now - c->pending_since >= frame_timeout)
            conn_close(c);  /* a frame stalled half-way (not: we stopped reading a client that does not read) */
    }
}

static void *serve(void *unused)
{
    struct epoll_event ev, events[64];
    int i, n;
    (void)unused;
    ev.events = EPOLLIN;
    ev.data.ptr = &listen_fd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev);
    ev.data.ptr = &wake_fd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, wake_fd, &ev);
    for (;;) {
        n = epoll_wait(epfd, events, 64, next_timeout_ms());
        if (n < 0 && errno != EINTR)
            break;
        for (i = 0; i < n; i++) {
            void *who = events[i].data.ptr;
            if (who == &wake_fd)
                goto out;
            if (who == &listen_fd) {
                accept_clients();
                continue;
            }
            conn *c = who;
            if (events[i].events & EPOLLOUT) {
                if (conn_flush(c) < 0) {
                    conn_close(c);
                    continue;
                }
                if (c->out_len == 0)
                    conn_readable(c);  /* requests that waited for the answers to go */
            } else {
                conn_readable(c);
            }
            /* a connection closed above is deregistered and freed: no later event names it (each
             * registration appears at most once per epoll_wait, and none outlives its connection) */
        }
        close_stalled();
    }
out:
    while (conns != NULL)
        conn_close(conns);
    pthread_mutex_lock(&audit_mutex);
    audit_close();
    pthread_mutex_unlock(&audit_mutex);
    return NULL;
}

/* ---------------------------------------------------------------- the Python interface */

static void close_fds(void)
{
    if (wake_fd >= 0)
        close(wake_fd);
    if (spare_fd >= 0)
        close(spare_fd);
    if (epfd >= 0)
        close(epfd);
    wake_fd = spare_fd = epfd = -1;
    EVP_KDF_CTX_free(expander);
    expander = NULL;
}

/* The log both writers append to (None: none); 1, or 0 with an exception set. */
static int set_audit_log(PyObject *path, long long cap)
{
    char *copy = NULL;
    if (path != Py_None) {
        PyObject *encoded;
        if (!PyUnicode_FSConverter(path, &encoded))
            return 0;
        copy = strdup(PyBytes_AS_STRING(encoded));
        Py_DECREF(encoded);
        if (copy == NULL) {
            PyErr_NoMemory();
            return 0;
        }
    }
    pthread_mutex_lock(&audit_mutex);
    audit_close();
    free(audit_path);
    audit_path = copy;
    audit_cap = cap;
    pthread_mutex_unlock(&audit_mutex);
    return 1;
}

static PyObject *py_start(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"listen_fd", "audit_path", "max_clients", "frame_timeout", "audit_max_size", NULL};
    int fd, clients = 512, created;
    double timeout = 10.0;
    long long cap = 0;
    PyObject *path = Py_None;
    sigset_t all, old;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|OidL", names, &fd, &path, &clients, &timeout, &cap))
        return NULL;
    if (running) {
        PyErr_SetString(PyExc_RuntimeError, "the get socket is already served");
        return NULL;
    }
    if (!set_audit_log(path, cap))
        return NULL;
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)  /* accept until EAGAIN */
        return PyErr_SetFromErrno(PyExc_OSError);
    listen_fd = fd;
    max_clients = clients;
    frame_timeout = timeout;
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    expander = new_expander();
    sigfillset(&all);  /* the thread takes no signal: they stay with the agent's event loop */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    created = wake_fd >= 0 && epfd >= 0 && expander != NULL && pthread_create(&thread, NULL, serve, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!created) {
        close_fds();
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    running = 1;
    Py_RETURN_NONE;
}

static PyObject *py_stop(PyObject *self, PyObject *unused)
{
    uint64_t one = 1;
    (void)self, (void)unused;
    if (running) {
        if (write(wake_fd, &one, sizeof one) < 0) { /* the thread still stops: at exit */ }
        Py_BEGIN_ALLOW_THREADS
        pthread_join(thread, NULL);
        Py_END_ALLOW_THREADS
        close_fds();
        running = 0;
    }
    pthread_mutex_lock(&lock);
    vault_clear();
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

/* audit_write(line) -> 0 written whole, 1 due to rotate (not written); OSError: not written. */
static PyObject *py_audit_write(PyObject *self, PyObject *args)
{
    Py_buffer line;
    int result, err = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &line))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&audit_mutex);
    result = audit_path == NULL ? -2 : audit_append(line.buf, (size_t)line.len);
    err = errno;
    pthread_mutex_unlock(&audit_mutex);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&line);
    if (result == -2) {
        PyErr_SetString(PyExc_RuntimeError, "no audit log is configured (start)");
        return NULL;
    }
    if (result < 0) {
        errno = err;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, audit_path);
    }
    return PyLong_FromLong(result);
}

/* audit_reopen(): the files were renamed (rotated): sync and close this one; the next line opens the path. */
static PyObject *py_audit_reopen(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&audit_mutex);
    if (audit_fd >= 0)
        fdatasync(audit_fd);
    audit_close();
    pthread_mutex_unlock(&audit_mutex);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static int deadline_arg(PyObject *o, double *out)
{
    if (o == Py_None) {
        *out = -1;
        return 1;
    }
    *out = PyFloat_AsDouble(o);
    return !(*out == -1.0 && PyErr_Occurred());
}

static int uids_arg(PyObject *o, vault *v)
{
    PyObject *seq;
    Py_ssize_t i;
    if (o == Py_None)
        return 1;
    seq = PySequence_Fast(o, "allow_uids must be a sequence");
    if (seq == NULL)
        return 0;
    v->n_uids = PySequence_Fast_GET_SIZE(seq);
    v->uids = calloc((size_t)v->n_uids + 1, sizeof *v->uids);
    if (v->uids == NULL)
        PyErr_NoMemory();
    for (i = 0; v->uids != NULL && i < v->n_uids && !PyErr_Occurred(); i++)
        v->uids[i] = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    return !PyErr_Occurred();
}

static PyObject *py_put(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"name", "secret", "allow_raw", "idle_ttl", "idle_deadline", "hard_deadline",
                            "allow_uids", NULL};
    const char *name;
    Py_ssize_t name_len;
    Py_buffer secret;
    int allow_raw;
    double idle_ttl;
    PyObject *idle_o, *hard_o, *uids_o;
    vault *v;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s#y*pdOOO", names, &name, &name_len, &secret, &allow_raw,
                                     &idle_ttl, &idle_o, &hard_o, &uids_o))
        return NULL;
    /* names are checked by the agent (vault.check_name) before a vault is unlocked */
    if (name_len < 1 || name_len > MAX_NAME || secret.len < 1 || secret.len > MAX_SECRET) {
        PyBuffer_Release(&secret);
        PyErr_SetString(PyExc_ValueError, "bad vault name or secret size");
        return NULL;
    }
    v = calloc(1, sizeof *v);
    if (v == NULL) {
        PyBuffer_Release(&secret);
        return PyErr_NoMemory();
    }
    memcpy(v->name, name, (size_t)name_len);
    v->name_len = (size_t)name_len;
    v->allow_raw = allow_raw;
    v->idle_ttl = idle_ttl;
    v->n_uids = -1;
    if (!deadline_arg(idle_o, &v->idle_deadline) || !deadline_arg(hard_o, &v->hard_deadline) || !uids_arg(uids_o, v))
        goto fail;
    v->key_size = (sizeof(vault_secret) + 4095) & ~(size_t)4095;
    v->key = mmap(NULL, v->key_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v->key == MAP_FAILED) {
        v->key = NULL;
        PyErr_NoMemory();
        goto fail;
    }
    madvise(v->key, v->key_size, MADV_DONTDUMP);
    mlock(v->key, v->key_size); /* best effort, as for the agent's own copy */
    v->key->secret_len = (size_t)secret.len;
    memcpy(v->key->secret, secret.buf, (size_t)secret.len);
    if (hkdf_extract(v->key->secret, v->key->secret_len, v->key->prk) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto's HKDF failed");
        goto fail;
    }
    PyBuffer_Release(&secret);
    pthread_mutex_lock(&lock);
    vault_insert(v);
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&secret);
    vault_free(v);
    return NULL;
}

static PyObject *py_drop(PyObject *self, PyObject *args)
{
    const char *name;
    Py_ssize_t n;
    int found;
    (void)self;
    if (!PyArg_ParseTuple(args, "s#", &name, &n))
        return NULL;
    pthread_mutex_lock(&lock);
    found = vault_unlink(name, (size_t)n);
    pthread_mutex_unlock(&lock);
    return PyBool_FromLong(found);
}

static PyObject *py_usage(PyObject *self, PyObject *args)
{
    const char *name;
    Py_ssize_t n;
    vault *v;
    double idle;
    unsigned long long releases;
    (void)self;
    if (!PyArg_ParseTuple(args, "s#", &name, &n))
        return NULL;
    pthread_mutex_lock(&lock);
    v = vault_find(name, (size_t)n);
    if (v == NULL) {
        pthread_mutex_unlock(&lock);
        Py_RETURN_NONE;
    }
    idle = v->idle_deadline;
    releases = v->releases;
    pthread_mutex_unlock(&lock);
    if (idle < 0)
        return Py_BuildValue("(OK)", Py_None, releases);
    return Py_BuildValue("(dK)", idle, releases);
}

static PyObject *py_extend(PyObject *self, PyObject *args)
{
    const char *name;
    Py_ssize_t n;
    double deadline;
    vault *v;
    (void)self;
    if (!PyArg_ParseTuple(args, "s#d", &name, &n, &deadline))
        return NULL;
    pthread_mutex_lock(&lock);
    v = vault_find(name, (size_t)n);
    if (v != NULL && v->idle_deadline >= 0 && deadline > v->idle_deadline)
        v->idle_deadline = deadline;
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

/* Test hooks: the parser, the derivation and the audit line as served, for the shared vectors and
 * the comparisons with the Python twins. */
static PyObject *py_parse(PyObject *self, PyObject *args)
{
    Py_buffer body;
    get_request r;
    PyObject *result;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &body))
        return NULL;
    if (!parse_request(body.buf, (size_t)body.len, &r))
        result = Py_NewRef(Py_None);
    else if (r.context == NULL)
        result = Py_BuildValue("(y#O)", r.name, (Py_ssize_t)r.name_len, Py_None);
    else
        result = Py_BuildValue("(y#y#)", r.name, (Py_ssize_t)r.name_len, r.context, (Py_ssize_t)r.context_len);
    PyBuffer_Release(&body);
    return result;
}

static PyObject *py_derive(PyObject *self, PyObject *args)
{
    Py_buffer secret, context;
    uint8_t prk[KEY_LEN], out[KEY_LEN];
    EVP_KDF_CTX *kdf;
    PyObject *result = NULL;
    int ok;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*", &secret, &context))
        return NULL;
    kdf = new_expander();
    ok = kdf != NULL && secret.len >= 1 && secret.len <= MAX_SECRET && context.len >= 1 &&
         context.len <= MAX_CONTEXT && hkdf_extract(secret.buf, (size_t)secret.len, prk) == 0 &&
         hkdf_expand(kdf, prk, context.buf, (size_t)context.len, out) == 0;
    EVP_KDF_CTX_free(kdf);
    PyBuffer_Release(&secret);
    PyBuffer_Release(&context);
    if (ok)
        result = PyBytes_FromStringAndSize((const char *)out, KEY_LEN);
    else
        PyErr_SetString(PyExc_ValueError, "a secret of 1-4096 bytes and a context of 1-256 bytes");
    explicit_bzero(prk, sizeof prk);
    explicit_bzero(out, sizeof out);
    return result;
}

static PyObject *py_release_line(PyObject *self, PyObject *args)
{
    Py_buffer body;
    const char *exe, *parent_exe;
    long pid;
    unsigned long uid;
    double when;
    get_request r;
    peer_info p;
    char line[LINE_MAX_LEN];
    size_t n = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*zzlkd", &body, &exe, &parent_exe, &pid, &uid, &when))
        return NULL;
    p.pid = pid, p.uid = uid, p.exe = exe, p.parent_exe = parent_exe;
    if (plain_or_null(exe) && plain_or_null(parent_exe) && parse_request(body.buf, (size_t)body.len, &r))
        n = release_line(line, sizeof line, &r, &p, when);
    PyBuffer_Release(&body);
    if (n == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(line, (Py_ssize_t)n);
}

static PyMethodDef methods[] = {
    {"start", (PyCFunction)(void (*)(void))py_start, METH_VARARGS | METH_KEYWORDS,
     "start(listen_fd, audit_path=None, max_clients=512, frame_timeout=10.0, audit_max_size=0): serve in a thread"},
    {"stop", py_stop, METH_NOARGS, "stop(): end the thread, close its clients, wipe every vault"},
    {"put", (PyCFunction)(void (*)(void))py_put, METH_VARARGS | METH_KEYWORDS,
     "put(name, secret, allow_raw, idle_ttl, idle_deadline, hard_deadline, allow_uids)"},
    {"drop", py_drop, METH_VARARGS, "drop(name) -> bool: wipe and forget a vault"},
    {"extend", py_extend, METH_VARARGS, "extend(name, idle_deadline): a release on the agent socket pushed it"},
    {"usage", py_usage, METH_VARARGS, "usage(name) -> (idle_deadline or None, releases) or None"},
    {"audit_write", py_audit_write, METH_VARARGS, "audit_write(line) -> 0 written, 1 due to rotate; OSError"},
    {"audit_reopen", py_audit_reopen, METH_NOARGS, "audit_reopen(): rotated: the next line opens the path anew"},
    {"parse", py_parse, METH_VARARGS, "parse(body) -> (name, context or None), or None: ask the agent socket"},
    {"derive", py_derive, METH_VARARGS, "derive(secret, context) -> the subkey the get socket releases"},
    {"release_line", py_release_line, METH_VARARGS,
     "release_line(body, exe, parent_exe, pid, uid, time) -> the audit line of a release, or None"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_getserver",
                                    "The agent's get socket, served by a native thread.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__getserver(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", VERSION) || PyModule_AddIntConstant(m, "MAX_BODY", MAX_BODY) ||
        PyModule_AddIntConstant(m, "MAX_NAME", MAX_NAME) || PyModule_AddIntConstant(m, "MAX_CONTEXT", MAX_CONTEXT) ||
        PyModule_AddIntConstant(m, "KEY_LEN", KEY_LEN) || PyModule_AddIntConstant(m, "MAX_SECRET", MAX_SECRET) ||
        PyModule_AddIntConstant(m, "STATUS_ASK", STATUS_ASK) ||
        PyModule_AddObject(m, "LABEL_CONTEXT", PyBytes_FromString(LABEL_CONTEXT))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
