"""The PIN rules every token factor follows (DESIGN §3), in one place.

Before a PIN is asked for, the token's retry counter has been read (in a way that spends
nothing). A blocked PIN is refused with the way out; the last try is kept unless the user
passed ``--force``. After that the factor asks once and never sends a failed PIN again.
"""

from __future__ import annotations

from ..errors import PinBlocked, PinLastTry
from ..factors.base import FactorContext


def check_retries(retries: int, ctx: FactorContext, name: str, what: str, way_out: str) -> None:
    """Refuse to ask for the ``what`` ("PIN", "PIV PIN") of token ``name`` at 0 or (without --force) 1 try left."""
    if retries == 0:
        raise PinBlocked(f"the {what} of {name} is blocked; {way_out}")
    if retries <= 1 and not ctx.force:
        raise PinLastTry(f"{name} has 1 {what} try left; tokenagent does not spend the last one unless you pass"
                         " --force")
