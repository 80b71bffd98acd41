"""The agent's asyncio server: accepts clients, checks them, feeds the sans-IO protocol.

Theory of operation. One task per connection: read bytes, feed ``protocol.Connection``,
dispatch each request to ``AgentState`` (which never blocks), write the answer. Two requests
wait: ``get`` with ``wait`` seconds on a locked vault (it waits for the "unlocked" event of
that vault, then answers), and ``events`` (the connection becomes a stream of event frames).
Peers that are not our uid (or root) are closed before a single byte is read. A connection
whose frame stalls half-sent for ``FRAME_TIMEOUT`` seconds is closed, and at most
``MAX_CLIENTS`` connections are served at once, so slow or many clients cannot starve the rest.
A timer locks vaults at their deadlines. Work that touches tokens runs in threads
(``asyncio.to_thread``) so a touch wait never blocks other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import AgentError
from ..protocol import CLOSED, NEED_DATA, Connection, Event, FrameError, Request, Response
from ..vault import VaultStore
from .config import AgentConfig, load_config
from .hardening import harden_process
from .sockets import bind_socket, inherited_socket, peer_allowed, peer_of
from .state import AgentState, Peer

log = logging.getLogger("tokenagent.agent")
FRAME_TIMEOUT = 10.0
MAX_CLIENTS = 512
MAX_WAIT = 300.0
READ_SIZE = 65536


class AgentServer:
    def __init__(self, state: AgentState, sock: socket.socket, path: Path | None) -> None:
        self.state = state
        self.sock = sock
        self.path = path
        self.clients = 0
        self._server: asyncio.AbstractServer | None = None
        self._stopping = asyncio.Event()
        self._unlocked: dict[str, asyncio.Event] = {}
        state.listeners.append(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.name == "unlocked":
            waiter = self._unlocked.pop(str(event.data.get("vault")), None)
            if waiter is not None:
                waiter.set()

    async def serve(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, sock=self.sock, limit=READ_SIZE)
        timer = asyncio.create_task(self._expiry_timer())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stopping.set)
        _sd_notify("READY=1")
        log.info("agent ready on %s", self.path or "an inherited socket")
        try:
            await self._stopping.wait()
        finally:
            timer.cancel()
            self.state.lock_all("agent-exit")
            self.state.close_audit()
            self._server.close()
            if self.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            log.info("agent stopped; all vaults locked")

    def stop(self) -> None:
        self._stopping.set()

    async def _expiry_timer(self) -> None:
        while True:
            self.state.expire()
            deadline = self.state.next_deadline()
            delay = 0.5 if deadline is None else min(0.5, max(0.01, deadline - self.state.clock()))
            await asyncio.sleep(delay)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            peer = peer_of(sock)
        except OSError:
            writer.close()
            return
        if not peer_allowed(peer) or self.clients >= MAX_CLIENTS:
            writer.close()  # not a byte read from a stranger
            return
        self.clients += 1
        try:
            await self._serve_client(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        conn = Connection("server")
        while True:
            try:
                message = conn.next_event()
            except FrameError as err:
                writer.write(conn.send(Response.failure(None, err.code, str(err))))
                await writer.drain()
                if err.fatal:
                    return
                continue
            if message is CLOSED:
                return
            if message is NEED_DATA:
                timeout = FRAME_TIMEOUT if conn.pending else None
                try:
                    data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
                except TimeoutError:
                    return  # a frame stalled half-way
                conn.receive_data(data)
                continue
            if not isinstance(message, Request):
                continue
            if message.op == "events":
                writer.write(conn.send(self.state.dispatch(message, peer)))
                await writer.drain()
                await self._stream_events(reader, writer, conn)
                return
            response = await self._answer(message, peer)
            writer.write(conn.send(response))
            await writer.drain()

    async def _answer(self, request: Request, peer: Peer) -> Response:
        response = self.state.dispatch(request, peer)
        wait = request.args.get("wait")
        if (request.op == "get" and not response.ok and response.error == "locked"
                and isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0):
            vault = str(request.args.get("vault"))
            waiter = self._unlocked.setdefault(vault, asyncio.Event())
            self.state.emit("waiting", vault=vault, pid=peer.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), min(float(wait), MAX_WAIT))
            response = self.state.dispatch(request, peer)
        return response

    async def _stream_events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             conn: Connection) -> None:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)

        def listener(event: Event) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

        self.state.listeners.append(listener)
        closed = asyncio.create_task(reader.read(1))  # any byte or EOF from the client ends the stream
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    return
                writer.write(conn.send(getter.result()))
                await writer.drain()
        finally:
            self.state.listeners.remove(listener)
            closed.cancel()


def _sd_notify(message: str) -> None:
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.send(message.encode())


def run_agent(config: AgentConfig | None = None, socket_file: Path | None = None, **extra: Any) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="tokenagent-agent: %(message)s")
    hardened = harden_process()
    config = config or load_config()
    sock = inherited_socket()
    path = None
    if sock is None:
        sock, path = bind_socket(socket_file)
    data = paths.ensure_private_dir(paths.data_dir())
    state = AgentState(VaultStore(), config, audit_path=data / "audit.log" if config.audit else None)
    server = AgentServer(state, sock, path)
    log.info("memory protection: %s", ", ".join(k for k, v in hardened.items() if v) or "none available")
    try:
        asyncio.run(server.serve())
    except AgentError:
        raise
    return 0
