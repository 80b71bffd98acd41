/* The agent's get socket: key releases served by a native thread (docs/spec/protocol.md, "The get socket").
 *
 * Theory of operation. The Python agent owns every decision but one: it unlocks and locks
 * vaults, and mirrors each unlocked vault here with put() (its secret, its client rules and
 * deadlines) and drop() (wiped at once). A thread of this module, which never takes the GIL,
 * accepts clients on a second listening socket, checks SO_PEERCRED (our uid or root; anyone
 * else is closed before a byte is read), and answers binary `get` requests exactly as the
 * Python dispatcher answers the JSON `get`: the same deadlines on CLOCK_MONOTONIC (an expired
 * vault is never released, even before the agent's timer locks it), the same allow_uids and
 * allow_exe rules, the same HKDF-SHA256 subkey, the same audit line written before the key
 * leaves (fail closed), the same error codes and messages. Key releases push the idle deadline
 * here; the agent reads it back with usage().
 *
 * Secrets live in one mmap'd, mlocked, MADV_DONTDUMP page per vault and are wiped with
 * explicit_bzero on drop and at stop; answers holding a key are wiped once sent.
 * One server per process. All shared state is under one mutex; Python-facing calls hold the
 * GIL and then the mutex, the thread only ever takes the mutex, so the two cannot deadlock.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define VERSION 1
#define OP_GET 1
#define MAX_BODY 2048          /* a request body; a larger length is `too-large` and ends the connection */
#define MAX_NAME 64
#define MAX_CONTEXT_CHARS 256
#define KEY_LEN 32
#define MAX_SECRET 4096
#define BUCKETS 256            /* of the vault table */
#define LABEL_CONTEXT "tokenagent/v1/context"

/* ---------------------------------------------------------------- SHA-256 (FIPS 180-4) */

typedef struct {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    size_t used;
} sha256_ctx;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const uint8_t p[64])
{
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
    explicit_bzero(w, sizeof w);
}

static void sha256_init(sha256_ctx *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->bytes = 0;
    c->used = 0;
}

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t n)
{
    c->bytes += n;
    while (n > 0) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->buf + c->used, p, take);
        c->used += take, p += take, n -= take;
        if (c->used == 64) {
            sha256_block(c->h, c->buf);
            c->used = 0;
        }
    }
}

static void sha256_final(sha256_ctx *c, uint8_t out[32])
{
    uint64_t bits = c->bytes * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    int i;
    sha256_update(c, &pad, 1);
    while (c->used != 56)
        sha256_update(c, &zero, 1);
    for (i = 0; i < 8; i++)
        len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, len, 8);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24), out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8), out[4 * i + 3] = (uint8_t)c->h[i];
    }
    explicit_bzero(c, sizeof *c);
}

/* HMAC-SHA256 as two hash states keyed once (RFC 2104); `hmac_keyed` then costs two hashes. */
typedef struct {
    sha256_ctx inner, outer;
} hmac_key;

static void hmac_setkey(hmac_key *k, const uint8_t *key, size_t n)
{
    uint8_t block[64], pad[64];
    int i;
    memset(block, 0, sizeof block);
    if (n > 64) {
        sha256_ctx c;
        sha256_init(&c);
        sha256_update(&c, key, n);
        sha256_final(&c, block);
    } else {
        memcpy(block, key, n);
    }
    for (i = 0; i < 64; i++)
        pad[i] = block[i] ^ 0x36;
    sha256_init(&k->inner);
    sha256_update(&k->inner, pad, 64);
    for (i = 0; i < 64; i++)
        pad[i] = block[i] ^ 0x5c;
    sha256_init(&k->outer);
    sha256_update(&k->outer, pad, 64);
    explicit_bzero(block, sizeof block);
    explicit_bzero(pad, sizeof pad);
}

/* HMAC(key, a || b || c) */
static void hmac_keyed(const hmac_key *k, const uint8_t *a, size_t an, const uint8_t *b, size_t bn,
                       const uint8_t *c, size_t cn, uint8_t out[32])
{
    sha256_ctx ctx = k->inner;
    uint8_t ih[32];
    sha256_update(&ctx, a, an);
    sha256_update(&ctx, b, bn);
    sha256_update(&ctx, c, cn);
    sha256_final(&ctx, ih);
    ctx = k->outer;
    sha256_update(&ctx, ih, 32);
    sha256_final(&ctx, out);
    explicit_bzero(ih, sizeof ih);
}

