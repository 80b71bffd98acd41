#!/usr/bin/env python3
"""Key requests per second and latency: tokenagent ``get`` against ssh-agent's identity listing.

Both agents are driven by the same Python load client (one process per connection, blocking
requests on a Unix socket; both protocols are 4-byte-length framed), at 1 and 8 connections.
ssh-agent answers SSH_AGENTC_REQUEST_IDENTITIES, its cheapest request that returns key
material about a held key; tokenagent answers ``get`` with a context (an HKDF derivation).

    .venv/bin/python bench/get_throughput.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

from _common import SSH_REQUEST_IDENTITIES, Agent, FramedClient, SshAgent, frame_json, machine, percentiles


def _worker(path: str, request: bytes, seconds: float, out: mp.Queue) -> None:
    latencies = []
    with FramedClient(path) as client:
        for _ in range(50):  # warm up
            client.call(request)
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            client.call(request)
            latencies.append(time.perf_counter() - now)
    out.put(latencies)


def run(path: Path, request: bytes, connections: int, seconds: float) -> tuple[float, float, float]:
    queue: mp.Queue = mp.Queue()
    workers = [mp.Process(target=_worker, args=(str(path), request, seconds, queue)) for _ in range(connections)]
    for w in workers:
        w.start()
    latencies = [x for _ in workers for x in queue.get()]
    for w in workers:
        w.join()
    p50, p99 = percentiles(latencies)
    return len(latencies) / seconds, p50 * 1e6, p99 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    agent, ssh = Agent(), SshAgent()
    try:
        get = frame_json({"op": "get", "id": 1, "vault": "v0", "context": "restic:/srv/repo"})
        print(f"get throughput, {args.seconds:.0f} s per point, {machine()}")
        print(f"{'conns':>5} {'agent':>11} {'req/s':>9} {'p50 us':>8} {'p99 us':>8}   ratio req/s")
        for conns in (1, 8):
            t_rate, t50, t99 = run(agent.socket, get, conns, args.seconds)
            s_rate, s50, s99 = run(ssh.socket, SSH_REQUEST_IDENTITIES, conns, args.seconds)
            print(f"{conns:>5} {'tokenagent':>11} {t_rate:>9.0f} {t50:>8.0f} {t99:>8.0f}   "
                  f"{t_rate / s_rate:.2f}x ssh-agent")
            print(f"{conns:>5} {'ssh-agent':>11} {s_rate:>9.0f} {s50:>8.0f} {s99:>8.0f}")
    finally:
        agent.close()
        ssh.close()


if __name__ == "__main__":
    main()
