#!/usr/bin/env python3
"""How close the password factor's calibration comes to its target time on this machine.

Enrols a password at targets of 0.5, 1 and 2 s, then times the unlock; prints measured/target.

    .venv/bin/python bench/argon2_calibration.py
"""

from __future__ import annotations

import os
import secrets
import time

from _common import machine

from tokenagent.factors.password import argon2id, calibrate


def main() -> None:
    print(f"Argon2id calibration (64 MiB, 1 lane), {machine()}")
    for target in (0.5, 1.0, 2.0):
        costs = calibrate(target)
        start = time.perf_counter()
        argon2id(b"benchmark password", secrets.token_bytes(16), costs["t"], costs["m"], costs["p"])
        took = time.perf_counter() - start
        print(f"  target {target:.1f} s: t={costs['t']:>2}, unlock took {took:.2f} s = {took / target:.2f}x target")
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
