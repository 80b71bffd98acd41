"""The agent's HID watcher: FIDO keys on USB HID coming and going are reported as tokens.

No machine the tests run on has /dev/hidraw FIDO keys (nor /dev/uhid to make one), so the
device list is given to the watcher here; the listing itself is python-fido2's
``list_descriptors``. What is checked is the watcher's part: each key added or removed is
reported once, named "hid:PATH", and a key that comes back is reported again.
"""

from __future__ import annotations

import asyncio
import time

from tokenagent.daemon import watch
from tokenagent.daemon.watch import HidWatcher


def test_keys_coming_and_going_are_reported_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(watch, "HID_POLL", 0.1)
    monkeypatch.setattr(watch, "udev_hidraw_monitor", lambda: None)  # the polling path (no udev here)
    present: list[str] = []
    reports: list[tuple[str, str]] = []

    async def scenario() -> None:
        watcher = HidWatcher(asyncio.get_running_loop(), lambda change, name: reports.append((change, name)),
                             list_paths=lambda: list(present))
        watcher.start()
        try:
            for step in (["/dev/hidraw3"], ["/dev/hidraw3", "/dev/hidraw5"], ["/dev/hidraw5"], [],
                         ["/dev/hidraw3"]):
                present[:] = step
                deadline = time.monotonic() + 5
                while watcher.present != {f"hid:{p}" for p in step}:
                    assert time.monotonic() < deadline, (step, watcher.present)
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more is reported while nothing changes
        finally:
            watcher.stop()

    asyncio.run(scenario())
    assert reports == [("added", "hid:/dev/hidraw3"), ("added", "hid:/dev/hidraw5"), ("removed", "hid:/dev/hidraw3"),
                       ("removed", "hid:/dev/hidraw5"), ("added", "hid:/dev/hidraw3")]



class _CallsAtOnce:
    """An event loop stand-in that runs a reported change at once, in the watcher's thread: the
    handler then sees exactly the state the watcher had when it reported."""

    def call_soon_threadsafe(self, call, *args) -> None:  # type: ignore[no-untyped-def]
        call(*args)


def test_a_reported_change_is_already_in_the_present_set() -> None:
    """The server's removal handler asks the watchers whether the token is back (``removal_grace``);
    with a grace of 0 it ran before the watcher had forgotten the key, and the vault stayed open."""
    present: list[str] = []
    seen: list[tuple[str, bool]] = []
    watcher: HidWatcher

    def report(change: str, name: str) -> None:
        seen.append((change, name in watcher.present))

    watcher = HidWatcher(_CallsAtOnce(), report, list_paths=lambda: list(present))  # type: ignore[arg-type]
    present[:] = ["/dev/hidraw0"]
    watcher._list()
    present[:] = []
    watcher._list()
    assert seen == [("added", True), ("removed", False)]


class _Monitor:
    """pyudev's monitor as the watcher uses it: a descriptor that is readable while events wait."""

    def __init__(self) -> None:
        import os

        self.r, self.w = os.pipe()
        self.queued = 0

    def fileno(self) -> int:
        return self.r

    def event(self) -> None:
        import os

        self.queued += 1
        os.write(self.w, b"x")

    def poll(self, timeout: float = 0) -> object | None:
        import os

        if not self.queued:
            return None
        self.queued -= 1
        os.read(self.r, 1)
        return object()


def test_a_udev_event_is_followed_by_the_listing_without_a_fixed_wait(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """udev sends its hidraw event after its rules ran (permissions, ACLs), so the watcher lists the
    keys at once: no sleep between the event and the listing (a fixed 0.3 s was there before)."""
    monitor = _Monitor()
    monkeypatch.setattr(watch, "udev_hidraw_monitor", lambda: monitor)
    slept: list[float] = []
    monkeypatch.setattr(watch.time, "sleep", slept.append)
    present: list[str] = []
    reports: list[tuple[str, str]] = []

    async def scenario() -> None:
        watcher = HidWatcher(asyncio.get_running_loop(), lambda change, name: reports.append((change, name)),
                             list_paths=lambda: list(present))
        watcher.start()
        try:
            present[:] = ["/dev/hidraw1"]
            monitor.event()
            monitor.event()  # the OTP interface's node: one burst, one listing
            deadline = time.monotonic() + 5
            while not reports:
                assert time.monotonic() < deadline, "the udev event was not followed by a listing"
                await asyncio.sleep(0.02)
        finally:
            watcher.stop()

    asyncio.run(scenario())
    assert reports == [("added", "hid:/dev/hidraw1")]
    assert slept == []
