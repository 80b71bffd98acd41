"""The recovery-key factor: 32 random bytes printed once, for the safe or the drawer.

Shown as 64 modhex characters (the YubiKey OTP alphabet ``cbdefghijklnrtuv``, chosen because
it has no look-alike letters and types the same on most keyboard layouts) in eight
dash-separated groups; accepted with or without dashes or spaces, in any case. With
``shares`` the key is instead split into SLIP-39 mnemonic shares (any k of n words lists
give the key back, via the ``shamir-mnemonic`` library), to hand to several people.
A 4-byte check value (HKDF of the key) tells a typo from a different slot's key.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from ..errors import NotMine, UsageError, VaultFormatError
from .base import Factor, FactorContext, JSONValue, SecretRequest, register
from .params import expect_hex, expect_keys

MODHEX = "cbdefghijklnrtuv"  # yubikit.core.otp.MODHEX_ALPHABET (imported when a key is shown or typed: the agent
# loads this module at start, and yubikit.core costs it about 2 MiB)
KEY_LEN = 32
CHECK_LABEL = b"tokenagent/v1/recovery-check"
_MODHEX_INPUT = re.compile(r"^[cbdefghijklnrtuv]{64}$")


def to_modhex(key: bytes | bytearray) -> str:
    from yubikit.core.otp import modhex_encode

    text = modhex_encode(key)  # type: ignore[arg-type]  # it only iterates: no copy of the key
    return "-".join(text[i : i + 8] for i in range(0, len(text), 8))


def from_modhex(text: str) -> bytearray | None:
    """The key from a typed recovery key, or None if it is not one."""
    cleaned = re.sub(r"[\s-]", "", text).lower()
    if not _MODHEX_INPUT.match(cleaned):
        return None
    from yubikit.core.otp import modhex_decode

    return bytearray(modhex_decode(cleaned))


def _check(key: bytes | bytearray) -> str:
    from ..vault.crypto import hkdf

    return bytes(hkdf(key, None, CHECK_LABEL, 4)).hex()


def parse_shares(spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not match:
        raise UsageError("--recovery-shares wants K/N, e.g. 2/3")
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n <= 16 or (k == 1 and n > 1):
        raise UsageError("--recovery-shares K/N needs 2 <= K <= N <= 16 (or 1/1)")
    return k, n


@register
class RecoveryFactor(Factor):
    type = "recovery"

    def __init__(self, check: str, shares: tuple[int, int] | None = None) -> None:
        self.check, self.shares = check, shares

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"check", "shares"}, "recovery", optional={"shares"})
        expect_hex(params, "check", 4, "recovery")
        shares = params.get("shares")
        if shares is not None:
            if not (isinstance(shares, list) and len(shares) == 2 and all(type(x) is int for x in shares)
                    and 1 <= shares[0] <= shares[1] <= 16):
                raise VaultFormatError("recovery: shares must be [K, N] with 1 <= K <= N <= 16")
            return cls(str(params["check"]), (shares[0], shares[1]))
        return cls(str(params["check"]))

    def params(self) -> dict[str, JSONValue]:
        out: dict[str, JSONValue] = {"check": self.check}
        if self.shares:
            out["shares"] = list(self.shares)
        return out

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        key = bytearray(secrets.token_bytes(KEY_LEN))
        spec = options.get("shares")
        if not spec:
            ctx.ui.show_secret_once(
                "Recovery key: write it down and keep it somewhere safe. It is shown only now.", to_modhex(key)
            )
            return cls(_check(key)), key
        import shamir_mnemonic

        k, n = parse_shares(str(spec))
        groups = shamir_mnemonic.generate_mnemonics(1, [(k, n)], bytes(key))[0]
        for i, words in enumerate(groups, 1):
            ctx.ui.show_secret_once(f"Recovery share {i} of {n} (any {k} of them open the vault):", words)
        return cls(_check(key), (k, n)), key

    def unlock(self, ctx: FactorContext) -> bytearray:
        prompt = "Recovery key" if not self.shares else f"Recovery key, or share 1 of {self.shares[0]}"
        text = ctx.ui.ask_secret(SecretRequest("recovery", prompt))
        try:
            key = from_modhex(text.decode("utf-8", "replace"))
            if key is None and self.shares:
                key = self._from_shares(ctx, text)
        finally:
            text[:] = bytes(len(text))
        if key is None:
            raise NotMine("that is not a recovery key (64 letters from cbdefghijklnrtuv, dashes optional)")
        if not secrets.compare_digest(_check(key), self.check):
            key[:] = bytes(len(key))
            raise NotMine("that recovery key does not belong to this slot (check it for typos)")
        return key

    def _from_shares(self, ctx: FactorContext, first: bytearray) -> bytearray | None:
        import shamir_mnemonic

        assert self.shares is not None
        mnemonics = [" ".join(first.decode("utf-8", "replace").split()).lower()]
        for i in range(2, self.shares[0] + 1):
            more = ctx.ui.ask_secret(SecretRequest("recovery", f"Recovery share {i} of {self.shares[0]}"))
            mnemonics.append(" ".join(more.decode("utf-8", "replace").split()).lower())
            more[:] = bytes(len(more))
        try:
            return bytearray(shamir_mnemonic.combine_mnemonics(mnemonics))
        except (shamir_mnemonic.MnemonicError, ValueError) as err:
            raise NotMine(f"the recovery shares do not combine: {err}") from None

    def describe(self) -> str:
        return "recovery key" + (f" ({self.shares[0]}-of-{self.shares[1]} shares)" if self.shares else "")
