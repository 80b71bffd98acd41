#!/usr/bin/env python3
"""Key requests per second and latency: tokenagent ``get`` against ssh-agent's identity listing.

All are driven by the same Python load client (one process per connection, blocking
requests on a Unix socket; all protocols are 4-byte-length framed), at 1 and 8 connections.
ssh-agent answers SSH_AGENTC_REQUEST_IDENTITIES, its cheapest request that returns key
material about a held key; tokenagent answers ``get`` with a context (an HKDF derivation and
an audit line) on its get socket (what ``tokenagent.client`` uses) and, for comparison, the
JSON ``get`` on the agent socket (what clients use when the get socket is not built).

    .venv/bin/python bench/get_throughput.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

from _common import SSH_REQUEST_IDENTITIES, Agent, FramedClient, SshAgent, frame_json, machine, percentiles

from tokenagent.protocol import encode_get


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
        get_json = frame_json({"op": "get", "id": 1, "vault": "v0", "context": "restic:/srv/repo"})
        get_fast = encode_get("v0", "restic:/srv/repo")
        get_socket = Path(str(agent.socket) + ".get")
        assert get_fast is not None and get_socket.exists(), "the agent has no get socket (extension not built?)"
        print(f"get throughput, {args.seconds:.0f} s per point, {machine()}")
        print(f"{'conns':>5} {'server':>22} {'req/s':>9} {'p50 us':>8} {'p99 us':>8}   vs ssh-agent")
        for conns in (1, 8):
            s_rate, s50, s99 = run(ssh.socket, SSH_REQUEST_IDENTITIES, conns, args.seconds)
            f_rate, f50, f99 = run(get_socket, get_fast, conns, args.seconds)
            j_rate, j50, j99 = run(agent.socket, get_json, conns, args.seconds)
            print(f"{conns:>5} {'ssh-agent':>22} {s_rate:>9.0f} {s50:>8.0f} {s99:>8.0f}")
            for label, rate, p50, p99 in (("tokenagent get socket", f_rate, f50, f99),
                                          ("tokenagent JSON get", j_rate, j50, j99)):
                print(f"{conns:>5} {label:>22} {rate:>9.0f} {p50:>8.0f} {p99:>8.0f}   "
                      f"throughput {rate / s_rate:.2f}x, p99 {p99 / s99:.2f}x")
    finally:
        agent.close()
        ssh.close()


if __name__ == "__main__":
    main()
