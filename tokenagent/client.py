"""A small synchronous client of the agent (standard library only, so it starts fast).

    from tokenagent.client import AgentClient
    with AgentClient() as agent:
        key = agent.get("backup", context="restic:/srv/repo", wait=30)

Before sending anything the client checks the directories on the way and then the *connected*
socket's peer (``SO_PEERCRED``: the user or root; tokenagent._locations): a socket planted by
someone else, or swapped in after the check, gets no byte. Errors from the agent are raised as
the matching ``tokenagent.errors`` class; a connection lost or refused becomes an AgentError.

``get`` goes to the agent's get socket (``SOCKET.get``, docs/spec/protocol.md) when there is
one: one binary request, no ``hello``, answered by the agent's native thread with the key or
"ask the agent socket". Then, and without a get socket (an agent built without its C
extension, or ``get_socket = false``), ``get`` uses the agent socket, which gives the refusal
and its message, or waits.

It imports no ``socket`` module (the C ``_socket`` object does all it needs), no ``base64`` (its
``re``), no ``json`` (protocol.py's ``wirejson``) and, until something fails, no error tree: the
verbs that only talk to the agent (``_cli/agentverbs.py``) start on it in a few milliseconds.
"""

from __future__ import annotations

import _socket
import binascii
import os
import time

from . import _locations
from .protocol import (
    CLOSED,
    HEADER,
    MAX_FRAME,
    NEED_DATA,
    VERSION,
    Connection,
    Event,
    Request,
    Response,
    decode_get_answer,
    encode_get,
)

TYPE_CHECKING = False  # keep typing, pathlib and collections.abc out of "tokenagent get"
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterator
    from os import PathLike
    from types import TracebackType
    from typing import Any

    from .errors import TokenAgentError


class _ConnectionLost(Exception):
    """The connection ended (closed or reset) before the answer (a ProtocolError where it leaves the client)."""


def _errors() -> Any:
    """tokenagent.errors, imported when an error is raised or caught: an ``except _errors().X:`` clause
    is evaluated only when something was raised (the success path never imports the tree)."""
    from . import errors

    return errors


def _error(name: str, message: str) -> TokenAgentError:
    """The error tree's class ``name`` for ``message``."""
    cls: type[TokenAgentError] = getattr(_errors(), name)
    return cls(message)


def _agent_error(code: str, message: str) -> TokenAgentError:
    from .errors import error_for_code

    return error_for_code(code)(message)


