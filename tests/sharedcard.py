"""A virtual token's card shared with another program, as PC/SC shares real cards.

``SharedCard`` is the card's pyscard-style connection (``DirectConnection``); right before the
first command that ``when`` picks, "another program" selects the application ``aid`` on the
card, so that command reaches the wrong application, as it can on a real shared card.
"""

from __future__ import annotations

from collections.abc import Callable

from tokenagent.virtual.card import VirtualCard
from tokenagent.virtual.token import DirectConnection


class SharedCard(DirectConnection):
    def __init__(self, card: VirtualCard, when: Callable[[list[int]], bool], aid: bytes) -> None:
        super().__init__(card)
        self.when, self.aid, self.meddled = when, aid, False

    def transmit(self, apdu: list[int], protocol: object = None) -> tuple[list[int], int, int]:
        if not self.meddled and self.when(apdu):
            self.meddled = True
            self.card.transmit(bytes([0, 0xA4, 4, 0, len(self.aid)]) + self.aid)
        return super().transmit(apdu, protocol)


class PulledCard(DirectConnection):
    """The card pulled out of its reader after ``after`` commands: every later command fails as
    pyscard fails for a removed card (``after`` = None: never; ``sent`` counts the commands)."""

    def __init__(self, card: VirtualCard, after: int | None) -> None:
        super().__init__(card)
        self.after, self.sent = after, 0

    def transmit(self, apdu: list[int], protocol: object = None) -> tuple[list[int], int, int]:
        from smartcard.Exceptions import CardConnectionException

        if self.after is not None and self.sent >= self.after:
            raise CardConnectionException("Failed to transmit with protocol T1. Card was removed.")
        self.sent += 1
        return super().transmit(apdu, protocol)