/* HKDF-SHA256 with no salt: PRK = HMAC(0^32, secret), kept keyed for the expand step. */
static void hkdf_prk(hmac_key *prk, const uint8_t *secret, size_t n)
{
    hmac_key zero;
    uint8_t salt[32], out[32];
    memset(salt, 0, sizeof salt);
    hmac_setkey(&zero, salt, sizeof salt);
    hmac_keyed(&zero, secret, n, NULL, 0, NULL, 0, out);
    hmac_setkey(prk, out, sizeof out);
    explicit_bzero(out, sizeof out);
    explicit_bzero(&zero, sizeof zero);
}

/* The subkey for a context: the first 32 bytes of HKDF-Expand(PRK, LABEL || 0 || context). */
static void derive_subkey(const hmac_key *prk, const uint8_t *context, size_t n, uint8_t out[KEY_LEN])
{
    static const uint8_t label[] = LABEL_CONTEXT "\0"; /* the label and its 0 separator */
    static const uint8_t counter = 1;
    hmac_keyed(prk, label, sizeof label - 1, context, n, &counter, 1, out);
}

/* ---------------------------------------------------------------- vaults (the agent's mirror) */

typedef struct {           /* the locked page */
    hmac_key prk;
    size_t secret_len;
    uint8_t secret[MAX_SECRET];
} vault_secret;

typedef struct vault {
    struct vault *next;
    char name[MAX_NAME + 1];
    int allow_raw;
    vault_secret *key;     /* mmap'd, mlocked where allowed */
    size_t key_size;
    double idle_ttl;       /* each release pushes idle_deadline this far; 0: no idle lock */
    double idle_deadline;  /* < 0: none */
    double hard_deadline;  /* < 0: none */
    uint64_t releases;
    Py_ssize_t n_uids;     /* -1: no rule */
    unsigned long *uids;
    Py_ssize_t n_exe;      /* -1: no rule */
    char **exe;
} vault;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static vault *vaults[BUCKETS];         /* under lock: the table */
static char *audit_path;               /* NULL: no audit log; set before the thread starts */
static int audit_fd = -1;              /* the thread's own */
static int listen_fd = -1, wake_fd = -1, spare_fd = -1;
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
    Py_ssize_t i;
    if (v->key != NULL) {
        explicit_bzero(v->key, v->key_size);
        munlock(v->key, v->key_size);
        munmap(v->key, v->key_size);
    }
    free(v->uids);
    for (i = 0; i < v->n_exe; i++)
        free(v->exe[i]);
    free(v->exe);
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

static vault *vault_find(const char *name, size_t n)
{
    vault *v;
    for (v = vaults[bucket_of(name, n)]; v != NULL; v = v->next)
        if (strlen(v->name) == n && memcmp(v->name, name, n) == 0)
            return v;
    return NULL;
}

static int vault_unlink(const char *name)
{
    vault **p;
    for (p = &vaults[bucket_of(name, strlen(name))]; *p != NULL; p = &(*p)->next) {
        if (strcmp((*p)->name, name) == 0) {
            vault *v = *p;
            *p = v->next;
            vault_free(v);
            return 1;
        }
    }
    return 0;
}

static void vault_insert(vault *v)
{
    vault **head = &vaults[bucket_of(v->name, strlen(v->name))];
    vault_unlink(v->name);
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

/* ---------------------------------------------------------------- text helpers */

typedef struct {
    char *p;
    size_t n, cap;
    int overflow;
} text;

static void put_bytes(text *t, const char *s, size_t n)
{
    if (t->n + n > t->cap) {
        t->overflow = 1;
        return;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
}

static void put_str(text *t, const char *s) { put_bytes(t, s, strlen(s)); }

static void put_fmt(text *t, const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf)
        t->overflow = 1;
    else
        put_bytes(t, buf, (size_t)n);
}

/* Decode one UTF-8 sequence at s[0..n); return its length and the code point, or 0 if invalid
 * (overlong forms, surrogates and values above U+10FFFF are invalid, as in Python's decoder). */
static size_t utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint32_t c = s[0], min;
    size_t len, i;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0)
        len = 2, c &= 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        len = 3, c &= 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        len = 4, c &= 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* Count the characters of valid UTF-8, or -1. */
