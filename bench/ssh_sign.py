#!/usr/bin/env python3
"""SSH signature round trip: tokenagent's ssh-agent socket against OpenSSH's ssh-agent, Ed25519.

One run, the same Python client for both (blocking requests on one Unix-socket connection):
SSH_AGENTC_SIGN_REQUEST of a 200-byte message (the size of an SSH user-authentication blob)
with the agent's Ed25519 key. OpenSSH's ssh-agent holds a key added with ssh-add; tokenagent
derives its key from the unlocked vault at each request (HKDF, key construction, signature),
writes an audit line and pushes the vault's idle deadline, as it does for every signature.

    .venv/bin/python bench/ssh_sign.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time

from _common import SSH_REQUEST_IDENTITIES, Agent, FramedClient, SshAgent, machine, percentiles

from tokenagent import sshagent

CONFIG = '[agent]\nwatch_tokens = false\nnotify = false\n\n[ssh]\nkeys = [{vault = "v0", label = "bench"}]\n'


def first_key(client: FramedClient) -> bytes:
    answer = client.call(SSH_REQUEST_IDENTITIES)
    assert answer[0] == sshagent.SSH_AGENT_IDENTITIES_ANSWER, answer[:1]
    reader = sshagent.Reader(answer[1:])
    assert reader.u32() >= 1, "the agent lists no key"
    return reader.string()


def measure(path: str, requests: int) -> tuple[float, float, float]:
    data = os.urandom(200)
    with FramedClient(path) as client:
        blob = first_key(client)
        request = sshagent.message(sshagent.SSH_AGENTC_SIGN_REQUEST, sshagent.string(blob) + sshagent.string(data)
                                   + struct.pack(">I", 0))
        for _ in range(100):  # warm up
            assert client.call(request)[0] == sshagent.SSH_AGENT_SIGN_RESPONSE
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            client.call(request)
            latencies.append(time.perf_counter() - started)
    p50, p99 = percentiles(latencies)
    return statistics.fmean(latencies), p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    ssh, agent = SshAgent(), Agent(config=CONFIG)
    try:
        print(f"machine: {machine()}; {args.requests} sign requests each, one connection")
        peer = measure(str(ssh.socket), args.requests)
        ours = measure(f"{agent.socket}.ssh", args.requests)
    finally:
        agent.close()
        ssh.close()
    for name, (mean, p50, p99) in (("OpenSSH ssh-agent", peer), ("tokenagent ssh socket", ours)):
        print(f"{name:22s} mean {mean * 1e6:7.1f} us  p50 {p50 * 1e6:7.1f} us  p99 {p99 * 1e6:7.1f} us"
              f"  ({1 / mean:,.0f} signatures/s)")
    print(f"ratio tokenagent / ssh-agent: mean {ours[0] / peer[0]:.2f}x, p50 {ours[1] / peer[1]:.2f}x,"
          f" p99 {ours[2] / peer[2]:.2f}x (round-trip time; lower is faster)")


if __name__ == "__main__":
    main()
