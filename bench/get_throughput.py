#!/usr/bin/env python3
"""Key requests per second and latency: tokenagent ``get`` against ssh-agent's identity listing.

All are driven by the same Python load client (one process per connection, blocking
requests on a Unix socket; all protocols are 4-byte-length framed), at 1 and 8 connections.
ssh-agent answers SSH_AGENTC_REQUEST_IDENTITIES, its cheapest request that returns key
material about a held key; tokenagent answers ``get`` with a context (an HKDF derivation and
an audit line) on its get socket (what ``tokenagent.client`` uses) and, for comparison, the
JSON ``get`` on the agent socket (what clients use when the get socket is not built).

Each point also prints the server's CPU time per request (user + system of the server process
from /proc, over the point): on a loaded machine throughput and latency mostly measure the
scheduler, while the CPU a server spends per request is its own cost, and its ratio to
ssh-agent's holds from run to run.

    .venv/bin/python bench/get_throughput.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(path: Path, request: bytes, connections: int, seconds: float,
        server_pid: int) -> tuple[float, float, float, float]:
    """(requests/s, p50 us, p99 us, server CPU us per request) of one point."""
    queue: mp.Queue = mp.Queue()
    workers = [mp.Process(target=_worker, args=(str(path), request, seconds, queue)) for _ in range(connections)]
    cpu_before = cpu_seconds(server_pid)
    for w in workers:
        w.start()
    latencies = [x for _ in workers for x in queue.get()]
    for w in workers:
        w.join()
    cpu = cpu_seconds(server_pid) - cpu_before  # includes the warm-up requests, a few per cent
    p50, p99 = percentiles(latencies)
    return len(latencies) / seconds, p50 * 1e6, p99 * 1e6, cpu / (len(latencies) + 50 * connections) * 1e6


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
        print(f"{'conns':>5} {'server':>22} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'cpu us':>7}   vs ssh-agent")
        for conns in (1, 8):
            s_rate, s50, s99, s_cpu = run(ssh.socket, SSH_REQUEST_IDENTITIES, conns, args.seconds, ssh.proc.pid)
            fast = run(get_socket, get_fast, conns, args.seconds, agent.proc.pid)
            slow = run(agent.socket, get_json, conns, args.seconds, agent.proc.pid)
            print(f"{conns:>5} {'ssh-agent':>22} {s_rate:>9.0f} {s50:>8.0f} {s99:>8.0f} {s_cpu:>7.1f}")
            for label, (rate, p50, p99, cpu) in (("tokenagent get socket", fast), ("tokenagent JSON get", slow)):
                print(f"{conns:>5} {label:>22} {rate:>9.0f} {p50:>8.0f} {p99:>8.0f} {cpu:>7.1f}   "
                      f"throughput {rate / s_rate:.2f}x, p99 {p99 / s99:.2f}x, cpu per request {cpu / s_cpu:.2f}x")
    finally:
        agent.close()
        ssh.close()


if __name__ == "__main__":
    main()
