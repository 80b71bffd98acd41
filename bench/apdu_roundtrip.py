#!/usr/bin/env python3
"""One APDU through the real pcscd and vpcd to the virtual token, against the same APDU in process.

Starts a private pcscd (tests/pcscd.py: needs root, pcscd and vsmartcard-vpcd), plugs one
virtual token into it and sends PIV GET VERSION ``-n`` times through pyscard; the peer is the
same APDU sent to the same kind of card in this process (no pcscd, no TCP). The ratio is what
the PC/SC path adds per APDU.

    .venv/bin/python bench/apdu_roundtrip.py [-n 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, pcscd_with_token

from tokenagent.virtual.token import VirtualToken

SELECT_PIV = bytes.fromhex("00A4040009A00000030800001000")
GET_VERSION = bytes.fromhex("00FD000000")

_LOOP = """
import sys, time
from smartcard.System import readers
n = int(sys.argv[1])
conn = readers()[0].createConnection()
conn.connect()
select, version = bytes.fromhex(sys.argv[2]), list(bytes.fromhex(sys.argv[3]))
conn.transmit(list(select))
times = []
for _ in range(n):
    t = time.perf_counter()
    data, sw1, sw2 = conn.transmit(version)
    times.append(time.perf_counter() - t)
    assert (sw1, sw2) == (0x90, 0x00), (sw1, sw2)
print(" ".join(f"{x:.9f}" for x in times))
"""


def through_pcscd(n: int) -> list[float]:
    with pcscd_with_token("apdu_roundtrip", 1000) as (_, daemon, _token):
        out = subprocess.run([sys.executable, "-c", _LOOP, str(n), SELECT_PIV.hex(), GET_VERSION.hex()],
                             env={**os.environ, **daemon.env}, capture_output=True, text=True, check=True)
        return [float(x) for x in out.stdout.split()]


def in_process(n: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="tokenagent-bench-") as tmp:
        card = VirtualToken(Path(tmp) / "token.json", 1001, "auto", 0.0).card
        card.power_on()
        card.transmit(SELECT_PIV)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            card.transmit(GET_VERSION)
            times.append(time.perf_counter() - t)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100)
    args = parser.parse_args()
    pcsc, local = through_pcscd(args.n), in_process(args.n)
    print(machine())
    mean_pcsc, mean_local = statistics.mean(pcsc), statistics.mean(local)
    print(f"PIV GET VERSION x{args.n} through pcscd+vpcd: mean {mean_pcsc * 1e3:.3f} ms,"
          f" p50 {statistics.median(pcsc) * 1e3:.3f} ms, max {max(pcsc) * 1e3:.3f} ms")
    print(f"the same APDU in process:                mean {mean_local * 1e3:.3f} ms")
    print(f"ratio (PC/SC path / in process): {mean_pcsc / mean_local:.1f}x")


if __name__ == "__main__":
    main()