class AgentClient:
    def __init__(self, path: PathLike[str] | str | None = None, timeout: float | None = 30.0) -> None:
        self.path = os.fspath(path) if path else _locations.agent_socket()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._conn = Connection("client")
        self._next_id = 0
        self.version: int | None = None
        self._get_sock: socket.socket | None = None
        self.on_event: Callable[[dict[str, Any]], None] | None = None  # events that come before an answer
        self._fresh = False  # the connection has not carried a request yet

    def __enter__(self) -> AgentClient:
        self.connect()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def connect(self, hello: bool = True) -> None:
        for attempt in range(50):
            try:
                sock = _locations.connect(self.path, self.timeout, lean=True)
                break
            except BlockingIOError:  # the agent's backlog is full for a moment: it is busy accepting
                if attempt == 49:
                    raise _error("AgentNotRunning", f"the agent on {self.path} accepts no connection; is it stuck?") from None
                time.sleep(0.02)
            except OSError as err:
                raise _error("AgentNotRunning", f"cannot connect to the agent on {self.path}: {err.strerror or err}") from None
        self._sock = sock
        self._conn = Connection("client")
        self._fresh = True
        if hello:
            self.version = self.request("hello", versions=[VERSION])["version"]

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(_socket.SHUT_RDWR)  # wakes an events() reader blocked in another thread
            except OSError:
                pass
            sock.close()
        if self._get_sock is not None:
            self._get_sock.close()
            self._get_sock = None

    def _read_message(self) -> Response | Event:
        while True:
            message = self._conn.next_event()
            if message is NEED_DATA:
                sock = self._sock
                if sock is None:
                    raise _ConnectionLost("the connection to the agent is closed")
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    raise _error("AgentNotRunning", "the agent did not answer in time") from None
                except OSError:
                    data = b""  # reset: as closed
                self._conn.receive_data(data)
                continue
            if message is CLOSED:
                raise _ConnectionLost("the agent closed the connection")
            if isinstance(message, Response | Event):
                return message

    def request(self, op: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send one request, return the response's data; raise the agent's error as ours.

        A kept connection the agent closed while it was idle (docs/agent.md: idle connections are
        closed) is made again once; the agent closes only connections with no request in flight,
        so nothing was done twice.
        """
        for attempt in (1, 2):
            kept = self._sock is not None and not self._fresh
            if self._sock is None:
                self.connect(hello=op != "hello")
            assert self._sock is not None
            self._fresh = False
            self._next_id += 1
            try:
                message = self._exchange(self._sock, Request(op, self._next_id, args), timeout)
                break
            except (OSError, _ConnectionLost) as err:
                self._drop()
                if not kept or attempt == 2:
                    raise _error("AgentError", f"the agent closed the connection ({_why(err)}); see its log"
                                 " (journalctl --user -u tokenagent) and try again") from None
        if not message.ok:
            raise _agent_error(message.error or "error", message.message or message.error or "error")
        return message.data

    def _exchange(self, sock: socket.socket, request: Request, timeout: float | None) -> Response:
        sock.settimeout(timeout if timeout is not None else self.timeout)
        sock.sendall(self._conn.send(request))
        while True:
            message = self._read_message()
            if isinstance(message, Response):
                return message
            if self.on_event is not None:  # e.g. "waiting" before the answer of a get with wait
                self.on_event({"event": message.name, **message.data})

    # --- conveniences ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.request("status")

    def get(self, vault: str, context: str | None = None, wait: float | None = None) -> bytearray:
        if context is not None and not context:  # "" is no label: never read as "the key itself"
            raise _error("UsageError", "a context label must not be empty (leave --context out for the key itself, where allowed)")
        key = self._get_fast(vault, context, wait)
        if key is not None:
            return key
        args: dict[str, Any] = {"vault": vault}
        if context:
            args["context"] = context
        timeout = None
        if wait:
            args["wait"] = wait
            timeout = wait + (self.timeout or 30.0)
        data = self.request("get", timeout=timeout, **args)
        return bytearray(binascii.a2b_base64(data["key"]))

    def _get_fast(self, vault: str, context: str | None, wait: float | None) -> bytearray | None:
        """The key from the get socket; None when the agent socket must answer instead."""
        request = encode_get(vault, context)
        if request is None:
            return None
        for attempt in (1, 2):  # a kept connection may have been closed by an agent restart
            sock = self._get_sock or self._connect_get()
            if sock is None:
                return None
            try:
                sock.sendall(request)
                body = _read_frame(sock)
            except TimeoutError:
                self.close()
                raise _error("AgentNotRunning", "the agent did not answer in time") from None
            except OSError:
                body = None
            if body is not None:
                break
            self._get_sock = None
            sock.close()
            if attempt == 2:
                return None
        assert body is not None
        key, code, message = decode_get_answer(body)
        for i in range(len(body)):
            body[i] = 0
        if key is not None:
            return key
        if not code or (code == "locked" and wait):
            return None  # the agent socket answers: the refusal and its message, or it waits for the unlock
        raise _agent_error(code, message)

    def _connect_get(self) -> socket.socket | None:
        path = _locations.get_socket(self.path)
        try:
            sock = _locations.connect(path, self.timeout, lean=True)
        except (OSError, _errors().AgentNotRunning):  # UnsafePath goes up
            return None  # no get socket (this agent serves get on its own socket), stale, or busy
        self._get_sock = sock
        return sock

    def unlock(self, vault: str, key: bytes | bytearray, slot: str = "?", **ttl: float) -> dict[str, Any]:
        return self.request("unlock", vault=vault, key=binascii.b2a_base64(bytes(key), newline=False).decode(), slot=slot,
                            **ttl)

    def lock(self, vault: str) -> dict[str, Any]:
        return self.request("lock", vault=vault)

    def lock_all(self) -> dict[str, Any]:
        return self.request("lock-all")

    def events(self) -> Iterator[dict[str, Any]]:
        """Stream the agent's events (blocks; ``close()``, from another thread too, ends it)."""
        self.request("events")
        assert self._sock is not None
        self._sock.settimeout(None)
        while True:
            try:
                message = self._read_message()
            except (OSError, _ConnectionLost, _errors().ProtocolError) as err:
                if self._sock is None:
                    return  # closed by close(): the stream ends
                if isinstance(err, _ConnectionLost):
                    raise _error("ProtocolError", str(err)) from None
                raise
            if isinstance(message, Event):
                yield {"event": message.name, **message.data}


def _why(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    return str(err)


def _read_frame(sock: socket.socket) -> bytearray | None:
    """One length-prefixed frame into a bytearray (wipeable); None if the connection ended."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise _error("ProtocolError", "the agent's get socket sent an oversized answer")
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf
