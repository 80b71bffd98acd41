"""The pinentry client against the real pinentry-curses, driven through a pseudo-terminal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from agentkit import Person

from tokenagent.daemon.pinentry import Pinentry, _escape, _unescape
from tokenagent.errors import Cancelled

PROGRAM = shutil.which("pinentry-curses")


@pytest.fixture
def person() -> Iterator[Person]:
    if PROGRAM is None:
        pytest.skip("pinentry-curses is not installed (Debian package pinentry-curses)")
    p = Person()
    yield p
    p.close()


def test_escaping_round_trips() -> None:
    text = "100% sure\r\nline two"
    assert _unescape(bytearray(_escape(text).encode())) == text.encode()


def test_pin_typed_in_pinentry_curses(person: Person) -> None:
    person.will_type(b"13%57\r")
    pin = Pinentry(str(PROGRAM), person.tty, timeout=20).ask("tokenagent: unlock vault 'docs'", "PIN:")
    assert pin == bytearray(b"13%57")
    assert b"unlock vault" in person.screen


def test_cancel_button(person: Person) -> None:
    person.will_type(b"\t\t\r")  # from the entry to OK, to Cancel; press it
    with pytest.raises(Cancelled, match="PIN entry cancelled"):
        Pinentry(str(PROGRAM), person.tty, timeout=20).ask("tokenagent: unlock vault 'docs'")


def test_nobody_answers_in_time(person: Person) -> None:
    started = time.monotonic()
    with pytest.raises(Cancelled, match="in time"):
        Pinentry(str(PROGRAM), person.tty, timeout=1.5).ask("tokenagent: unlock vault 'docs'")
    assert time.monotonic() - started < 10
