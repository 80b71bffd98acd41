"""The agent's state and its request dispatcher, without sockets (so it can be fuzzed directly).

Theory of operation. Each unlocked vault is a ``Session``: the secret in a bytearray, the
slot that opened it, and two deadlines on the monotonic clock: ``idle`` (pushed back by
every key release) and ``hard`` (fixed at unlock). ``expire()`` locks what is past either
deadline; the server calls it on a timer and ``dispatch`` calls it before serving (``get``
checks only its own vault), so an expired key is never released even between timer ticks.
Locking wipes the secret. With a get socket (``mirror``), its releases are read back first.

``dispatch(request, peer)`` answers every request synchronously and never raises: bad
arguments, unknown ops and our errors become error responses with the codes of
tokenagent.errors. Waiting (``get`` with ``wait``) and the event stream are the server's job.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import __version__
from ..errors import (
    AccessDenied,
    AgentError,
    PolicyError,
    TokenAgentError,
    UnsafePath,
    Unsupported,
    UsageError,
    VaultLocked,
    VaultNotFound,
    vault_not_found,
)
from ..protocol import OPS, SUPPORTED_VERSIONS, VERSION, Event, Request, Response
from ..vault import Vault, VaultStore, check_name, derive_subkey, verify, wipe
from ..vault.operations import is_token_slot
from . import peers
from .audit import AuditLog, audit_line, write_refusal
from .config import AgentConfig, VaultPolicy, check_seconds
from .hardening import lock_in_memory, unlock_memory

MAX_CONTEXT = 256
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    exe: str | None = None
    parent_exe: str | None = None  # the program that ran the client (restic for "tokenagent get")
    start: int | None = None  # the process's start time (daemon/peers.py): with pid, one process
    program: str | None = None  # what allow_exe matches: exe, or parent_exe for "tokenagent get"
    program_pid: int | None = None


@dataclass
class Session:
    vault: str
    secret: bytearray
    allow_raw: bool
    fingerprint: str
    slot: str
    source: str  # "client" or a token description
    unlocked_at: float
    idle_deadline: float | None
    hard_deadline: float | None
    idle_ttl: float = 0.0  # each key release pushes idle_deadline this far (0: no idle lock)
    token: str | None = None  # the reader whose key's removal locks this vault (None: not tied)
    releases: int = 0
    mirror_releases: int = 0  # those served by the get socket (daemon/getsocket.py)
    mlocked: bool = False  # the secret's pages are locked in memory (never swapped)
    imported: bool = False  # an imported secret: clients print it as it came (docs/spec/vault.md)

    def wipe(self) -> None:
        wipe(self.secret)
        if self.mlocked:
            unlock_memory(self.secret)
            self.mlocked = False


class KeyMirror(Protocol):
    """Where unlocked vaults are mirrored for another server of ``get`` (daemon/getsocket.py)."""

    def put(self, session: Session, policy: VaultPolicy) -> None: ...
    def drop(self, vault: str) -> None: ...
    def extend(self, vault: str, idle_deadline: float) -> None: ...
    def usage(self, vault: str) -> tuple[float | None, int] | None: ...
    def audit_write(self, line: bytes) -> int: ...  # the audit log's writer there (daemon/audit.py)
    def audit_reopen(self) -> None: ...


@dataclass
class AgentState:
    store: VaultStore
    config: AgentConfig = field(default_factory=AgentConfig)
    clock: Callable[[], float] = time.monotonic
    audit_path: os.PathLike[str] | str | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    mirror: KeyMirror | None = None  # the get socket's copy of the sessions (must use time.monotonic)
    _audit_log: AuditLog | None = field(default=None, repr=False)
    _policies: dict[str, VaultPolicy] = field(default_factory=dict, repr=False)  # cleared by reload()
    # The highest seq seen per vault file, and what looked wrong with it: a file that goes backwards
    # (an older copy put back: a rollback) or was read from its backup is logged and shown in status.
    seen_seq: dict[str, int] = field(default_factory=dict)
    file_warnings: dict[str, str] = field(default_factory=dict)

    # --- events -----------------------------------------------------------------------------
    def emit(self, name: str, **data: Any) -> None:
        event = Event(name, data)
        for listener in list(self.listeners):
            listener(event)

    # --- lifetimes --------------------------------------------------------------------------
    def add_session(self, vault: str, secret: bytearray, slot: str, source: str, token: str | None = None,
                    idle_ttl: float | None = None, max_ttl: float | None = None,
                    verified: Vault | None = None) -> Session:
        """Keep ``secret`` (taken over, wiped on lock) after checking it against the vault file.
        ``verified``: the file as the agent's own unlock just read and MAC-checked it with ``secret``
        (plug-in unlock), so it is not read and checked a second time."""
        if verified is not None and verified.name == vault:
            loaded = verified
        else:
            loaded = self.store.load(vault)
            verify(loaded, secret)
        self.note_file(loaded)
        policy = self._policy(vault)
        idle = policy.idle_ttl if idle_ttl is None else idle_ttl
        hard = policy.max_ttl if max_ttl is None else max_ttl
        now = self.clock()
        self.lock(vault, "replaced", quiet=True)
        session = Session(vault, secret, loaded.allow_raw, loaded.fingerprint, slot, source, now,
                          now + idle if idle > 0 else None, now + hard if hard > 0 else None, idle, token,
                          imported=loaded.imported)
        session.mlocked = lock_in_memory(secret)
        self.sessions[vault] = session
        if self.mirror is not None:
            try:
                self.mirror.put(session, self._policy(vault))
            except BaseException:
                self.lock(vault, "replaced", quiet=True)
                raise
        self.emit("unlocked", vault=vault, slot=slot, source=source)
        return session

    def note_file(self, loaded: Vault) -> None:
        """Remember ``loaded.seq``; warn (log, event, status) when the file went backwards or is the backup."""
        name, seen = loaded.name, self.seen_seq.get(loaded.name)
        warning = None
        if loaded.from_backup:
            warning = (f"the main file is damaged ({loaded.damage}); the backup copy (seq {loaded.seq}) is in use:"
                       f" run 'tokenagent repair {name}'")
        elif seen is not None and loaded.seq < seen:
            warning = (f"the vault file went backwards: seq {loaded.seq}, this agent saw seq {seen} before"
                       " (an older copy was put back: check who changed it)")
        self.seen_seq[name] = max(loaded.seq, seen or 0)
        if warning is None:
            self.file_warnings.pop(name, None)
            return
        self.file_warnings[name] = warning
        log.warning("vault %s: %s", name, warning)
        self.emit("vault-warning", vault=name, warning=warning, seq=loaded.seq, seen=seen)

    def lock(self, vault: str, reason: str, quiet: bool = False) -> bool:
        session = self.sessions.pop(vault, None)
        if session is None:
            return False
        if self.mirror is not None:
            self.mirror.drop(vault)
        session.wipe()
        if not quiet:
            self.emit("locked", vault=vault, reason=reason)
        return True

    def lock_all(self, reason: str) -> list[str]:
        names = sorted(self.sessions)
        for name in names:
            self.lock(name, reason)
        return names

    def reload(self, config: AgentConfig) -> None:
        """Take a new configuration (SIGHUP): client rules, unlock-on-plug and the lifetimes of
        later unlocks follow it at once; vaults unlocked now keep their deadlines."""
        self.config = config
        self._policies.clear()
        if self.mirror is None:
            return
        for session in list(self.sessions.values()):  # the get socket applies the new client rules too
            self.sync_mirror(session)
            session.releases += session.mirror_releases
            session.mirror_releases = 0
            self.mirror.drop(session.vault)
            try:
                self.mirror.put(session, self._policy(session.vault))
            except BaseException:
                self.lock(session.vault, "replaced", quiet=True)
                raise

    def sync_mirror(self, session: Session) -> None:
        """Take in what the get socket did: its releases and the idle deadlines they pushed."""
        usage = self.mirror.usage(session.vault) if self.mirror is not None else None
        if usage is not None:
            idle, session.mirror_releases = usage
            if idle is not None and session.idle_deadline is not None and idle > session.idle_deadline:
                session.idle_deadline = idle

    def expire(self) -> None:
        now = self.clock()
        for s in list(self.sessions.values()):
            self._expire_session(s, now)

    def _expire_session(self, s: Session, now: float) -> bool:
        """Lock ``s`` if it is past a deadline; True if it did."""
        self.sync_mirror(s)
        if s.hard_deadline is not None and now >= s.hard_deadline:
            return self.lock(s.vault, "max-ttl")
        if s.idle_deadline is not None and now >= s.idle_deadline:
            return self.lock(s.vault, "idle-ttl")
        return False

    def next_deadline(self) -> float | None:
        times = [t for s in self.sessions.values() for t in (s.idle_deadline, s.hard_deadline) if t is not None]
        return min(times) if times else None

    # --- dispatch ---------------------------------------------------------------------------
    def dispatch(self, request: Request, peer: Peer) -> Response:
        handler = _HANDLERS.get(request.op)
        if handler is None:
            return Response.refusal(request.id, Unsupported(f"unknown op {request.op[:64]!r}"))
        try:
            if request.op != "get":  # get looks at its own vault's deadlines (a thousand vaults cost it nothing)
                self.expire()
            return Response.success(request.id, **handler(self, request.args, peer))
        except TokenAgentError as err:
            return Response.refusal(request.id, err)
        except (TypeError, ValueError, KeyError) as err:
            return Response.refusal(request.id, UsageError(f"bad arguments for {request.op}: {type(err).__name__}"))
        except Exception as err:  # noqa: BLE001 - a bug: answer, keep serving, log where (not the message)
            log.error("internal error in %s: %s\n%s", request.op, type(err).__name__,
                      "".join(traceback.format_tb(err.__traceback__)))
            return Response.refusal(request.id, TokenAgentError(f"internal error in the agent ({type(err).__name__})"))

    def _hello(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        offered = args.get("versions", [VERSION])
        if not isinstance(offered, list):
            raise UsageError("versions must be a list of integers")
        common = [v for v in SUPPORTED_VERSIONS if v in offered]
        if not common:
            raise UsageError(f"no common protocol version (agent speaks {list(SUPPORTED_VERSIONS)})")
        return {"version": max(common), "agent": f"tokenagent {__version__}", "ops": list(OPS)}

    def _status(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        now = self.clock()
        vaults = []
        for name in _vault_names(self):
            s = self.sessions.get(name)
            entry: dict[str, Any] = {"vault": name, "unlocked": s is not None}
            if name in self.file_warnings:
                entry["warning"] = self.file_warnings[name]
            if s is not None:
                entry.update(slot=s.slot, source=s.source, fingerprint=s.fingerprint, mlocked=s.mlocked,
                             unlocked_for=round(now - s.unlocked_at, 3), releases=s.releases + s.mirror_releases,
                             idle_left=_left(s.idle_deadline, now), max_left=_left(s.hard_deadline, now))
            vaults.append(entry)
        return {"vaults": vaults, "pid": os.getpid(), "agent": f"tokenagent {__version__}",
                "uptime": round(now - self.started, 3), "get_socket": self.mirror is not None}

    def _list(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"vaults": [{"vault": n, "unlocked": n in self.sessions} for n in _vault_names(self)]}

    def _unlock(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        vault = _vault_arg(args)
        key = args.get("key")
        if not isinstance(key, str):
            raise UsageError("unlock needs the opened key ('tokenagent unlock VAULT' opens it for you)")
        ttl, max_ttl = (None if args.get(k) is None else check_seconds(args[k], k) for k in ("idle_ttl", "max_ttl"))
        secret = b64decode_wipeable(key)
        try:
            session = self.add_session(vault, secret, str(args.get("slot", "?")), "client", None, ttl, max_ttl)
        except BaseException:
            wipe(secret)
            raise
        return {"vault": vault, "fingerprint": session.fingerprint}

    def _get(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        vault = _vault_arg(args)
        context = args.get("context")
        if context is not None and (not isinstance(context, str) or not 0 < len(context) <= MAX_CONTEXT):
            raise UsageError(f"context must be a string of 1 to {MAX_CONTEXT} characters")
        if args.get("wait") is not None:
            check_seconds(args["wait"], "wait")  # the server waits (at most MAX_WAIT)
        try:
            session = self.sessions.get(vault)
            if session is not None and self._expire_session(session, self.clock()):
                session = None
            if session is None:
                raise self._why_not_unlocked(vault)
            self._check_peer(vault, peer)
            if context is None and not session.allow_raw:
                raise PolicyError(f"vault {vault!r} releases only subkeys: ask with --context LABEL")
            key = derive_subkey(session.secret, context) if context else bytearray(session.secret)
        except TokenAgentError as err:
            self._audit(vault, context, peer, err.code)
            raise
        try:
            if session.idle_ttl > 0:
                session.idle_deadline = self.clock() + session.idle_ttl
                if self.mirror is not None:
                    self.mirror.extend(vault, session.idle_deadline)
            session.releases += 1
            self._audit(vault, context, peer, None)
            answer: dict[str, Any] = {"vault": vault, "key": base64.b64encode(key).decode(),
                                      "fingerprint": session.fingerprint}
            if context is None and session.imported:
                answer["imported"] = True  # the client prints it as it came (tokenagent get)
            return answer
        finally:
            wipe(key)

    def _lock(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        vault = _vault_arg(args)
        was = self.lock(vault, "request")
        if not was and vault not in _vault_names(self):
            raise vault_not_found(vault, _vault_names(self))
        return {"vault": vault, "was_unlocked": was}

    def _why_not_unlocked(self, vault: str) -> TokenAgentError:
        """The error for a get of a vault that is not unlocked: not found (with the names close to
        it), or locked, with "plug in its token" only when one of its slots is a token."""
        try:
            loaded = self.store.load(vault)
        except VaultNotFound:
            return vault_not_found(vault, _vault_names(self))
        except (OSError, TokenAgentError):
            loaded = None  # damaged or unreadable: still locked, the unlock says what is wrong
        if loaded is not None and any(is_token_slot(s) for s in loaded.slots):
            return VaultLocked(f"vault {vault!r} is locked: plug in its token or run 'tokenagent unlock {vault}'")
        return VaultLocked(f"vault {vault!r} is locked: run 'tokenagent unlock {vault}'")

    def has_token_slot(self, vault: str) -> bool:
        """Does one of ``vault``'s slots open with a token (so plugging one in may unlock it)?"""
        try:
            return any(is_token_slot(s) for s in self.store.load(vault).slots)
        except (OSError, TokenAgentError):
            return False

    def _lock_all(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"locked": self.lock_all("request")}

    def _events(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"streaming": True}  # the server attaches the stream after this answer

    def _policy(self, vault: str) -> VaultPolicy:
        policy = self._policies.get(vault)
        if policy is None:
            policy = self._policies[vault] = self.config.policy(vault)
        return policy

    def _check_peer(self, vault: str, peer: Peer) -> None:
        policy = self._policy(vault)
        if policy.allow_uids is not None and peer.uid not in policy.allow_uids:
            raise AccessDenied(f"uid {peer.uid} may not get keys of vault {vault!r} (config allow_uids)")
        if policy.allow_exe is not None:
            self._check_program(vault, peer, policy)

    def _check_program(self, vault: str, peer: Peer, policy: VaultPolicy) -> None:
        """allow_exe and refuse_preload, read again now from /proc (daemon/peers.py): the program must be
        allowed, the same process as at connect, and (where asked) free of preloaded code."""
        assert policy.allow_exe is not None
        if peer.start is None:  # not read from /proc (a peer made in process): its exe is all there is
            if peer.exe not in policy.allow_exe:
                raise AccessDenied(f"{peer.exe or 'this program'} may not get keys of vault {vault!r}"
                                   " (config allow_exe)")
            return
        program = peer.program
        if program not in policy.allow_exe:
            raise AccessDenied(f"{program or 'this program'} may not get keys of vault {vault!r} (config allow_exe)")
        now = peers.identify(peer.pid)
        if (now.start, now.program, now.program_pid) != (peer.start, program, peer.program_pid):
            raise AccessDenied(f"the program that connected for vault {vault!r} is no longer {program}"
                               " (it exec'd another or exited); refused (config allow_exe)")
        if policy.refuse_preload:
            for pid in dict.fromkeys((peer.program_pid, peer.pid)):
                why = peers.preload(pid, unreadable_ok=pid == peer.pid != peer.program_pid) if pid else None
                if why:
                    raise AccessDenied(f"{program} may not get keys of vault {vault!r}: {why}"
                                       " (config refuse_preload)")

    def _audit(self, vault: str, context: str | None, peer: Peer, error: str | None) -> None:
        self.write_audit(audit_line(vault, context, peer.pid, peer.uid, peer.exe, peer.parent_exe, error, time.time()))

    def write_audit(self, line: bytes) -> None:
        """One line in the audit log, whole, or AgentError: no key (and no signature) leaves without
        it. Every writer of the agent's log goes through here (daemon/audit.py: one writer, rotation)."""
        if not self.config.audit or self.audit_path is None:
            return
        if self._audit_log is None:
            self._audit_log = AuditLog(self.audit_path, self.config.audit_max_size, self.config.audit_keep,
                                       self.mirror)
        try:
            self._audit_log.write(line)
        except (OSError, UnsafePath) as err:
            raise AgentError(write_refusal(self.audit_path, err)) from None

    def close_audit(self) -> None:
        if self._audit_log is not None:
            self._audit_log.close()
            self._audit_log = None


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def b64decode_wipeable(text: str) -> bytearray:
    """Standard base64 (padded) straight into a bytearray: no immutable copy of the secret is made."""
    if len(text) % 4 or len(text) > 8192:
        raise UsageError("the key must be padded base64 of at most 6144 bytes")
    out = bytearray()
    body = text.rstrip("=")
    if len(text) - len(body) > 2:
        raise UsageError("the key is not valid base64")
    acc = bits = 0
    for char in body:
        value = _B64.get(char)
        if value is None:
            wipe(out)
            raise UsageError("the key is not valid base64")
        acc = (acc << 6 | value) & 0xFFFFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    acc = 0
    return out


def _left(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else round(max(0.0, deadline - now), 3)


def _vault_arg(args: dict[str, Any]) -> str:
    vault = args.get("vault")
    if not isinstance(vault, str):
        raise UsageError("a 'vault' name is needed")
    return check_name(vault)


def _vault_names(state: AgentState) -> list[str]:
    try:
        names = set(state.store.list())
    except (OSError, TokenAgentError):
        names = set()
    return sorted(names | set(state.sessions))


_HANDLERS: dict[str, Callable[[AgentState, dict[str, Any], Peer], dict[str, Any]]] = {
    "hello": AgentState._hello,
    "status": AgentState._status,
    "list": AgentState._list,
    "unlock": AgentState._unlock,
    "get": AgentState._get,
    "lock": AgentState._lock,
    "lock-all": AgentState._lock_all,
    "events": AgentState._events,
}

from .ageunwrap import age_unwrap  # noqa: E402  (the age face's op; it imports this module's helpers lazily)

_HANDLERS["age-unwrap"] = age_unwrap