static long utf8_chars(const uint8_t *s, size_t n)
{
    long chars = 0;
    uint32_t cp;
    while (n > 0) {
        size_t k = utf8_next(s, n, &cp);
        if (k == 0)
            return -1;
        s += k, n -= k, chars++;
    }
    return chars;
}

/* A JSON string as Python's json.encoder.encode_basestring_ascii writes it. Bytes that are not
 * UTF-8 (a program path) appear as Python's surrogateescape decoding shows them: \udcXX. */
static void put_json(text *t, const char *value, size_t n)
{
    const uint8_t *s = (const uint8_t *)value;
    uint32_t cp;
    if (value == NULL) {
        put_str(t, "null");
        return;
    }
    put_bytes(t, "\"", 1);
    while (n > 0) {
        size_t k = utf8_next(s, n, &cp);
        if (k == 0)
            cp = 0xDC00 | s[0], k = 1;
        s += k, n -= k;
        switch (cp) {
        case '"': put_str(t, "\\\""); break;
        case '\\': put_str(t, "\\\\"); break;
        case '\n': put_str(t, "\\n"); break;
        case '\r': put_str(t, "\\r"); break;
        case '\t': put_str(t, "\\t"); break;
        case '\b': put_str(t, "\\b"); break;
        case '\f': put_str(t, "\\f"); break;
        default:
            if (cp >= 0x20 && cp < 0x7F) {
                char ch = (char)cp;
                put_bytes(t, &ch, 1);
            } else if (cp < 0x10000) {
                put_fmt(t, "\\u%04x", cp);
            } else {
                cp -= 0x10000;
                put_fmt(t, "\\u%04x\\u%04x", 0xD800 | (cp >> 10), 0xDC00 | (cp & 0x3FF));
            }
        }
    }
    put_bytes(t, "\"", 1);
}

