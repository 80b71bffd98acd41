"""The agent's wire protocol, sans-IO (docs/spec/protocol.md is the authority).

Theory of operation. A stream of frames, each a 4-byte big-endian length followed by that
many bytes of UTF-8 JSON holding one object. Clients send requests
``{"op": NAME, "id": N, ...arguments}``; the agent answers each with a response
``{"id": N, "ok": true, ...}`` or ``{"id": N, "ok": false, "error": CODE, "message": TEXT}``
(CODE from tokenagent.errors), and, to a client that asked for ``events``, sends event frames
``{"event": NAME, ...}``. The first request of a connection should be ``hello``, which
negotiates the version; an unknown op gets the error ``unsupported`` and the connection
stays usable, as it does after a frame whose body is not a JSON object (answered with the
error ``protocol``). A request length over ``MAX_FRAME`` loses the framing: it is answered with
``too-large`` and closes that connection only. Answers and events may be up to ``MAX_ANSWER``.

``Connection`` holds no socket: feed it bytes with ``receive_data``, take parsed messages
from ``next_event`` (``NEED_DATA`` when a frame is incomplete), turn messages into bytes with
``send``. It imports ``struct`` and ``wirejson`` (json's C half, without ``re``) and, only when a
frame is refused, the error tree: the verbs that only talk to the agent start fast on it.
"""

from __future__ import annotations

import struct

from . import wirejson

TYPE_CHECKING = False  # typing and dataclasses stay unimported: they cost "tokenagent get" ~20 ms
if TYPE_CHECKING:
    from typing import Any, Final

    from .errors import FrameError as FrameError  # re-exported (below, imported when first asked for)
    from .errors import FrameTooLarge as FrameTooLarge
    from .errors import TokenAgentError

VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
MAX_FRAME: Final = 64 * 1024  # a request (what the agent reads)
MAX_ANSWER: Final = 16 * 1024 * 1024  # a response or event (status of many unlocked vaults is large)
HEADER = struct.Struct(">I")

OPS: Final = ("hello", "status", "list", "unlock", "get", "lock", "lock-all", "events", "age-unwrap")


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CLOSED: Final = _Sentinel("CLOSED")


class _Frozen:
    """Immutable value objects with equality and repr (what frozen dataclasses would give)."""

    __slots__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self._fields())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"


class Request(_Frozen):
    __slots__ = ("op", "id", "args")
    op: str
    id: int | None
    args: dict[str, Any]

    def __init__(self, op: str, id: int | None = None, args: dict[str, Any] | None = None) -> None:
        self._set(op=op, id=id, args=dict(args or {}))

    def to_json(self) -> dict[str, Any]:
        out = {**self.args, "op": self.op}
        if self.id is not None:
            out["id"] = self.id
        return out


class Response(_Frozen):
    __slots__ = ("id", "ok", "data", "error", "message")
    id: int | None
    ok: bool
    data: dict[str, Any]
    error: str | None
    message: str | None

    def __init__(self, id: int | None, ok: bool, data: dict[str, Any] | None = None,
                 error: str | None = None, message: str | None = None) -> None:
        self._set(id=id, ok=ok, data=dict(data or {}), error=error, message=message)

    @classmethod
    def success(cls, request_id: int | None, **data: Any) -> Response:
        return cls(request_id, True, data)

    @classmethod
    def failure(cls, request_id: int | None, code: str, message: str) -> Response:
        return cls(request_id, False, {}, code, message)

    @classmethod
    def refusal(cls, request_id: int | None, err: TokenAgentError) -> Response:
        """The answer for one of our errors: its code (the error tree holds every wire code) and message."""
        return cls(request_id, False, {}, err.code, err.message)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "ok": self.ok}
        if self.ok:
            out.update(self.data)
        else:
            out.update(error=self.error, message=self.message)
        return out


class Event(_Frozen):
    __slots__ = ("name", "data")
    name: str
    data: dict[str, Any]

    def __init__(self, name: str, data: dict[str, Any] | None = None) -> None:
        self._set(name=name, data=dict(data or {}))

    def to_json(self) -> dict[str, Any]:
        return {**self.data, "event": self.name}


if TYPE_CHECKING:
    Message = Request | Response | Event


