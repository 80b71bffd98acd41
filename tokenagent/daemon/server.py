"""The agent's asyncio server: accepts clients, checks them, feeds the sans-IO protocol.

Theory of operation. One protocol object per connection (``_ClientProtocol``): bytes from the
event loop feed ``protocol.Connection``, each complete request is dispatched to ``AgentState``
(which never blocks) and answered at once, without a task or a coroutine switch. Two requests
wait: ``get`` with ``wait`` seconds on a locked vault (it waits for the "unlocked" event of
that vault, then answers), and ``events`` (the connection becomes a stream of event frames).
Peers that are not our uid (or root) are closed before a single byte is read. A connection
whose frame stalls half-sent for ``FRAME_TIMEOUT`` seconds is closed, and so is one that sits
idle (no request in flight, not waiting, not streaming) for ``client_idle_timeout`` seconds.
At most ``MAX_CLIENTS`` connections are served at once; when a new one comes at that number,
the connection idle the longest makes room for it (the reserve: ``lock --all`` and ``status``
always get in), and only when none is idle is the newcomer told ``busy``. Waits and event
streams, which are never idle, are bounded apart (``MAX_WAITS``, ``MAX_STREAMS``), so slow or
many clients cannot starve the rest.
A timer locks vaults at their deadlines. ``get`` is also served on the get socket by a native
thread (daemon/getsocket.py); the agent mirrors every unlock and lock into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import AgentBusy, AgentError, TokenAgentError, VaultLocked
from ..protocol import CLOSED, NEED_DATA, Connection, Event, FrameError, Request, Response
from ..vault import wipe
from . import plug
from .audit import check_path as audit_path_problem
from .config import AgentConfig, load_config, unknown_vault_sections
from .getsocket import GetSocket
from .hardening import harden_process
from .notify import Notifier
from .pinentry import Pinentry
from .plug import PlugPins
from .resources import AgentStore, client_budget, split_budget
from .sockets import (
    FRAME_TIMEOUT,
    Acceptor,
    StallingFramesClose,
    bind_socket,
    inherited_socket,
)
from .sshsocket import MAX_CLIENTS as MAX_SSH_CLIENTS
from .sshsocket import SshSocket
from .state import AgentState, Peer
from .watch import HidWatcher, KeyDiskWatcher, PcscWatcher, key_disks

log = logging.getLogger(__name__)
MAX_CLIENTS = 512
MAX_WAITS = 128  # get --wait requests waiting at once (each holds a connection)
MAX_STREAMS = 64  # events streams at once
MAX_WAIT = 300.0


class AgentServer:
    def __init__(self, state: AgentState, sock: socket.socket, path: Path | None,
                 get_socket: GetSocket | None = None, ssh_socket: SshSocket | None = None) -> None:
        self.state = state
        self.ssh_socket = ssh_socket  # the ssh-agent face (daemon/sshsocket.py)
        if ssh_socket is not None:
            ssh_socket.service.touch_notice = self.touch_notice
        self.sock = sock
        self.path = path
        self.get_socket = get_socket
        self.clients = 0
        self.max_clients = MAX_CLIENTS  # lowered at start under a low descriptor limit (daemon/resources.py)
        self.acceptor: Acceptor | None = None
        self.idle: dict[_ClientProtocol, None] = {}  # counted connections with nothing in flight, oldest first
        self.waits = 0
        self.streams = 0
        self._stopping = asyncio.Event()
        self._deadlines_moved = asyncio.Event()  # a vault unlocked: the expiry timer looks again
        self._unlocked: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}  # vault -> waits on its _unlocked event (the entry goes with the last)
        self.watchers: list[PcscWatcher | HidWatcher | KeyDiskWatcher] = []
        self._plugging: set[str] = set()
        self.notifier = Notifier(state.config.notify)
        self._touch_notices: dict[str, int] = {}  # vault -> the "touch your key" notification shown
        self._wanted_notices: dict[str, int | None] = {}  # vault -> "PROGRAM wants vault VAULT" shown
        state.listeners.append(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.name == "unlocked":
            self._deadlines_moved.set()
            waiter = self._unlocked.pop(str(event.data.get("vault")), None)
            if waiter is not None:
                waiter.set()
        if self.notifier.enabled:
            self._notify(event)

    def _notify(self, event: Event) -> None:
        """Desktop notifications for a person at the machine (tokenagent.daemon.notify)."""
        vault = str(event.data.get("vault", ""))
        if event.name == "waiting" and self.state.has_token_slot(vault):
            program = str(event.data.get("program") or "A program")
            asyncio.ensure_future(self._show_wanted(vault, program))
        elif event.name in ("unlocked", "locked"):
            self._close_touch(vault)
            if event.name == "locked" and event.data.get("reason") == "token-removed":
                asyncio.ensure_future(asyncio.to_thread(
                    self.notifier.show, f"Vault '{vault}' locked", "Its token was removed."))

    async def _show_touch(self, vault: str, message: str) -> None:
        shown = await asyncio.to_thread(self.notifier.show, "Touch your security key",
                                        f"{message}, to unlock vault '{vault}'.", True)
        if shown is None:
            return
        self._close_touch(vault)
        self._touch_notices[vault] = shown
        if vault in self.state.sessions:  # unlocked while the notification was on its way
            self._close_touch(vault)

    async def _show_wanted(self, vault: str, program: str) -> None:
        if vault in self._wanted_notices:
            return  # one notice per vault, however many clients wait
        self._wanted_notices[vault] = None
        shown = await asyncio.to_thread(self.notifier.show, f"{program} wants vault '{vault}'",
                                        "Plug in or touch your key.", True)
        if vault in self._wanted_notices and vault not in self.state.sessions:
            self._wanted_notices[vault] = shown
        else:
            asyncio.ensure_future(asyncio.to_thread(self.notifier.close, shown))

    def _close_touch(self, vault: str) -> None:
        wanted = self._wanted_notices.pop(vault, None)
        if wanted is not None:
            asyncio.ensure_future(asyncio.to_thread(self.notifier.close, wanted))
        shown = self._touch_notices.pop(vault, None)
        if shown is not None:
            asyncio.ensure_future(asyncio.to_thread(self.notifier.close, shown))

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        # Everything that needs a descriptor of its own comes first; clients are accepted last, so a
        # flood of them (the descriptor table full) cannot fail the start-up half-way.
        timer = asyncio.create_task(self._expiry_timer())
        if self.state.config.watch_tokens:
            self.watchers = [PcscWatcher(loop, self._token_changed), HidWatcher(loop, self._token_changed),
                             KeyDiskWatcher(loop, self._token_changed, lambda: key_disks(self.state.store))]
            for watcher in self.watchers:
                watcher.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        wanted = {"agent": MAX_CLIENTS + 1}  # + 1: a newcomer at the cap is let in to make room or hear "busy"
        if self.get_socket is not None:
            wanted["get"] = MAX_CLIENTS
        if self.ssh_socket is not None:
            wanted["ssh"] = MAX_SSH_CLIENTS
        caps = split_budget(client_budget(sum(wanted.values())), wanted)  # the rest is the reserve
        if self.get_socket is not None:
            self.get_socket.start(self.state.audit_path if self.state.config.audit else None, caps["get"],
                                  FRAME_TIMEOUT, self.state.config.audit_max_size)
            self.state.mirror = self.get_socket
        if self.ssh_socket is not None:
            await self.ssh_socket.start(caps["ssh"])
        self._warn_config()
        self.max_clients = max(1, caps["agent"] - 1)
        self.acceptor = Acceptor(self.sock, self._protocol, caps["agent"])
        self.acceptor.start()
        _sd_notify("READY=1")
        log.info("agent ready on %s", self.path or "an inherited socket")
        try:
            await self._stopping.wait()
        finally:
            timer.cancel()
            for watcher in self.watchers:
                watcher.stop()
            self.state.lock_all("agent-exit")
            if self.ssh_socket is not None:
                self.ssh_socket.stop()
            if self.get_socket is not None:
                self.state.mirror = None
                self.get_socket.stop()
            self.state.close_audit()
            self.acceptor.close()
            if self.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            log.info("agent stopped; all vaults locked")

    def stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        """SIGHUP: read config.toml again. A file that does not load leaves the running one in place."""
        try:
            config = load_config()
        except TokenAgentError as err:
            log.warning("configuration not reloaded (the previous one stays): %s", err.message)
            return
        self.state.reload(config)
        self._deadlines_moved.set()  # TTLs may have changed
        self.notifier = Notifier(config.notify)
        log.info("configuration reloaded (watch_tokens, get_socket, audit and the sockets take a restart)")
        self._warn_config()

    def _warn_config(self) -> None:
        try:
            vaults = self.state.store.list()
        except (OSError, TokenAgentError):
            return
        for line in unknown_vault_sections(self.state.config, vaults):
            log.warning("config: %s", line)

    async def _expiry_timer(self) -> None:
        """Lock vaults at their deadlines, waking only then (or when a vault is unlocked): an idle agent
        with nothing unlocked does not wake at all. A deadline the get socket moved on (its releases
        keep a vault alive) is seen when the old one comes, and slept to again."""
        while True:
            self._deadlines_moved.clear()
            self.state.expire()
            deadline = self.state.next_deadline()
            timeout = None if deadline is None else max(0.01, deadline - self.state.clock())
            try:
                await asyncio.wait_for(self._deadlines_moved.wait(), timeout)
            except TimeoutError:
                pass

    # --- tokens coming and going ----------------------------------------------------------
    def _token_changed(self, change: str, reader: str) -> None:
        loop = asyncio.get_running_loop()
        if change == "added":
            # The plug-in unlock's first step (the worker thread started on the token) runs before the
            # "token-added" event is sent, not after it; the event still goes out before any of its own.
            asyncio.ensure_future(self._unlock_on_plug(reader))
            loop.call_soon(lambda: self.state.emit("token-added", reader=reader))
            return
        self.state.emit("token-removed", reader=reader)
        if self.state.config.lock_on_remove:
            loop.call_later(self.state.config.removal_grace, self._removed, reader)

    def _present(self, token: str) -> bool:
        return any(token in watcher.present for watcher in self.watchers)

    def _removed(self, reader: str) -> None:
        if self._present(reader):
            return  # back within the grace period
        for name, session in list(self.state.sessions.items()):
            if session.token == reader:
                self.state.lock(name, "token-removed")

    async def _unlock_on_plug(self, reader: str) -> None:
        if reader in self._plugging:
            return
        self._plugging.add(reader)
        pins = PlugPins()  # one PIN dialog per card for this plug event, wiped when it is over
        try:
            await plug.unlock_on_plug(self.state.store.list(), lambda vault: self._open_on_plug(vault, reader, pins),
                                      lambda: not self.watchers or self._present(reader))
        finally:
            pins.wipe()
            self._plugging.discard(reader)

    async def _open_on_plug(self, vault: str, reader: str, pins: PlugPins | None = None) -> plug.PlugResult | None:
        """Open ``vault`` with the token in ``reader``; None when it needs nothing (unlocked, not configured)."""
        config = self.state.config
        if vault in self.state.sessions or not config.policy(vault).unlock_on_plug:
            return None
        pinentry = Pinentry(config.pinentry, config.pinentry_tty) if config.pinentry else None
        loop = asyncio.get_running_loop()
        opened = await asyncio.to_thread(plug.open_with_token, self.state.store, vault, reader,
                                         plug.in_loop(loop, self.state.emit), config.touch_timeout, pinentry, pins,
                                         plug.in_loop(loop, self.touch_notice))
        if not isinstance(opened, plug.Opened) or (self.watchers and not self._present(reader)):
            self._close_touch(vault)  # no touch came, or the token left
            if isinstance(opened, plug.Opened):
                wipe(opened.key)
                return plug.NOT_OPENED
            return opened
        try:
            self.state.add_session(vault, opened.key, opened.slot, f"token in {reader}", token=reader,
                                   verified=opened.vault)
        except Exception:
            wipe(opened.key)
            raise
        log.info("vault %s unlocked by the token in %s (slot %s)", vault, reader, opened.slot)
        return opened

    def touch_notice(self, vault: str, message: str) -> None:
        """A token waits for a touch to unlock ``vault``: the desktop notice (closed when it is unlocked)."""
        if self.notifier.enabled:
            asyncio.ensure_future(self._show_touch(vault, message))

    def _protocol(self) -> _ClientProtocol:
        return _ClientProtocol(self)

    async def wait_unlocked(self, request: Request, peer: Peer, wait: float) -> Response:
        """Answer a ``get`` with ``wait`` on a locked vault once it is unlocked or the time is up."""
        vault = str(request.args.get("vault"))
        waiter = self._unlocked.setdefault(vault, asyncio.Event())
        self._waiting[vault] = self._waiting.get(vault, 0) + 1
        try:
            self.state.emit("waiting", vault=vault, pid=peer.pid, program=program_name(peer))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), min(wait, MAX_WAIT))
        finally:
            left = self._waiting.pop(vault) - 1
            if left:
                self._waiting[vault] = left
            elif self._unlocked.get(vault) is waiter:
                del self._unlocked[vault]  # nobody waits for it any more: nothing stays behind per name
        if vault not in self.state.sessions and self._wanted_notices.get(vault) is not None:
            await asyncio.to_thread(self.notifier.close, self._wanted_notices.pop(vault))  # nobody came: it goes
        return self.state.dispatch(request, peer)

    def wait_done(self, task: asyncio.Task[None]) -> None:
        self.waits -= 1

    def make_room(self) -> bool:
        """Close the connection idle the longest to let a new one in; False if none is idle."""
        victim = next(iter(self.idle), None)
        if victim is None:
            return False
        victim.evict()
        return True


def program_name(peer: Peer) -> str:
    """The program a person would say is asking: the client's executable, or for a client run in
    a Python interpreter (``tokenagent get`` as restic's password command) the program that ran it."""
    exe = os.path.basename(peer.exe or "")
    if exe.startswith("python") and peer.parent_exe:
        exe = os.path.basename(peer.parent_exe)
    return exe or f"process {peer.pid}"


def _wait_seconds(request: Request, response: Response) -> float | None:
    wait = request.args.get("wait")
    if (request.op in ("get", "age-unwrap") and not response.ok and response.error == VaultLocked.code
            and isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0):
        return float(wait)
    return None


class _ClientProtocol(StallingFramesClose):
    """One client connection, driven by the event loop's callbacks (no task per request).

    Requests are answered in order, synchronously, as their frames complete. A ``get`` that
    waits for an unlock runs as a task; frames that arrive meanwhile wait their turn. After
    ``events`` the connection only carries events, and anything the client sends ends it. A
    client that does not read its answers is paused (flow control), and one that leaves a
    frame half-sent for ``FRAME_TIMEOUT`` seconds is closed.
    """

    def __init__(self, server: AgentServer) -> None:
        self.server = server
        self.conn = Connection("server")
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.waiting: asyncio.Task[None] | None = None
        self.stall: asyncio.TimerHandle | None = None
        self.streaming = False
        self.counted = False
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = self._admit(transport)
        if peer is None:
            return
        if self.server.clients >= self.server.max_clients and not self.server.make_room():
            self._refuse_busy(f"the agent is serving {self.server.max_clients} connections that are all busy;"
                              " try again")
            return
        self.peer = peer
        self.server.clients += 1
        self.counted = True
        self._set_idle(True)

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.transport is None or self.transport.is_closing():
            return
        self._set_idle(False)
        if self.streaming:
            self.transport.close()  # any byte from an events client ends its stream
            return
        self.conn.receive_data(data)
        self._serve()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._serve()
        return self.waiting is not None  # keep the write side open for a pending answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        if self.server.acceptor is not None:
            self.server.acceptor.release()
        if self.streaming:
            self.streaming = False
            self.server.streams -= 1
        if self.waiting is not None:
            self.waiting.cancel()
        if self.stall is not None:
            self.stall.cancel()
        if self.streaming:
            with contextlib.suppress(ValueError):
                self.server.state.listeners.remove(self._on_event)

    def pause_writing(self) -> None:
        if self.transport is not None:
            if self.streaming:
                self.transport.close()  # an events client that does not read loses its stream
            else:
                self.transport.pause_reading()  # no new requests until the answers are read

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- requests --------------------------------------------------------------------------
    def _send(self, message: Response | Event) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        try:
            data = self.conn.send(message)
        except FrameError as err:  # an answer beyond MAX_ANSWER: say so instead of dropping the client
            if not isinstance(message, Response):
                return
            data = self.conn.send(Response.refusal(message.id, type(err)(f"the answer is too large: {err}")))
        self.transport.write(data)

    def _serve(self) -> None:
        transport, peer = self.transport, self.peer
        assert transport is not None and peer is not None
        while self.waiting is None and not transport.is_closing():
            try:
                message = self.conn.next_event()
            except FrameError as err:
                self._send(Response.refusal(None, err))
                if err.fatal:
                    transport.close()
                    return
                continue
            if message is NEED_DATA:
                self._arm_stall_timer()
                self._set_idle(not self.conn.pending)
                return
            if message is CLOSED:
                transport.close()
                return
            if not isinstance(message, Request):
                continue
            response = self.server.state.dispatch(message, peer)
            if message.op == "events" and response.ok:
                if self.server.streams >= MAX_STREAMS:
                    self._send(Response.refusal(message.id, AgentBusy(f"the agent already streams events to"
                                                                      f" {MAX_STREAMS} clients; close one and try again")))
                    continue
                self._send(response)
                self.streaming = True
                self.server.streams += 1
                self.server.state.listeners.append(self._on_event)
                return
            wait = _wait_seconds(message, response)
            if wait is not None:
                if self.server.waits >= MAX_WAITS:
                    self._send(Response.refusal(message.id, AgentBusy(f"{MAX_WAITS} requests already wait for"
                                                                      " an unlock; unlock the vault, or try again later")))
                    continue
                self.server.waits += 1  # given back when the task ends, even cancelled before it started
                if message.args.get("progress") is True:  # asked for: what it waits for, said at once
                    self._send(Event("waiting", {"vault": message.args.get("vault"), "seconds": min(wait, MAX_WAIT),
                                                 "message": response.message}))
                failure = Response.refusal(message.id, TokenAgentError("internal error in the agent while waiting"
                                                                       " for an unlock"))
                self._answer_later(self.server.wait_unlocked(message, peer, wait), self._send, failure,
                                   "a wait for an unlock").add_done_callback(self.server.wait_done)
                return
            self._send(response)

    def _on_event(self, event: Event) -> None:
        self._send(event)

    # --- the reserve and idle connections ----------------------------------------------------
    def _set_idle(self, idle: bool) -> None:
        """Track whether this connection has nothing in flight (may be closed to make room, or when idle long)."""
        idle = idle and self.counted and self.waiting is None and not self.streaming
        self.server.idle.pop(self, None)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if idle:
            self.server.idle[self] = None  # newest last
            timeout = self.server.state.config.client_idle_timeout
            if timeout > 0:
                self.idle_timer = asyncio.get_running_loop().call_later(timeout, self.evict)

    def _uncount(self) -> None:
        self._set_idle(False)
        if self.counted:
            self.server.clients -= 1
            self.counted = False

    def evict(self) -> None:
        """Close an idle connection (no request in flight: the client reconnects when it needs to)."""
        self._uncount()
        if self.transport is not None:
            self.transport.close()

    def _refuse_busy(self, message: str) -> None:
        """Tell the newcomer why, then close: a peer of ours gets a reason, not a reset."""
        assert self.transport is not None
        self.transport.write(self.conn.send(Response.refusal(None, AgentBusy(message))))
        self.transport.close()


def _sd_notify(message: str) -> None:
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.send(message.encode())


def _configure_logging(json_lines: bool) -> None:
    """The agent's log on stderr: "tokenagent-agent: MESSAGE" lines, or JSON objects (time, level,
    logger, message) for log collectors (``tokenagent agent --json``)."""
    if not json_lines:
        logging.basicConfig(level=logging.INFO, format="tokenagent-agent: %(message)s")
        return

    class JsonLines(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                               "message": record.getMessage()})

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def run_agent(config: AgentConfig | None = None, socket_file: Path | None = None, json_logs: bool = False,
              **extra: Any) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT; return the exit status."""
    _configure_logging(json_logs)
    hardened = harden_process()
    config = config or load_config()
    sock = inherited_socket()
    path = None
    if sock is None:
        sock, path = bind_socket(socket_file)
    name = str(path) if path is not None else sock.getsockname()  # ours is bound by a /proc/self/fd name
    get_socket = GetSocket.bind(Path(name)) if config.get_socket and isinstance(name, str) and name else None
    # Factor types, drivers and cryptography are loaded at the first vault read (AgentStore), with
    # descriptors kept in reserve for it (daemon/resources.py), not here: an idle agent stays small.
    data = paths.ensure_private_dir(paths.data_dir())
    state = AgentState(AgentStore(), config, audit_path=data / "audit.log" if config.audit else None)
    if state.audit_path is not None and (problem := audit_path_problem(state.audit_path)):
        log.warning("%s", problem)  # the agent runs on: status and lock work, gets are refused with this reason
    ssh_socket = SshSocket.bind(Path(name), state) if config.ssh_socket and isinstance(name, str) and name else None
    server = AgentServer(state, sock, path, get_socket, ssh_socket)
    log.info("memory protection: %s", ", ".join(k for k, v in hardened.items() if v) or "none available")
    try:
        asyncio.run(server.serve())
    except AgentError:
        raise
    return 0
