"""The get socket's binary request and answer (docs/spec/protocol.md, "The get socket").

Its own module, importing nothing, because ``tokenagent get`` speaks it on every backup run and
must not pay for the JSON protocol's imports (``tokenagent.protocol`` re-exports it). No
``struct`` (``int.to_bytes`` does) and no ``from __future__ import annotations`` (it imports the
``__future__`` module: a fraction of a millisecond of every get; the annotations here are valid
at run time).
"""

HEADER_SIZE = 4  # the 4-byte big-endian length every frame starts with, as on the agent socket

# A binary form of one request, served next to the agent socket by a native thread:
# request body  = 0x01 (version), 0x01 (get), u8 name length, name, u16 context length, context
# answer body   = 0x01, 0x00, key            (success)
#               = 0x01, 0x02                 (ask the agent socket: it answers, refuses or waits)
#               = 0x01, 0x01, u8 code length, code, message (UTF-8)   (a refusal, from older agents)
GET_VERSION = 1
GET_OP = 1
GET_MAX_BODY = 2048
GET_ASK = 2


def encode_get(vault: str, context: str | None) -> bytes | None:
    """The framed get-socket request, or None if these arguments need the agent socket (a name or
    context the binary form cannot carry: the JSON path then gives the proper error)."""
    try:
        name = vault.encode("ascii")
        label = context.encode("utf-8") if context else b""
    except UnicodeError:
        return None
    body_len = 5 + len(name) + len(label)
    if not 0 < len(name) < 256 or body_len > GET_MAX_BODY:
        return None
    return b"".join((body_len.to_bytes(HEADER_SIZE, "big"), bytes((GET_VERSION, GET_OP, len(name))), name,
                     len(label).to_bytes(2, "big"), label))


def decode_get_answer(body: bytearray) -> tuple[bytearray | None, str, str]:
    """(key, "", "") for a success (the key copied out of ``body``), (None, "", "") for "ask the agent
    socket", (None, code, message) for a refusal (older agents)."""
    if len(body) < 2 or body[0] != GET_VERSION or body[1] not in (0, 1, GET_ASK):
        return None, "protocol", "the agent's get socket sent a malformed answer"
    if body[1] == 0:
        return body[2:], "", ""
    if body[1] == GET_ASK:
        return None, "", ""
    if len(body) < 3 or len(body) < 3 + body[2]:
        return None, "protocol", "the agent's get socket sent a malformed answer"
    end = 3 + body[2]
    return None, body[3:end].decode("ascii", "replace"), body[end:].decode("utf-8", "replace")