static int valid_name(const uint8_t *s, size_t n)
{
    size_t i;
    if (n < 1 || n > MAX_NAME || !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') ||
                                   (s[0] >= '0' && s[0] <= '9')))
        return 0;
    for (i = 1; i < n; i++) {
        uint8_t c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    if ((n >= 4 && memcmp(s + n - 4, ".bak", 4) == 0) || (n >= 5 && memcmp(s + n - 5, ".lock", 5) == 0))
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

/* Parse a request body. Returns NULL, or the error code with *message set. */
static const char *parse_request(const uint8_t *b, size_t n, get_request *r, const char **message)
{
    size_t pos;
    long chars;
    if (n < 2) {
        *message = "a get-socket request needs a version and an op";
        return "protocol";
    }
    if (b[0] != VERSION) {
        *message = "get-socket version not supported (this agent speaks 1)";
        return "unsupported";
    }
    if (b[1] != OP_GET) {
        *message = "the get socket answers only get (op 1); use the agent socket";
        return "unsupported";
    }
    if (n < 3 || n < (size_t)3 + b[2] + 2) {
        *message = "get request truncated";
        return "protocol";
    }
    r->name = b + 3;
    r->name_len = b[2];
    pos = 3 + r->name_len;
    r->context_len = (size_t)b[pos] << 8 | b[pos + 1];
    pos += 2;
    if (pos + r->context_len != n) {
        *message = "get request length does not match its fields";
        return "protocol";
    }
    r->context = r->context_len ? b + pos : NULL;
    if (!valid_name(r->name, r->name_len)) {
        *message = "invalid vault name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit";
        return "usage";
    }
    if (r->context != NULL) {
        chars = utf8_chars(r->context, r->context_len);
        if (chars < 1 || chars > MAX_CONTEXT_CHARS) {
            *message = "context must be a string of 1 to 256 characters";
            return "usage";
        }
    }
    return NULL;
}

#define OUT_SIZE (2 * (4 + 2 + MAX_SECRET) + 1024)

typedef struct conn {
    int fd;
    long pid;
    unsigned long uid;
    char *exe, *parent_exe;          /* NULL: unknown */
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
#define ROOM(c) (sizeof (c)->out - (c)->out_len >= 4 + 2 + MAX_SECRET + 1024)

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

/* Write the audit line; 0 on success. Reopens the log once on failure, like the agent. */
static int audit(const conn *c, const char *name, size_t name_len, const get_request *r, const char *error)
{
    char buf[8192 + 2 * PATH_MAX * 6];
    text t = {buf, 0, sizeof buf, 0};
    struct timespec now;
    int attempt;
    if (audit_path == NULL)
        return 0;
    clock_gettime(CLOCK_REALTIME, &now);
    put_str(&t, "{\"context\": ");
    put_json(&t, (const char *)r->context, r->context_len);
    put_str(&t, ", \"error\": ");
    put_json(&t, error, error ? strlen(error) : 0);
    put_str(&t, ", \"exe\": ");
    put_json(&t, c->exe, c->exe ? strlen(c->exe) : 0);
    put_str(&t, error ? ", \"ok\": false" : ", \"ok\": true");
    put_str(&t, ", \"op\": \"get\", \"parent_exe\": ");
    put_json(&t, c->parent_exe, c->parent_exe ? strlen(c->parent_exe) : 0);
    put_fmt(&t, ", \"pid\": %ld, \"time\": %.3f, \"uid\": %lu, \"vault\": ", c->pid,
            (double)now.tv_sec + (double)now.tv_nsec / 1e9, c->uid);
    put_json(&t, name, name_len);
    put_str(&t, "}\n");
    if (t.overflow)
        return -1;
    for (attempt = 1; attempt <= 2; attempt++) {
        if (audit_fd < 0)
            audit_fd = open(audit_path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (audit_fd >= 0 && write(audit_fd, buf, t.n) == (ssize_t)t.n)
            return 0;
        if (audit_fd >= 0)
            close(audit_fd);
        audit_fd = -1;
    }
    return -1;
}

static void answer_error(conn *c, const char *code, const char *message)
{
    size_t cl = strlen(code), ml = strlen(message), body = 2 + 1 + cl + ml;
    uint8_t *o = c->out + c->out_len;
    if (c->out_len + 4 + body > sizeof c->out)
        return;
    o[0] = (uint8_t)(body >> 24), o[1] = (uint8_t)(body >> 16), o[2] = (uint8_t)(body >> 8), o[3] = (uint8_t)body;
    o[4] = VERSION, o[5] = 1, o[6] = (uint8_t)cl;
    memcpy(o + 7, code, cl);
    memcpy(o + 7 + cl, message, ml);
    c->out_len += 4 + body;
}

static void answer_key(conn *c, const uint8_t *key, size_t n)
{
    size_t body = 2 + n;
    uint8_t *o = c->out + c->out_len;
    if (c->out_len + 4 + body > sizeof c->out)
        return;
    o[0] = (uint8_t)(body >> 24), o[1] = (uint8_t)(body >> 16), o[2] = (uint8_t)(body >> 8), o[3] = (uint8_t)body;
    o[4] = VERSION, o[5] = 0;
    memcpy(o + 6, key, n);
    c->out_len += 4 + body;
}

static int exe_allowed(const vault *v, const char *exe)
{
    Py_ssize_t i;
    if (v->n_exe < 0)
        return 1;
    if (exe == NULL)
        return 0;
    for (i = 0; i < v->n_exe; i++)
        if (strcmp(v->exe[i], exe) == 0)
            return 1;
    return 0;
}

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

/* Answer one complete request body (the twin of AgentState._get). */
static void serve_get(conn *c, const uint8_t *body, size_t n)
{
    get_request r;
    const char *message = NULL, *code;
    char text_buf[512], name[MAX_NAME + 1];
    uint8_t key[MAX_SECRET];
    size_t key_len = 0;
    vault *v;
    double now;

    code = parse_request(body, n, &r, &message);
    if (code != NULL) {
        answer_error(c, code, message);
        return;
    }
    memcpy(name, r.name, r.name_len);
    name[r.name_len] = 0;
    pthread_mutex_lock(&lock);
    now = monotonic();
    v = vault_find(name, r.name_len);
    if (v == NULL || (v->hard_deadline >= 0 && now >= v->hard_deadline) ||
        (v->idle_deadline >= 0 && now >= v->idle_deadline)) {
        code = "locked";
        snprintf(text_buf, sizeof text_buf, "vault '%s' is locked: plug in its token or run 'tokenagent unlock %s'",
                 name, name);
    } else if (!uid_allowed(v, c->uid)) {
        code = "access-denied";
        snprintf(text_buf, sizeof text_buf, "uid %lu may not get keys of vault '%s' (config allow_uids)", c->uid, name);
    } else if (!exe_allowed(v, c->exe)) {
        code = "access-denied";
        snprintf(text_buf, sizeof text_buf, "%.300s may not get keys of vault '%s' (config allow_exe)",
                 c->exe ? c->exe : "this program", name);
    } else if (r.context == NULL && !v->allow_raw) {
        code = "denied";
        snprintf(text_buf, sizeof text_buf, "vault '%s' releases only subkeys: ask with --context LABEL", name);
    }
    if (code != NULL) {
        pthread_mutex_unlock(&lock);
        if (audit(c, name, r.name_len, &r, code) != 0) {
            snprintf(text_buf, sizeof text_buf, "cannot write the audit log %.300s: %s", audit_path, strerror(errno));
            code = "agent";
        }
        answer_error(c, code, text_buf);
        return;
    }
    if (r.context != NULL) {
        derive_subkey(&v->key->prk, r.context, r.context_len, key);
        key_len = KEY_LEN;
    } else {
        key_len = v->key->secret_len;
        memcpy(key, v->key->secret, key_len);
    }
    if (audit(c, name, r.name_len, &r, NULL) != 0) {
        int err = errno;
        pthread_mutex_unlock(&lock);
        explicit_bzero(key, sizeof key);
        snprintf(text_buf, sizeof text_buf, "cannot write the audit log %.300s: %s", audit_path, strerror(err));
        answer_error(c, "agent", text_buf); /* fail closed: no key leaves without its audit line */
        return;
    }
    if (v->idle_ttl > 0)
        v->idle_deadline = now + v->idle_ttl;
    v->releases++;
    pthread_mutex_unlock(&lock);
    answer_key(c, key, key_len);
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
    close(c->fd);
    free(c->exe);
    free(c->parent_exe);
    explicit_bzero(c, sizeof *c);
    free(c);
    n_conns--;
}

/* Send what is queued; wipe it once sent. Returns 0, or -1 when the connection is gone. */
static int conn_flush(conn *c, int epfd)
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
            answer_error(c, "too-large", "get-socket request above 2048 bytes; the connection is closed");
            c->closing = 1;
            break;
        }
        if (c->in_len - pos < 4 + len)
            break;
        if (len == 0)
            answer_error(c, "protocol", "empty get-socket request");
        else
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
static void conn_readable(conn *c, int epfd)
{
    int drained = 0;
    for (;;) {
        size_t room;
        ssize_t k;
        conn_frames(c);
        if (c->out_len > 0) {
            if (conn_flush(c, epfd) < 0) {
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

static void accept_clients(int epfd)
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
        c->pid = cred.pid;
        c->uid = cred.uid;
        c->exe = read_exe(cred.pid);
        c->parent_exe = read_exe(parent_of(cred.pid));
        c->pending_since = -1;
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.ptr = c;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c->exe);
            free(c->parent_exe);
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
    int epfd = epoll_create1(EPOLL_CLOEXEC), i, n;
    (void)unused;
    if (epfd < 0)
        return NULL;
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
                accept_clients(epfd);
                continue;
            }
            conn *c = who;
            if (events[i].events & EPOLLOUT) {
                if (conn_flush(c, epfd) < 0) {
                    conn_close(c);
                    continue;
                }
                if (c->out_len == 0)
                    conn_readable(c, epfd);  /* requests that waited for the answers to go */
            } else {
                conn_readable(c, epfd);
            }
            /* a closed connection is freed: later events of this batch cannot name it, as each fd
             * appears once per epoll_wait */
        }
        close_stalled();
    }
out:
    while (conns != NULL)
        conn_close(conns);
    close(epfd);
    if (audit_fd >= 0)
        close(audit_fd);
    audit_fd = -1;
    return NULL;
}

/* ---------------------------------------------------------------- the Python interface */

static PyObject *py_start(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"listen_fd", "audit_path", "max_clients", "frame_timeout", NULL};
    int fd, clients = 512, created;
    double timeout = 10.0;
    PyObject *path = Py_None;
    sigset_t all, old;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|Oid", names, &fd, &path, &clients, &timeout))
        return NULL;
    if (running) {
        PyErr_SetString(PyExc_RuntimeError, "the get socket is already served");
        return NULL;
    }
    free(audit_path);
    audit_path = NULL;
    if (path != Py_None) {
        PyObject *encoded;
        if (!PyUnicode_FSConverter(path, &encoded))
            return NULL;
        audit_path = strdup(PyBytes_AS_STRING(encoded));
        Py_DECREF(encoded);
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)  /* accept until EAGAIN */
        return PyErr_SetFromErrno(PyExc_OSError);
    listen_fd = fd;
    max_clients = clients;
    frame_timeout = timeout;
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    sigfillset(&all);  /* the thread takes no signal: they stay with the agent's event loop */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    created = wake_fd >= 0 && pthread_create(&thread, NULL, serve, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!created) {
        if (wake_fd >= 0)
            close(wake_fd);
        if (spare_fd >= 0)
            close(spare_fd);
        wake_fd = spare_fd = -1;
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
        close(wake_fd);
        if (spare_fd >= 0)
            close(spare_fd);
        wake_fd = spare_fd = -1;
        running = 0;
    }
    pthread_mutex_lock(&lock);
    vault_clear();
    pthread_mutex_unlock(&lock);
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

static PyObject *py_put(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"name", "secret", "allow_raw", "idle_ttl", "idle_deadline", "hard_deadline",
                            "allow_uids", "allow_exe", NULL};
    const char *name;
    Py_ssize_t name_len, i;
    Py_buffer secret;
    int allow_raw;
    double idle_ttl;
    PyObject *idle_o, *hard_o, *uids_o, *exe_o;
    vault *v;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s#y*pdOOOO", names, &name, &name_len, &secret, &allow_raw,
                                     &idle_ttl, &idle_o, &hard_o, &uids_o, &exe_o))
        return NULL;
    if (!valid_name((const uint8_t *)name, (size_t)name_len) || secret.len < 1 || secret.len > MAX_SECRET) {
        PyBuffer_Release(&secret);
        PyErr_SetString(PyExc_ValueError, "bad vault name or secret size");
        return NULL;
    }
    v = calloc(1, sizeof *v);
    if (v == NULL)
        goto nomem;
    memcpy(v->name, name, (size_t)name_len);
    v->allow_raw = allow_raw;
    v->idle_ttl = idle_ttl;
    v->n_uids = v->n_exe = -1;
    if (!deadline_arg(idle_o, &v->idle_deadline) || !deadline_arg(hard_o, &v->hard_deadline))
        goto fail;
    if (uids_o != Py_None) {
        PyObject *seq = PySequence_Fast(uids_o, "allow_uids must be a sequence");
        if (seq == NULL)
            goto fail;
        v->n_uids = PySequence_Fast_GET_SIZE(seq);
        v->uids = calloc((size_t)v->n_uids + 1, sizeof *v->uids);
        for (i = 0; v->uids != NULL && i < v->n_uids; i++)
            v->uids[i] = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        Py_DECREF(seq);
        if (v->uids == NULL)
            goto nomem;
        if (PyErr_Occurred())
            goto fail;
    }
    if (exe_o != Py_None) {
        PyObject *seq = PySequence_Fast(exe_o, "allow_exe must be a sequence");
        if (seq == NULL)
            goto fail;
        v->n_exe = 0;
        v->exe = calloc((size_t)PySequence_Fast_GET_SIZE(seq) + 1, sizeof *v->exe);
        for (i = 0; v->exe != NULL && i < PySequence_Fast_GET_SIZE(seq); i++) {
            PyObject *encoded;
            if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &encoded))
                break;
            v->exe[i] = strdup(PyBytes_AS_STRING(encoded));
            Py_DECREF(encoded);
            if (v->exe[i] == NULL) {
                PyErr_NoMemory();
                break;
            }
            v->n_exe = i + 1;
        }
        Py_DECREF(seq);
        if (v->exe == NULL)
            goto nomem;
        if (PyErr_Occurred())
            goto fail;
    }
    v->key_size = (sizeof(vault_secret) + 4095) & ~(size_t)4095;
    v->key = mmap(NULL, v->key_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v->key == MAP_FAILED) {
        v->key = NULL;
        goto nomem;
    }
    madvise(v->key, v->key_size, MADV_DONTDUMP);
    mlock(v->key, v->key_size); /* best effort, as for the agent's own copy */
    v->key->secret_len = (size_t)secret.len;
    memcpy(v->key->secret, secret.buf, (size_t)secret.len);
    hkdf_prk(&v->key->prk, v->key->secret, v->key->secret_len);
    PyBuffer_Release(&secret);
    pthread_mutex_lock(&lock);
    vault_insert(v);
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
nomem:
    PyErr_NoMemory();
