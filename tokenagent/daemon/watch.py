"""Token arrival and removal: the threads that watch for tokens coming and going.

Theory of operation. ``PcscWatcher`` runs one thread that blocks in pcscd's status-change wait
(``SCardGetStatusChange`` with no timeout, woken by a reader or card change or by ``stop()``;
when pcscd is not running it looks again every few seconds); ``HidWatcher`` runs another that
follows udev's hidraw events, looking at the node each one names (the whole list of FIDO keys on
/dev/hidraw* at start, and every ``HID_POLL`` seconds without udev). Each reports
every change to the event loop with ``loop.call_soon_threadsafe``, naming the token by its
reader or by "hid:" and its hidraw path; the devices of one such token are reached through
``tokenagent.discovery.ReaderDevices`` (discovery keeps every platform import). What the agent
does with an arrival is daemon/plug.py's; on removal, after ``removal_grace`` seconds (a token
re-seated in time does not count), the server locks every vault tied to that reader
(``lock_on_remove``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from ..discovery import (
    HID_PREFIX,
    MOUNTINFO,
    PcscCardEvents,
    fido_hid_paths,
    is_fido_hid,
    mounted_filesystems,
    udev_hidraw_monitor,
)
from ..factors.keyfile import KeyFileFactor, parse_disk_hint
from ..vault import VaultStore

log = logging.getLogger(__name__)
RETRY_SECONDS = 3.0
HID_POLL = 2.0  # without udev (containers): how often the hidraw devices are listed again
DISK_SETTLE = 0.3
DISK_PREFIX = "disk:"  # a key disk, named by its filesystem UUID
KEYFILE = KeyFileFactor.type


class _Watcher:
    """A thread that reports ("added" | "removed", name) to the event loop for tokens coming and going."""

    thread_name = "watch"

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[str, str], None]) -> None:
        self.loop = loop
        self.report = report
        self.present: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.thread_name)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)  # stop() wakes a blocked wait

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _wait_readable(self, fd: int, events: int = select.POLLIN) -> bool:
        """Block until ``fd`` has ``events`` (True) or ``stop()`` is called (False): no timeout, so an
        idle watcher does not wake."""
        poller = select.poll()
        poller.register(fd, events | select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            if any(ready == fd for ready, _ in poller.poll()):
                return not self._stop.is_set()
        return False

    def _run(self) -> None:
        raise NotImplementedError

    def _publish(self, now: set[str], reinserted: set[str] | None = None) -> None:
        again = reinserted or set()
        before, self.present = self.present, now  # first: a report's handler asks whether the token is present
        for name in sorted((before - now) | again):
            self.loop.call_soon_threadsafe(self.report, "removed", name)
        for name in sorted((now - before) | again):
            self.loop.call_soon_threadsafe(self.report, "added", name)


class PcscWatcher(_Watcher):
    """Reports ("added" | "removed", reader) for cards coming and going in pcscd's readers.

    It blocks in pcscd's status-change wait (``discovery.PcscCardEvents``) until a reader's state
    changes or a reader is plugged in or out, so an idle agent does not wake. ``stop`` cancels
    the wait. Without pcscd it looks for it again every ``RETRY_SECONDS``.
    """

    thread_name = "pcsc-watch"

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[str, str], None]) -> None:
        super().__init__(loop, report)
        self._events: PcscCardEvents | None = None

    def stop(self) -> None:
        super().stop()
        if self._events is not None:
            self._events.cancel()

    def _run(self) -> None:
        events = PcscCardEvents.open()
        if events is None:
            log.info("pyscard is not available: not watching smart-card readers")
            return
        self._events = events
        while not self._stop.is_set():
            try:
                if not events.connect():
                    self._stop.wait(RETRY_SECONDS)
                    continue
                if not events.readers():
                    self._publish(set(), set())
                changed = events.wait(self.present)  # blocks
                if self._stop.is_set():
                    break
                if changed is not None:
                    self._publish(*changed)
            except Exception as err:  # noqa: BLE001 - pcscd restarted, reader vanished mid-call
                log.debug("reader watch: %s", err)
                events.reset()
                self._stop.wait(RETRY_SECONDS)


class HidWatcher(_Watcher):
    """Reports ("added" | "removed", "hid:PATH") for FIDO keys on USB HID (/dev/hidraw*).

    The list is python-fido2's (``list_descriptors``: hidraw devices whose report descriptor
    has the FIDO usage page), taken once at start. Then each udev hidraw event (pyudev's netlink
    monitor; nothing is polled) is handled by the node it names: an ``add`` is looked at alone
    (``is_fido_hid``), a ``remove`` is taken as it comes, and any other event (or one without a
    node) has the whole list taken again. udev sends its event after its rules ran (permissions,
    the uaccess ACL), so there is no settle wait. Without udev (containers, no /run/udev) the list
    is taken every ``HID_POLL`` seconds instead. Keys that also have a PC/SC interface show up in
    both watchers; a vault opened through one is tied to that one.
    """

    thread_name = "hid-watch"

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[str, str], None],
                 list_paths: Callable[[], list[str]] | None = None,
                 check_path: Callable[[str], bool] | None = None) -> None:
        super().__init__(loop, report)
        self.list_paths = list_paths or fido_hid_paths
        self.check_path = check_path or is_fido_hid

    def _run(self) -> None:
        monitor = udev_hidraw_monitor()
        if monitor is not None:
            log.info("HID keys: following udev's hidraw events")
        self._list()
        while not self._stop.is_set():
            if monitor is None:
                self._stop.wait(HID_POLL)
                self._list()
                continue
            try:
                if not self._wait_readable(monitor.fileno()):
                    continue  # stopped
                while (event := monitor.poll(timeout=0)) is not None:
                    self._event(getattr(event, "action", None), getattr(event, "device_node", None))
            except Exception as err:  # noqa: BLE001 - udev went away: fall back to polling
                log.info("udev monitor failed (%s): HID keys are looked for by polling", err)
                monitor = None
                self._list()

    def _event(self, action: str | None, node: str | None) -> None:
        """One udev hidraw event: the node it names looked at alone, or (another kind) everything."""
        if not node or action not in ("add", "remove"):
            self._list()
            return
        name = HID_PREFIX + node
        if action == "remove":
            self._publish(self.present - {name})
        elif name not in self.present and self.check_path(node):
            self._publish(self.present | {name})

    def _list(self) -> None:
        try:
            self._publish({HID_PREFIX + path for path in self.list_paths()})
        except Exception as err:  # noqa: BLE001 - a device vanishing while listed
            log.debug("HID watch: %s", err)


class KeyDiskWatcher(_Watcher):
    """Reports ("added" | "removed", "disk:UUID") for filesystems being mounted and unmounted.

    The kernel marks /proc/self/mountinfo readable-with-priority (POLLPRI) whenever the mount
    table changes; the watcher waits for that (or for stop()) and then
    lists the mounted filesystems by the UUIDs of udev's /dev/disk/by-uuid links. A key disk
    is a filesystem named in a key-file slot's hint (``UUID=…:/path``): the agent opens those
    slots when it is mounted and locks the vaults it opened when it is unmounted or pulled.
    """

    thread_name = "disk-watch"

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[str, str], None],
                 wanted: Callable[[], set[str]], list_uuids: Callable[[], set[str]] | None = None) -> None:
        super().__init__(loop, report)
        self.wanted = wanted  # the UUIDs some vault's key-file slot names: other filesystems are no news
        self.list_uuids = list_uuids or mounted_filesystems

    def _run(self) -> None:
        try:
            table = open(MOUNTINFO, "rb")  # held for the thread's life
        except OSError as err:
            log.info("no mount table (%s): key disks are not watched", err)
            return
        with table:
            while not self._stop.is_set():
                table.seek(0)
                table.read()  # the event is re-armed by reading the table
                try:
                    mounted = self.list_uuids()
                    self._publish({DISK_PREFIX + uuid for uuid in mounted & self.wanted()} if mounted else set())
                except Exception as err:  # noqa: BLE001 - a device vanishing while listed
                    log.debug("key disk watch: %s", err)
                if not self._wait_readable(table.fileno(), select.POLLPRI):
                    break
                time.sleep(DISK_SETTLE)  # udev may still be making the by-uuid link


def key_disks(store: VaultStore) -> set[str]:
    """The filesystem UUIDs that key-file slots of the vaults in ``store`` name (their hints,
    ``UUID=…:/path``). Asked at the agent's start and whenever a filesystem is mounted, so the files
    are read as JSON and only the key-file factors' hints are looked at: parsing them as vaults
    would load every factor type, and with them python-fido2 and cryptography, into an idle agent
    on any desk with a mounted disk (a damaged file is reported when its vault is used)."""
    found: set[str] = set()
    for name in store.list():
        try:
            copies = store.file_bytes(name)
        except Exception as err:  # noqa: BLE001 - gone meanwhile, unreadable: reported when it is used
            log.debug("vault %s not read for key disks: %s", name, err)
            continue
        for data in copies:
            found |= _key_disk_hints(data)
    return found


def _key_disk_hints(data: bytes) -> set[str]:
    try:
        doc = json.loads(data)
        hints = [factor["params"]["hint"] for slot in doc["slots"] for factor in slot["factors"]
                 if factor.get("type") == KEYFILE]
    except (ValueError, TypeError, KeyError, AttributeError):
        return set()  # not a vault's shape: parsed (and reported) when the vault is used
    disks = (parse_disk_hint(hint) for hint in hints if isinstance(hint, str))
    return {disk[0] for disk in disks if disk is not None}
