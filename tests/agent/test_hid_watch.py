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
        self.events: list[object] = []

    def fileno(self) -> int:
        return self.r

    def event(self, action: str | None = None, node: str | None = None) -> None:
        """One event; without ``action``, one that names no node (the whole list is taken again)."""
        import os
        from types import SimpleNamespace

        self.events.append(object() if action is None else SimpleNamespace(action=action, device_node=node))
        os.write(self.w, b"x")

    def poll(self, timeout: float = 0) -> object | None:
        import os

        if not self.events:
            return None
        os.read(self.r, 1)
        return self.events.pop(0)


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


def test_each_udev_event_is_handled_by_the_node_it_names(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An ``add`` has only its own node looked at (not every hidraw device listed again, which
    competed with the unlock the arrival starts), a ``remove`` is reported as it comes, a node
    that is not a FIDO key is no news, and an event of another kind has everything listed again."""
    monitor = _Monitor()
    monkeypatch.setattr(watch, "udev_hidraw_monitor", lambda: monitor)
    listed: list[int] = []
    checked: list[str] = []
    keys = {"/dev/hidraw1", "/dev/hidraw4"}
    present: list[str] = []
    reports: list[tuple[str, str]] = []

    def list_paths() -> list[str]:
        listed.append(1)
        return list(present)

    def check_path(node: str) -> bool:
        checked.append(node)
        return node in keys

    async def wait_for(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(reports) < count:
            assert time.monotonic() < deadline, reports
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        watcher = HidWatcher(asyncio.get_running_loop(), lambda change, name: reports.append((change, name)),
                             list_paths=list_paths, check_path=check_path)
        watcher.start()
        try:
            deadline = time.monotonic() + 5
            while not listed:  # the listing at start
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            monitor.event("add", "/dev/hidraw0")  # the key's OTP interface: a keyboard
            monitor.event("add", "/dev/hidraw1")
            await wait_for(1)
            assert listed == [1], "an add event had every device listed again"
            monitor.event("remove", "/dev/hidraw0")  # not a key: no news
            monitor.event("remove", "/dev/hidraw1")
            await wait_for(2)
            present[:] = ["/dev/hidraw4"]
            monitor.event("change", "/dev/hidraw4")  # another kind: everything listed again
            await wait_for(3)
        finally:
            watcher.stop()

    asyncio.run(scenario())
    assert reports == [("added", "hid:/dev/hidraw1"), ("removed", "hid:/dev/hidraw1"), ("added", "hid:/dev/hidraw4")]
    assert checked == ["/dev/hidraw0", "/dev/hidraw1"]
    assert len(listed) == 2


def test_a_node_is_a_fido_key_by_its_report_descriptor_in_sysfs(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``is_fido_hid`` (the watcher's look at one udev event's node) decides from sysfs as
    python-fido2's listing does, without opening the node: the YubiKey's FIDO interface is a key,
    its OTP keyboard interface is not, nor another usage on the FIDO page, nor a node this user
    cannot open."""
    import os

    from tokenagent import discovery
    from tokenagent.virtual.uhid import FIDO_REPORT_DESCRIPTOR, OTP_REPORT_DESCRIPTOR

    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    for name, descriptor in (("hidraw0", OTP_REPORT_DESCRIPTOR), ("hidraw1", FIDO_REPORT_DESCRIPTOR),
                             ("hidraw2", FIDO_REPORT_DESCRIPTOR),
                             ("hidraw3", FIDO_REPORT_DESCRIPTOR.replace(b"\x06\xd0\xf1\x09\x01", b"\x06\xd0\xf1\x09\x02"))):
        (sysfs / name / "device").mkdir(parents=True)
        (sysfs / name / "device" / "report_descriptor").write_bytes(descriptor)
        (dev / name).write_bytes(b"")
    (dev / "hidraw2").chmod(0)
    monkeypatch.setattr(discovery, "SYS_HIDRAW", str(sysfs))
    opened: list[str] = []
    monkeypatch.setattr(discovery, "_opens_as_fido", lambda path: bool(opened.append(path)))
    assert not discovery.is_fido_hid(str(dev / "hidraw0"))
    assert discovery.is_fido_hid(str(dev / "hidraw1"))
    assert not discovery.is_fido_hid(str(dev / "hidraw3"))  # the FIDO usage page, another usage
    if os.geteuid() != 0:  # root opens anything
        assert not discovery.is_fido_hid(str(dev / "hidraw2"))
    assert opened == []  # sysfs was enough: no node opened
    assert not discovery.is_fido_hid(str(dev / "hidraw9"))  # no sysfs entry: the node itself is asked
    assert opened == [str(dev / "hidraw9")]