fail:
    PyBuffer_Release(&secret);
    if (v != NULL)
        vault_free(v);
    return NULL;
}

static PyObject *py_drop(PyObject *self, PyObject *args)
{
    const char *name;
    int found;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    pthread_mutex_lock(&lock);
    found = vault_unlink(name);
    pthread_mutex_unlock(&lock);
    return PyBool_FromLong(found);
}

static PyObject *py_usage(PyObject *self, PyObject *args)
{
    const char *name;
    vault *v;
    double idle;
    unsigned long long releases;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    pthread_mutex_lock(&lock);
    v = vault_find(name, strlen(name));
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
    double deadline;
    vault *v;
    (void)self;
    if (!PyArg_ParseTuple(args, "sd", &name, &deadline))
        return NULL;
    pthread_mutex_lock(&lock);
    v = vault_find(name, strlen(name));
    if (v != NULL && v->idle_deadline >= 0 && deadline > v->idle_deadline)
        v->idle_deadline = deadline;
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

/* Test hooks: the derivation and the parser as served, for comparison with the Python ones. */
static PyObject *py_derive(PyObject *self, PyObject *args)
{
    Py_buffer secret, context;
    hmac_key prk;
    uint8_t out[KEY_LEN];
    PyObject *result;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*", &secret, &context))
        return NULL;
    hkdf_prk(&prk, secret.buf, (size_t)secret.len);
    derive_subkey(&prk, context.buf, (size_t)context.len, out);
    PyBuffer_Release(&secret);
    PyBuffer_Release(&context);
    explicit_bzero(&prk, sizeof prk);
    result = PyBytes_FromStringAndSize((const char *)out, KEY_LEN);
    explicit_bzero(out, sizeof out);
    return result;
}

static PyObject *py_parse(PyObject *self, PyObject *args)
{
    Py_buffer body;
    get_request r;
    const char *message = NULL, *code;
    PyObject *result;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &body))
        return NULL;
    code = parse_request(body.buf, (size_t)body.len, &r, &message);
    if (code != NULL)
        result = Py_BuildValue("(ss)", code, message);
    else if (r.context == NULL)
        result = Py_BuildValue("(y#O)", r.name, (Py_ssize_t)r.name_len, Py_None);
    else
        result = Py_BuildValue("(y#y#)", r.name, (Py_ssize_t)r.name_len, r.context, (Py_ssize_t)r.context_len);
    PyBuffer_Release(&body);
    return result;
}

