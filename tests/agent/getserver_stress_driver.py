"""Driven by test_get_socket_asan.py: get-socket clients that reconnect while vaults lock and
unlock and the process forks, against the native server built with the sanitizers.

    getserver_stress_driver.py MODULE_DIR ROUNDS

Each round mirrors a few vaults in (``put``, as an unlock does), forks (a child that holds
every descriptor for a moment, every fourth round; a real ``fork`` + ``exec`` of a helper program,
as ctypes' find_library did on each lock and unlock, in the others), and drops them again (a lock), while client threads
connect, send whole, half or no requests and hang up, some before reading their answers.
Prints one summary line; a memory error aborts the process.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tokenagent.daemon import _getserver as native
from tokenagent.protocol import encode_get

VAULTS = ("v1", "v2", "v3", "v4")


def client(path: str, seed: int, stop: threading.Event, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    frames = [encode_get(v, c) for v in VAULTS for c in (None, "restic:/srv/repo")]
    while not stop.is_set():
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
                counts["connections"] += 1
                frame = rng.choice(frames)
                assert frame is not None
                how = rng.random()
                if how < 0.5:  # a request and its answer
                    s.sendall(frame)
                    if s.recv(8192):
                        counts["answers"] += 1
                elif how < 0.75:  # requests, gone before the answers
                    s.sendall(frame * rng.randint(1, 20))
                elif how < 0.9:  # half a request
                    s.sendall(frame[:rng.randint(1, len(frame) - 1)])
                # else: connect and hang up at once
        except OSError:
            counts["errors"] += 1


def main() -> None:
    module_dir, rounds = sys.argv[1], int(sys.argv[2])
    assert os.path.dirname(native.__file__) == module_dir, native.__file__
    work = Path(tempfile.mkdtemp(prefix="ta-stress-"))
    path = work / "get.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)
    native.start(listener.fileno(), str(work / "audit.log"), 512, 1.0)
    stop = threading.Event()
    counts = {"connections": 0, "answers": 0, "errors": 0}
    threads = [threading.Thread(target=client, args=(str(path), i, stop, counts), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    rng = random.Random(20261201)
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # the helper itself not sanitized
    forks = 0
    started = time.monotonic()
    try:
        for round_ in range(rounds):
            for name in VAULTS:
                native.put(name, rng.randbytes(32), rng.random() < 0.5, 0.0, None, None, None)
            if round_ % 4:
                subprocess.run(["/bin/true"], check=True, env=plain_env)  # fork + exec, as find_library did
            else:
                pid = os.fork()
                if pid == 0:  # holds every descriptor of the parent for a moment
                    time.sleep(0.005)
                    os._exit(0)
                os.waitpid(pid, 0)
            forks += 1
            for name in VAULTS:
                native.drop(name)
    finally:
        stop.set()
        for t in threads:
            t.join()
    native.stop()
    listener.close()
    took = time.monotonic() - started
    print(f"stress: {rounds:,} rounds of unlock, fork and lock in {took:.0f} s, {forks:,} forks,"
          f" {counts['connections']:,} client connections ({counts['answers']:,} answered), 0 crashes")


if __name__ == "__main__":
    main()