def __getattr__(name: str) -> object:
    """``FrameError`` and ``FrameTooLarge`` (the error tree's) for importers of this module; the tree
    (enum, collections.abc) is imported when one is first asked for or raised, not with this module."""
    if name in ("FrameError", "FrameTooLarge"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _frame_error(message: str) -> Exception:
    from .errors import FrameError

    return FrameError(message)


def _too_large(message: str, fatal: bool = False) -> Exception:
    from .errors import FrameTooLarge

    return FrameTooLarge(message, fatal=fatal)


def encode(obj: dict[str, Any], limit: int = MAX_FRAME) -> bytes:
    body = wirejson.dumps(obj, compact=True, allow_nan=False).encode()
    if len(body) > limit:
        raise _too_large(f"frame of {len(body)} bytes is over the {limit}-byte limit")
    return HEADER.pack(len(body)) + body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_body(body: bytes, role: str) -> Message:
    """Parse one frame body; ``role`` is "server" (expects requests) or "client"."""
    try:
        obj = wirejson.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _frame_error("frame is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise _frame_error("frame must hold a JSON object")
    if role == "server":
        op = obj.pop("op", None)
        request_id = obj.pop("id", None)
        if not isinstance(op, str) or not op or len(op) > 64:
            raise _frame_error("request needs an 'op' string")
        if request_id is not None and (type(request_id) is not int or not 0 <= request_id < 2**53):
            raise _frame_error("request 'id' must be a non-negative integer")
        return Request(op, request_id, obj)
    if "event" in obj:
        name = obj.pop("event")
        if not isinstance(name, str):
            raise _frame_error("event name must be a string")
        return Event(name, obj)
    ok = obj.pop("ok", None)
    request_id = obj.pop("id", None)
    if not isinstance(ok, bool):
        raise _frame_error("response needs 'ok'")
    if ok:
        return Response(request_id, True, obj)
    return Response(request_id, False, {}, str(obj.get("error", "error")), str(obj.get("message", "")))


class FrameReader:
    """Frames out of a byte stream: a 4-byte big-endian length, then that many bytes (from
    ``min_frame`` to ``max_frame``). The agent protocol and ssh-agent's (tokenagent/sshagent.py)
    frame alike; each reads its bodies from here. A length out of range loses the framing: it
    raises a fatal ``FrameTooLarge`` and the stream reads as closed from then on."""

    what = "frame"
    min_frame = 0

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._eof = False
        self.broken = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_frame(self) -> bytes | _Sentinel:
        """The next whole body, ``NEED_DATA``, or ``CLOSED``."""
        if self.broken:
            return CLOSED
        if len(self._buffer) < HEADER.size:
            return CLOSED if self._eof else NEED_DATA
        (length,) = HEADER.unpack_from(self._buffer)
        if not self.min_frame <= length <= self.max_frame:
            self.broken = True
            limit = (f"over the {self.max_frame}-byte limit" if length > self.max_frame
                     else f"under the {self.min_frame}-byte minimum")
            raise _too_large(f"{self.what} of {length} bytes is {limit}", fatal=True)
        if len(self._buffer) < HEADER.size + length:
            return CLOSED if self._eof else NEED_DATA
        body = bytes(self._buffer[HEADER.size : HEADER.size + length])
        del self._buffer[: HEADER.size + length]
        return body

    @property
    def pending(self) -> int:
        return len(self._buffer)


class Connection(FrameReader):
    """One end of a connection: bytes in, messages out; messages in, bytes out."""

    def __init__(self, role: str, max_frame: int | None = None) -> None:
        if role not in ("server", "client"):
            raise ValueError("role is 'server' or 'client'")
        self.role = role
        # what this end reads: requests (server) or answers and events (client); and sends
        super().__init__(max_frame or (MAX_FRAME if role == "server" else MAX_ANSWER))
        self.send_limit = MAX_ANSWER if role == "server" else MAX_FRAME

    def next_event(self) -> Message | _Sentinel:
        body = self.next_frame()
        if isinstance(body, _Sentinel):
            return body
        return decode_body(body, self.role)  # a bad body is answered; the framing is intact

    def send(self, message: Message) -> bytes:
        return encode(message.to_json(), self.send_limit)


# --- the get socket (docs/spec/protocol.md, "The get socket"): its binary form is in getwire.py,
# which the fast client imports without this module's JSON.
from .getwire import GET_ASK, GET_MAX_BODY, GET_OP, GET_VERSION, decode_get_answer, encode_get  # noqa: E402,F401
