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

