#!/usr/bin/env python3
"""What tokenagent adds to a FIDO2 unlock beyond the token's own work.

Both sides run in process against the same virtual token (python-fido2's PC/SC framing over
a direct connection, so no pcscd or process start is counted):

* token alone: the CTAP exchanges any hmac-secret client needs (key agreement, one
  getAssertion with the salt, decryption of the output), done with python-fido2 directly;
* tokenagent: opening a vault with a FIDO2 slot (pre-flight without touch, the same
  exchanges, the slot's AEAD and the header MAC).

    .venv/bin/python bench/unlock_overhead.py [-n 50]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV2
from fido2.pcsc import CtapPcscDevice

os.environ.setdefault("TOKENAGENT_TEST_KDF", "1")

from tokenagent.drivers.fido2 import Fido2Factor  # noqa: E402
from tokenagent.factors.base import FactorContext, Interaction, SecretRequest  # noqa: E402
from tokenagent.vault import new_vault, unlock  # noqa: E402
from tokenagent.virtual.provider import VirtualDevices  # noqa: E402
from tokenagent.virtual.token import VirtualToken  # noqa: E402


class Silent(Interaction):
    def ask_secret(self, request: SecretRequest) -> bytearray:
        raise AssertionError("no secret is asked")

    def notify(self, event: str, message: str) -> None:
        pass


def token_alone(token: VirtualToken, factor: Fido2Factor) -> float:
    start = time.perf_counter()
    ctap = Ctap2(CtapPcscDevice(token.connection(), "bench"))
    protocol = PinProtocolV2()
    key_agreement, shared = protocol.encapsulate(ctap.client_pin(2, ClientPin.CMD.GET_KEY_AGREEMENT)[1])
    enc = protocol.encrypt(shared, factor.salt)
    out = ctap.get_assertion(factor.rp, secrets.token_bytes(32), [{"type": "public-key", "id": factor.credential}],
                             {"hmac-secret": {1: key_agreement, 2: enc, 3: protocol.authenticate(shared, enc), 4: 2}})
    protocol.decrypt(shared, out.auth_data.extensions["hmac-secret"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        token = VirtualToken(Path(tmp) / "t.json", serial=1)
        ctx = FactorContext(ui=Silent(), devices=VirtualDevices([token]))
        factor, secret = Fido2Factor.enroll(ctx, {})
        assert isinstance(factor, Fido2Factor)
        vault, _ = new_vault("bench", [(factor, secret)])
        alone = [token_alone(token, factor) for _ in range(args.n)]
        full = []
        for _ in range(args.n):
            start = time.perf_counter()
            unlock(vault, ctx)
            full.append(time.perf_counter() - start)
    a, f = statistics.median(alone), statistics.median(full)
    print(f"FIDO2 unlock, median of {args.n}, {machine()}")
    print(f"  token alone (python-fido2 hmac-secret)   {a * 1000:7.1f} ms")
    print(f"  tokenagent vault unlock                   {f * 1000:7.1f} ms   = {f / a:.2f}x, +{(f - a) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
