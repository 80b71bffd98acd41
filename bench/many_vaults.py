#!/usr/bin/env python3
"""Does the number of vaults matter? ``get`` latency and ``status`` with 1 and with 1000 vaults.

    .venv/bin/python bench/many_vaults.py
"""

from __future__ import annotations

import time

from _common import Agent, FramedClient, frame_json, machine, percentiles


def latency(agent: Agent, request: bytes, n: int) -> tuple[float, float]:
    samples = []
    with FramedClient(agent.socket) as client:
        for _ in range(n):
            start = time.perf_counter()
            client.call(request)
            samples.append(time.perf_counter() - start)
    return percentiles(samples)


def main() -> None:
    get = frame_json({"op": "get", "id": 1, "vault": "v0", "context": "x"})
    status = frame_json({"op": "status", "id": 1})
    results = {}
    for count in (1, 1000):
        agent = Agent(vaults=count)
        try:
            results[count] = (latency(agent, get, 3000), latency(agent, status, 200))
        finally:
            agent.close()
    print(f"1 vs 1000 vaults, {machine()}")
    for name, index in (("get", 0), ("status", 1)):
        (a50, a99), (b50, b99) = results[1][index], results[1000][index]
        print(f"  {name:<6} p50 {a50 * 1e6:8.0f} us -> {b50 * 1e6:8.0f} us ({b50 / a50:.2f}x),"
              f" p99 {a99 * 1e6:8.0f} us -> {b99 * 1e6:8.0f} us")


if __name__ == "__main__":
    main()
