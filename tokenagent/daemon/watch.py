"""Token arrival and removal, and what the agent does about them.

Theory of operation. ``PcscWatcher`` runs one thread that asks pcscd which readers hold a card
(``SCardGetStatusChange``, half-second timeout, readers re-listed each round; when pcscd is
not running it retries every few seconds); ``HidWatcher`` runs another that lists the FIDO
keys on USB HID (/dev/hidraw*) when udev reports a hidraw change (every second without udev). Each reports
every change to the event loop with ``loop.call_soon_threadsafe``, naming the token by its
reader or by "hid:" and its hidraw path; the devices of one such token are reached through
``tokenagent.discovery.ReaderDevices`` (discovery keeps every platform import). The agent then:

* on arrival, tries the locked vaults configured for it (``unlock_on_plug``) with the slots
  it can open without a person typing anything: slots made only of FIDO2 factors enrolled
  without a PIN and of YubiKey OTP challenge-response factors. The FIDO2 factor's
  pre-flight (no touch) finds whether this token holds the credential; only then is the
  person asked to touch it ("touch" event). A vault opened this way is tied to the reader:
  it locks when the token leaves. A token that has just arrived may not answer yet (pcscd
  resets cards it powers up; a loaded machine is slow): the vaults not opened for such a
  reason (no slot matched, pulled out, a transport error) are tried once more a second after
  the first round, while the token is still there; a PIN refused, a touch not given, a
  cancel or a damaged vault are never retried.
* on removal, after ``removal_grace`` seconds (a token re-seated in time does not count),
  locks every vault tied to that reader (``lock_on_remove``).

Slots that need a PIN (FIDO2 with user verification, PIV) are tried only when ``pinentry``
is configured: the PIN dialog is the pinentry program's (``tokenagent.daemon.pinentry``),
and the factors' PIN rules apply (retries read first, the last one kept, never sent twice;
a PIV card holding another key is passed over before any PIN is asked). Otherwise
``tokenagent unlock VAULT`` in a terminal asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..discovery import (
    HID_PREFIX,
    MOUNTINFO,
    ReaderDevices,
    fido_hid_paths,
    mounted_filesystems,
    udev_hidraw_monitor,
)
from ..errors import (
    Cancelled,
    NotMine,
    PinAuthBlocked,
    PinBlocked,
    PinInvalid,
    PinLastTry,
    PinRequired,
    TokenAgentError,
    TouchTimeout,
    VaultError,
)
from ..factors.base import FactorContext, Interaction, SecretRequest
from ..plugins import load_factor_types
from ..vault import VaultStore, unlock
from ..vault.format import Slot
from ..vault.operations import roll_forward
from .pinentry import Pinentry

log = logging.getLogger("tokenagent.agent")
PNP = "\\\\?PnP?\\Notification"  # pcsc-lite's pseudo-reader: readers plugged in or out
RETRY_SECONDS = 3.0
HID_POLL = 2.0  # without udev (containers): how often the hidraw devices are listed again
HID_SETTLE = 0.3
DISK_PREFIX = "disk:"  # a key disk, named by its filesystem UUID


class _Watcher:
    """A thread that reports ("added" | "removed", name) to the event loop for tokens coming and going."""

    thread_name = "watch"

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[str, str], None]) -> None:
        self.loop = loop
        self.report = report
        self.present: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.thread_name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        raise NotImplementedError

    def _publish(self, now: set[str], reinserted: set[str] | None = None) -> None:
        again = reinserted or set()
        for name in sorted((self.present - now) | again):
            self.loop.call_soon_threadsafe(self.report, "removed", name)
        for name in sorted((now - self.present) | again):
            self.loop.call_soon_threadsafe(self.report, "added", name)
        self.present = now


class PcscWatcher(_Watcher):
    """Reports ("added" | "removed", reader) for cards coming and going in pcscd's readers.

    It blocks in SCardGetStatusChange until a reader's state changes; pcsc-lite's pseudo-reader
    ``PNP`` (``\\\\?PnP?\\Notification``) in the list makes a reader plugged in or out a change too, so an
    idle agent does not wake. ``stop`` cancels the wait (SCardCancel). Without pcscd it looks for
    it again every ``RETRY_SECONDS``.
    """

    thread_name = "pcsc-watch"

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[str, str], None]) -> None:
        super().__init__(loop, report)
        self._context: Any = None

    def stop(self) -> None:
        super().stop()
        context = self._context
        if context is not None:
            try:
                from smartcard import scard

                scard.SCardCancel(context)
            except Exception as err:  # noqa: BLE001 - the context went away meanwhile: nothing to cancel
                log.debug("reader watch cancel: %s", err)

    def _run(self) -> None:
        try:
            from smartcard import scard
        except ImportError:
            log.info("pyscard is not available: not watching smart-card readers")
            return
        known: dict[str, int] = {}  # reader -> last event state (its upper 16 bits count card events)
        pnp_state = scard.SCARD_STATE_UNAWARE
        while not self._stop.is_set():
            try:
                if self._context is None:
                    rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
                    if rc != scard.SCARD_S_SUCCESS:
                        self._stop.wait(RETRY_SECONDS)
                        continue
                    self._context = context
                rc, readers = scard.SCardListReaders(self._context, [])
                if rc in (scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED):
                    raise OSError("pcscd went away")
                readers = readers if rc == scard.SCARD_S_SUCCESS else []
                if not readers:
                    self._publish(set(), set())
                    known = {}
                # blocks until a reader's state differs from what we know, or a reader comes or goes
                watched = [(r, known.get(r, scard.SCARD_STATE_UNAWARE)) for r in readers] + [(PNP, pnp_state)]
                rc, states = scard.SCardGetStatusChange(self._context, scard.INFINITE, watched)
                if self._stop.is_set():
                    break
                if rc == scard.SCARD_E_TIMEOUT:
                    continue
                if rc != scard.SCARD_S_SUCCESS:
                    raise OSError(f"SCardGetStatusChange: {scard.SCardGetErrorMessage(rc)}")
                now, reinserted = set(), set()
                for reader, state, _ in states:
                    if reader == PNP:
                        pnp_state = state & ~scard.SCARD_STATE_CHANGED
                        continue
                    present = bool(state & scard.SCARD_STATE_PRESENT) and not state & scard.SCARD_STATE_MUTE
                    before = known.get(reader)
                    if present:
                        now.add(reader)
                        if before is not None and before >> 16 != state >> 16 and reader in self.present:
                            reinserted.add(reader)  # out and in again between two looks
                    known[reader] = state & ~scard.SCARD_STATE_CHANGED
                self._publish(now, reinserted)
            except Exception as err:  # noqa: BLE001 - pcscd restarted, reader vanished mid-call
                log.debug("reader watch: %s", err)
                context, self._context = self._context, None
                if context is not None:
                    with contextlib.suppress(Exception):
                        scard.SCardReleaseContext(context)
                known = {}
                self._stop.wait(RETRY_SECONDS)


class HidWatcher(_Watcher):
    """Reports ("added" | "removed", "hid:PATH") for FIDO keys on USB HID (/dev/hidraw*).

    The list is python-fido2's (``list_descriptors``: hidraw devices whose report descriptor
    has the FIDO usage page), taken once at start and again whenever udev reports a hidraw
    add or remove (pyudev's netlink monitor; nothing is polled then). Without udev
    (containers, no /run/udev) it is taken every ``HID_POLL`` seconds instead. Keys that also have a PC/SC interface show up in both watchers; a vault
    opened through one is tied to that one.
    """

    thread_name = "hid-watch"

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[str, str], None],
                 list_paths: Callable[[], list[str]] | None = None) -> None:
        super().__init__(loop, report)
        self.list_paths = list_paths or fido_hid_paths

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
                # the timeout only lets the thread notice stop(): nothing is listed without an event
                if monitor.poll(timeout=HID_POLL) is None:
                    continue
                time.sleep(HID_SETTLE)  # let the node get its permissions (udev rules)
                while monitor.poll(timeout=0) is not None:
                    pass
            except Exception as err:  # noqa: BLE001 - udev went away: fall back to polling
                log.info("udev monitor failed (%s): HID keys are looked for by polling", err)
                monitor = None
            self._list()

    def _list(self) -> None:
        try:
            self._publish({HID_PREFIX + path for path in self.list_paths()})
        except Exception as err:  # noqa: BLE001 - a device vanishing while listed
            log.debug("HID watch: %s", err)


class PlugPins:
    """The PINs typed during one plug event, so that several vaults on the same card ask once.

    Keyed by the prompt, which names the token and its application (a FIDO2 PIN is not a PIV
    PIN). Held only while the agent works through the vaults of that plug event, then wiped;
    a PIN the token refused is forgotten at once, so it is never sent again."""

    def __init__(self) -> None:
        self._pins: dict[str, bytearray] = {}

    def get(self, prompt: str) -> bytearray | None:
        pin = self._pins.get(prompt)
        return bytearray(pin) if pin is not None else None

    def keep(self, prompt: str, pin: bytearray) -> None:
        self.forget(prompt)
        self._pins[prompt] = bytearray(pin)

    def forget(self, prompt: str) -> None:
        old = self._pins.pop(prompt, None)
        if old is not None:
            old[:] = bytes(len(old))

    def wipe(self) -> None:
        for prompt in list(self._pins):
            self.forget(prompt)


class KeyDiskWatcher(_Watcher):
    """Reports ("added" | "removed", "disk:UUID") for filesystems being mounted and unmounted.

    The kernel marks /proc/self/mountinfo readable-with-priority (POLLPRI) whenever the mount
    table changes; the watcher waits for that (the timeout only lets it notice stop()) and then
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
        import select

        try:
            table = open(MOUNTINFO, "rb")  # noqa: SIM115 - held for the thread's life
        except OSError as err:
            log.info("no mount table (%s): key disks are not watched", err)
            return
        with table:
            poller = select.poll()
            poller.register(table.fileno(), select.POLLPRI | select.POLLERR)
            while not self._stop.is_set():
                table.seek(0)
                table.read()  # the event is re-armed by reading the table
                try:
                    mounted = self.list_uuids()
                    self._publish({DISK_PREFIX + uuid for uuid in mounted & self.wanted()} if mounted else set())
                except Exception as err:  # noqa: BLE001 - a device vanishing while listed
                    log.debug("key disk watch: %s", err)
                while not self._stop.is_set() and not poller.poll(int(HID_POLL * 1000)):
                    pass
                time.sleep(HID_SETTLE)  # udev may still be making the by-uuid link


def key_disks(store: VaultStore) -> set[str]:
    """The filesystem UUIDs that key-file slots of the vaults in ``store`` name."""
    load_factor_types()
    found: set[str] = set()
    for name in store.list():
        try:
            vault = store.load(name)
        except Exception as err:  # noqa: BLE001 - a damaged vault is reported when it is used
            log.debug("vault %s not read for key disks: %s", name, err)
            continue
        for slot in vault.slots:
            for factor in slot.factors:
                uuid = getattr(factor, "disk_uuid", lambda: None)()
                if uuid:
                    found.add(uuid)
    return found


class AgentInteraction(Interaction):
    """The agent has no terminal: PINs come from pinentry (if configured); notices become events."""

    def __init__(self, emit: Callable[..., None], vault: str, reader: str, pinentry: Pinentry | None = None,
                 pins: PlugPins | None = None) -> None:
        self.emit, self.vault, self.reader, self.pinentry, self.pins = emit, vault, reader, pinentry, pins
        self.asked: list[str] = []  # the prompts answered in this unlock (forgotten if a PIN is refused)

    def ask_secret(self, request: SecretRequest) -> bytearray:
        if request.kind != "pin" or self.pinentry is None:
            raise NotMine(f"a {request.kind} is needed: run 'tokenagent unlock {self.vault}'")
        self.asked.append(request.prompt)
        kept = self.pins.get(request.prompt) if self.pins is not None else None
        if kept is not None:
            return kept  # typed for another vault of this card in this plug event
        self.emit("pin", vault=self.vault, reader=self.reader)
        tries = f" ({request.retries} tries left)" if request.retries is not None else ""
        pin = self.pinentry.ask(f"tokenagent: unlock vault '{self.vault}'\n{request.prompt}{tries}")
        if self.pins is not None:
            self.pins.keep(request.prompt, pin)
        return pin

    def forget_refused(self) -> None:
        if self.pins is not None:
            for prompt in self.asked:
                self.pins.forget(prompt)

    def notify(self, event: str, message: str) -> None:
        if event == "touch":
            self.emit("touch", vault=self.vault, reader=self.reader, message=message)


def plug_slots(slots: tuple[Slot, ...], with_pin: bool = False, reader: str = "") -> list[str]:
    """Slots that open with the plugged token alone (a touch at most; a PIN too when pinentry can
    ask for it): each factor type says whether it can (``Factor.opens_unattended``). For a key
    disk ("disk:UUID"): the slots made only of key files on that filesystem (``disk_uuid``)."""
    if reader.startswith(DISK_PREFIX):
        uuid = reader[len(DISK_PREFIX):]
        return [slot.id for slot in slots if slot.factors and all(
            getattr(f, "disk_uuid", lambda: None)() == uuid for f in slot.factors)]
    return [slot.id for slot in slots if slot.factors and all(f.opens_unattended(with_pin) for f in slot.factors)]


# Failures a second try cannot undo: it would ask a person again (PIN, touch) or override a no.
FINAL = (PinInvalid, PinBlocked, PinLastTry, PinRequired, PinAuthBlocked, TouchTimeout, Cancelled, VaultError)
RETRY = "retry"


def open_with_token(store: VaultStore, vault_name: str, reader: str, emit: Callable[..., None],
                    touch_timeout: float = 30.0, pinentry: Pinentry | None = None,
                    pins: PlugPins | None = None) -> tuple[str, bytearray] | str | None:
    """Try VAULT's plug slots with the token in ``reader`` (runs in a worker thread): the slot and
    key; None if they do not open; RETRY if that may change once the token has settled. ``pins``:
    the PINs already typed in this plug event."""
    load_factor_types()  # before the vault is parsed, so its token factors are known
    ui = AgentInteraction(emit, vault_name, reader, pinentry, pins)
    try:
        return _open_once(store, vault_name, reader, ui, touch_timeout, pinentry)
    except FINAL as err:
        if isinstance(err, PinInvalid | PinBlocked | PinAuthBlocked | PinLastTry):
            ui.forget_refused()  # never sent again, to this vault or another
        log.info("vault %s not opened with the token in %s: %s", vault_name, reader, err.message)
        return None
    except Exception as err:  # noqa: BLE001 - not answering yet, pulled out mid-way, a PC/SC failure
        why = err.message if isinstance(err, TokenAgentError) else type(err).__name__
        log.info("vault %s not opened with the token in %s: %s", vault_name, reader, why)
        return RETRY


def _open_once(store: VaultStore, vault_name: str, reader: str, ui: AgentInteraction, touch_timeout: float,
               pinentry: Pinentry | None) -> tuple[str, bytearray] | None:
    vault = store.load(vault_name)
    slot_ids = plug_slots(vault.slots, with_pin=pinentry is not None, reader=reader)
    if not slot_ids:
        return None
    ctx = FactorContext(ui=ui, devices=ReaderDevices(reader), options={"touch_timeout": touch_timeout})
    result = unlock(vault, ctx, slot_ids)
    try:
        roll_forward(store, vault_name, vault, result)  # rolling OTP challenges
    except TokenAgentError as err:  # the old wrap still opens
        log.warning("vault %s: rolling challenge not renewed: %s", vault_name, err.message)
    return result.slot_id, result.masterkey