static PyObject *py_json_string(PyObject *self, PyObject *args)
{
    Py_buffer value;
    char buf[8 * 4096];
    text t = {buf, 0, sizeof buf, 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &value))
        return NULL;
    if (value.len > 4096) {
        PyBuffer_Release(&value);
        PyErr_SetString(PyExc_ValueError, "at most 4096 bytes");
        return NULL;
    }
    put_json(&t, value.buf, (size_t)value.len);
    PyBuffer_Release(&value);
    return PyUnicode_FromStringAndSize(buf, (Py_ssize_t)t.n);
}

static PyMethodDef methods[] = {
    {"start", (PyCFunction)(void (*)(void))py_start, METH_VARARGS | METH_KEYWORDS,
     "start(listen_fd, audit_path=None, max_clients=512, frame_timeout=10.0): serve the get socket in a thread"},
    {"stop", py_stop, METH_NOARGS, "stop(): end the thread, close its clients, wipe every vault"},
    {"put", (PyCFunction)(void (*)(void))py_put, METH_VARARGS | METH_KEYWORDS,
     "put(name, secret, allow_raw, idle_ttl, idle_deadline, hard_deadline, allow_uids, allow_exe)"},
    {"drop", py_drop, METH_VARARGS, "drop(name) -> bool: wipe and forget a vault"},
    {"extend", py_extend, METH_VARARGS, "extend(name, idle_deadline): a release on the agent socket pushed it"},
    {"usage", py_usage, METH_VARARGS, "usage(name) -> (idle_deadline or None, releases) or None"},
    {"derive", py_derive, METH_VARARGS, "derive(secret, context) -> the subkey the get socket releases"},
    {"parse", py_parse, METH_VARARGS, "parse(body) -> (name, context or None) or (error code, message)"},
    {"json_string", py_json_string, METH_VARARGS, "json_string(bytes) -> the audit log's JSON for it"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_getserver",
                                    "The agent's get socket, served by a native thread.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__getserver(void) { return PyModule_Create(&module); }
