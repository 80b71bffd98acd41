#!/usr/bin/env python3
"""Does the number of vaults matter? ``get`` latency and ``status`` with 1 and with 1000 vaults.

All vaults are unlocked; ``get`` asks for the vault unlocked first (the get socket's table
keeps the newest first, so this is its longest search), on the get socket and as JSON.

    .venv/bin/python bench/many_vaults.py
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from _common import Agent, FramedClient, frame_json, machine, percentiles

from tokenagent.protocol import encode_get


def latency(path: Path, request: bytes, n: int) -> tuple[float, float]:
    samples = []
    with FramedClient(path) as client:
        for _ in range(n):
            start = time.perf_counter()
            client.call(request)
            samples.append(time.perf_counter() - start)
    return percentiles(samples)


def main() -> None:
    get = frame_json({"op": "get", "id": 1, "vault": "v0", "context": "x"})
    get_fast = encode_get("v0", "x")
    status = frame_json({"op": "status", "id": 1})
    results = {}
    for count in (1, 1000):
        agent = Agent(vaults=count)
        try:
            with FramedClient(agent.socket) as client:
                for i in range(1, count):
                    client.call(frame_json({"op": "unlock", "vault": f"v{i}", "idle_ttl": 0, "max_ttl": 0,
                                            "key": base64.b64encode(agent.secret).decode()}))
            fast_path = Path(str(agent.socket) + ".get")
            results[count] = (latency(fast_path, get_fast, 3000), latency(agent.socket, get, 3000),
                              latency(agent.socket, status, 200))
        finally:
            agent.close()
    print(f"1 vs 1000 vaults (all unlocked), {machine()}")
    for name, index in (("get (get socket)", 0), ("get (JSON)", 1), ("status", 2)):
        (a50, a99), (b50, b99) = results[1][index], results[1000][index]
        print(f"  {name:<17} p50 {a50 * 1e6:8.0f} us -> {b50 * 1e6:8.0f} us ({b50 / a50:.2f}x),"
              f" p99 {a99 * 1e6:8.0f} us -> {b99 * 1e6:8.0f} us")


if __name__ == "__main__":
    main()
