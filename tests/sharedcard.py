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
