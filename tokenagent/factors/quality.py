"""How strong a new password is, and the administrator's minimum for password factors.

The estimate is zxcvbn's (Dropbox's estimator, the one KeePassXC shows): the log of the
number of guesses an attacker who knows common passwords, names, words, keyboard walks,
dates and substitutions needs, given in bits. It is an estimate of the password's
resistance to guessing, not a proof; the ratings follow KeePassXC's bands.

The policy comes from ``[passwords]`` in config.toml (docs/admin.md):

    [passwords]
    min_length = 12     # characters
    min_bits = 60       # estimated quality, in bits

and is enforced when a password factor is enrolled (``init``, ``enroll``, ``passwd``). A
password below the "good" band gets a hint even without a policy.

zxcvbn takes a ``str``: the password is decoded for the estimate, and that copy cannot be
wiped (Python strings are immutable); it is dropped as soon as the estimate is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

# zxcvbn's run time grows fast with length; past this many characters the estimate is made on
# the first ones only, which can only understate the strength of the whole.
MAX_ESTIMATED_CHARS = 72
# KeePassXC's bands (src/core/PasswordHealth.cpp): poor < 40 <= weak < 75 <= good < 100 <= excellent.
BANDS = ((40.0, "poor"), (75.0, "weak"), (100.0, "good"))
HINT_BELOW_BITS = 75.0


def estimate_bits(password: bytes | bytearray) -> float:
    """The estimated quality of ``password`` (UTF-8) in bits."""
    from zxcvbn import zxcvbn

    text = bytes(password[: MAX_ESTIMATED_CHARS * 4]).decode("utf-8", errors="replace")[:MAX_ESTIMATED_CHARS]
    try:
        return float(zxcvbn(text)["guesses_log10"]) * math.log2(10)
    finally:
        del text


def rating(bits: float) -> str:
    for limit, name in BANDS:
        if bits < limit:
            return name
    return "excellent"


def length(password: bytes | bytearray) -> int:
    """Characters (not bytes) of a UTF-8 password, without decoding it into a string."""
    return sum(1 for byte in password if byte & 0xC0 != 0x80)


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 0
    min_bits: float = 0.0

    def check(self, password: bytes | bytearray) -> float:
        """The estimate in bits; ``UsageError`` naming the rule when the password breaks the policy."""
        chars = length(password)
        if chars < self.min_length:
            raise UsageError(f"the password has {chars} characters; the password policy asks for at least"
                             f" {self.min_length} ([passwords] min_length in config.toml)")
        bits = estimate_bits(password)
        if bits < self.min_bits:
            raise UsageError(f"the password's estimated quality is {bits:.0f} bits ({rating(bits)}); the password"
                             f" policy asks for at least {self.min_bits:.0f} bits ([passwords] min_bits in"
                             " config.toml): use a longer password, e.g. several random words")
        return bits


def hint(bits: float) -> str | None:
    """A one-line hint for a password below the "good" band, else None."""
    if bits >= HINT_BELOW_BITS:
        return None
    return (f"this password's estimated quality is {bits:.0f} bits ({rating(bits)}): a longer one (several random"
            " words) resists guessing much better")
