"""The sans-IO protocol module: framing, parsing, the error rules of docs/spec/protocol.md."""

from __future__ import annotations

import json
import struct

import pytest

from tokenagent.protocol import (
    CLOSED,
    MAX_ANSWER,
    MAX_FRAME,
    NEED_DATA,
    Connection,
    Event,
    FrameError,
    Request,
    Response,
    encode,
)


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def test_request_round_trip_fed_one_byte_at_a_time() -> None:
    client, server = Connection("client"), Connection("server")
    data = client.send(Request("get", 7, {"vault": "v1", "context": "restic:/srv"}))
    for i, byte in enumerate(data):
        assert server.next_event() is NEED_DATA, i
        server.receive_data(bytes([byte]))
    assert server.next_event() == Request("get", 7, {"vault": "v1", "context": "restic:/srv"})
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    assert server.next_event() is CLOSED


def test_several_frames_in_one_read_and_responses_and_events() -> None:
    server, client = Connection("server"), Connection("client")
    client.receive_data(server.send(Response.success(1, vault="v1"))
                        + server.send(Response.failure(2, "locked", "vault 'v1' is locked"))
                        + server.send(Event("unlocked", {"vault": "v1"})))
    assert client.next_event() == Response(1, True, {"vault": "v1"})
    assert client.next_event() == Response(2, False, {}, "locked", "vault 'v1' is locked")
    assert client.next_event() == Event("unlocked", {"vault": "v1"})
    assert client.next_event() is NEED_DATA


@pytest.mark.parametrize(("body", "message"), [
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"{", "not UTF-8 JSON"),
    (b"[1,2]", "JSON object"),
    (b'{"op": 3}', "'op' string"),
    (b'{"op": ""}', "'op' string"),
    (b'{"op": "get", "id": -1}', "non-negative integer"),
    (b'{"op": "get", "id": true}', "non-negative integer"),
    (b'{"op": "get", "id": 1.5}', "non-negative integer"),
    (b'{"op": "get", "x": NaN}', "not UTF-8 JSON"),
    (b'{"op": "get", "x": Infinity}', "not UTF-8 JSON"),
    (b"[" * 50_000, "not UTF-8 JSON"),
    (b"", "not UTF-8 JSON"),
])
def test_bad_bodies_are_errors_that_keep_the_framing(body: bytes, message: str) -> None:
    server = Connection("server")
    server.receive_data(struct.pack(">I", len(body)) + body + frame({"op": "status", "id": 2}))
    with pytest.raises(FrameError, match=message) as info:
        server.next_event()
    assert not info.value.fatal and info.value.code == "protocol"
    assert server.next_event() == Request("status", 2, {})  # the next frame is still read


def test_oversized_length_is_fatal_and_reads_no_body() -> None:
    server = Connection("server")
    server.receive_data(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FrameError) as info:
        server.next_event()
    assert info.value.fatal and info.value.code == "too-large"
    server.receive_data(frame({"op": "status"}))
    assert server.next_event() is CLOSED  # nothing after a lost framing is trusted


def test_frame_errors_are_in_the_error_tree() -> None:
    from tokenagent.errors import FrameTooLarge, ProtocolError, TokenAgentError, error_for_code

    server = Connection("server")
    server.receive_data(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FrameTooLarge) as info:  # one of ours: the CLI reports it in one line, never a traceback
        server.next_event()
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, TokenAgentError)
    assert issubclass(FrameError, ProtocolError) and error_for_code("too-large") is FrameTooLarge
    assert error_for_code("protocol") is ProtocolError


def test_a_frame_of_exactly_max_frame_is_accepted() -> None:
    padding = "x" * (MAX_FRAME - len(json.dumps({"op": "status", "pad": ""}, separators=(",", ":"))))
    data = encode({"op": "status", "pad": padding})
    assert len(data) == 4 + MAX_FRAME
    server = Connection("server")
    server.receive_data(data)
    assert server.next_event() == Request("status", None, {"pad": padding})


def test_encode_refuses_to_build_an_oversized_frame() -> None:
    with pytest.raises(FrameError, match="limit"):
        encode({"pad": "x" * MAX_FRAME})


def test_answers_may_be_larger_than_requests() -> None:
    client, server = Connection("client"), Connection("server")
    big = Response.success(3, vaults=[{"vault": f"v{i}", "pad": "x" * 200} for i in range(2000)])
    data = server.send(big)
    assert MAX_FRAME < len(data) - 4 <= MAX_ANSWER
    client.receive_data(data)
    assert client.next_event() == big
    with pytest.raises(FrameError, match="limit"):  # but a client's request stays under MAX_FRAME
        client.send(Request("status", 1, {"pad": "x" * MAX_FRAME}))
    with pytest.raises(FrameError, match="limit"):
        server.send(Response.success(4, pad="x" * MAX_ANSWER))


def test_eof_in_the_middle_of_a_frame_is_closed() -> None:
    server = Connection("server")
    server.receive_data(frame({"op": "status"})[:-3])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    assert server.next_event() is CLOSED


def test_client_side_rejects_responses_without_ok() -> None:
    client = Connection("client")
    client.receive_data(frame({"id": 1}))
    with pytest.raises(FrameError, match="'ok'"):
        client.next_event()


def test_role_is_checked() -> None:
    with pytest.raises(ValueError):
        Connection("peer")
