"""Driven by test_get_socket_asan.py in a child process whose ``_getserver`` is built with
AddressSanitizer and UndefinedBehaviorSanitizer: every native entry point with hostile input.

Prints one summary line; any memory error or undefined behaviour aborts the process.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

from getsocket_mutations import mutate  # the driver runs from this directory

from tokenagent.daemon import _getserver as native
from tokenagent.protocol import encode_get

EXPECTED_MODULE_DIR = sys.argv[1]


def read_answers(s: socket.socket, n: int) -> list[bytes]:
    out, data = [], b""
    while len(out) < n:
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                return out
            data += chunk
        length = struct.unpack(">I", data[:4])[0]
        out.append(data[4:4 + length])
        data = data[4 + length:]
    return out


def main() -> None:
    assert os.path.dirname(native.__file__) == EXPECTED_MODULE_DIR, native.__file__
    rng = random.Random(20261123)
    seeds = [encode_get("v1", None), encode_get("v1", "restic:/srv/repo"), encode_get("a" * 64, "c" * 256)]
    for _ in range(100_000):
        body = mutate(rng, rng.choice(seeds)[4:])  # type: ignore[index]
        native.parse(body)
        if rng.random() < 0.05:
            native.release_line(body, rng.choice([None, "/usr/bin/x", "/p/" + "y" * 4000]), "/usr/bin/restic",
                                rng.randint(-1, 2**31), rng.randint(0, 2**32 - 1), rng.random() * 2e9)
    for _ in range(2_000):
        native.derive(rng.randbytes(rng.randint(1, 4096)), rng.randbytes(rng.randint(1, 256)))

    work = Path(tempfile.mkdtemp(prefix="ta-asan-"))
    path = work / "get.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    native.start(listener.fileno(), str(work / "audit.log"), 64, 1.0, 200_000)
    big = bytes(range(256)) * 16  # a 4 KiB raw secret: the longest answer
    native.put("v1", rng.randbytes(32), False, 0.0, None, None, [os.getuid() + 1])
    native.put("v2", big, True, 5.0, time.monotonic() + 100, time.monotonic() + 100, [os.getuid()])
    native.put("v3", b"k" * 32, True, 0.0, time.monotonic() - 1, None, None)  # already expired
    frames = [encode_get(v, c) for v in ("v1", "v2", "v3", "nosuch") for c in (None, "ctx", "c" * 256, "é")]
    requests = 0
    for round_ in range(300):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(path))
            stream = b""
            count = rng.randint(1, 60)
            for _ in range(count):
                frame = rng.choice(frames)
                assert frame is not None
                if rng.random() < 0.5:
                    body = mutate(rng, frame[4:])
                    frame = struct.pack(">I", len(body)) + body
                stream += frame
            pos = 0
            while pos < len(stream):  # random chunking
                step = rng.randint(1, 200)
                s.sendall(stream[pos:pos + step])
                pos += step
            answers = read_answers(s, count)
            assert len(answers) == count, (len(answers), count)
            requests += count
            if round_ % 10 == 0:  # too large: "ask the agent socket", then closed
                s.sendall(struct.pack(">I", rng.choice([2049, 2**31, 2**32 - 1])) + b"x" * 10)
                assert read_answers(s, 2) == [b"\x01\x02"]
        if round_ % 50 == 0:  # the Python side changing the table under the thread
            native.drop("v1")
            native.put("v1", rng.randbytes(32), False, 0.0, None, None, None)
            native.extend("v2", time.monotonic() + 100)
            assert native.usage("v2") is not None
            assert native.audit_write(b'{"from": "the agent socket"}\n') in (0, 1)  # 1: at the cap
    log = work / "audit.log"  # at its cap by now: releases are asked of the agent socket, which rotates
    assert 190_000 < log.stat().st_size <= 200_000, log.stat().st_size
    os.rename(log, work / "audit.log.1")
    native.audit_reopen()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # the longest answer, whole
        s.connect(str(path))
        s.sendall(encode_get("v2", None))  # type: ignore[arg-type]
        assert read_answers(s, 1) == [b"\x01\x00" + big]
    assert len(log.read_bytes().splitlines()) == 1  # its line, in the new file
    half_open = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # left half-sent: closed by the timer
    half_open.connect(str(path))
    half_open.sendall(b"\x00\x00\x00\x09\x01")
    time.sleep(1.5)
    assert half_open.recv(10) == b""
    half_open.close()
    native.stop()
    listener.close()
    print(f"asan driver: 100,000 parses, 5,000 audit lines, 2,000 derivations, {requests:,} requests on 300"
          " connections (a capped audit log), no error")


if __name__ == "__main__":
    main()
