"""Finding tokens: one place that knows how to reach every device type.

``default_provider()`` is what the CLI and the agent hand to factors as
``FactorContext.devices``. Smart cards (kinds "otp" and "piv": YubiKeys' OTP and PIV
applications, any PIV card) are reached over PC/SC; YubiKeys whose OTP application is
reachable only over USB HID (CCID turned off) are added for kind "otp" through yubikit's
``OtpConnection`` (no test machine has one: that path runs on real keys only).
FIDO2 keys are found over HID (``CtapHidDevice``) and over PC/SC
(``CtapPcscDevice``: any reader, so NFC readers, smart-card readers and the virtual token
behind vpcd all count). ``describe_devices()`` is ``tokenagent devices``: FIDO2 keys, PIV
applications (version, PIN tries left, decryption keys in 9d and 82-95) and YubiKey OTP
applications (configured slots), and the tokens of the PKCS#11 modules named (label, maker,
PIN flags), all read without spending a PIN try.

Serial numbers: HID keys report theirs (a YubiKey without a USB serial string answers it to
READ CONFIG on its FIDO interface); over PC/SC the serial is read from the YubiKey
management applet (yubikit's ``ManagementSession``), which the virtual token has too; keys
of other makers have none there, and ``--serial`` then matches nothing: touch the key to
choose it instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
HID_PREFIX = "hid:"  # a token named by its hidraw path
PNP = "\\\\?PnP?\\Notification"  # pcsc-lite's pseudo-reader: readers plugged in or out
SETTLE_ATTEMPTS = 10  # a card just inserted may be reset by pcscd once more
SETTLE_DELAY = 0.3


class SystemDevices:
    """Devices of this machine, opened on demand; the caller closes them."""

    def connections(self, kind: str, serial: int | None = None) -> Iterator[Any]:
        if kind in ("otp", "piv"):
            yield from _smartcard_devices(serial, kind)
            return
        if kind != "fido2":
            return
        for device in _fido2_devices():
            if serial is not None and device_serial(device) != serial:
                device.close()
                continue
            yield device


def device_serial(device: Any) -> int | None:
    """A FIDO2 device's serial as a number: PC/SC devices carry the management applet's, HID
    devices their USB serial string (a YubiKey's is its serial when it reports one). A YubiKey
    over USB shows none by default: its FIDO interface answers the device information (yubikit's
    READ CONFIG, a CTAPHID vendor command), which carries the serial."""
    value = getattr(device, "serial_number", None)
    try:
        if value not in (None, ""):
            return int(value)
    except (TypeError, ValueError):
        return None
    return _yubikey_hid_serial(device)


YUBICO_VID = 0x1050
CTAPHID_READ_CONFIG = 0x42  # yubikit.management's CTAP_READ_CONFIG: CTAPHID vendor command 0x40 + 2


def _yubikey_hid_serial(device: Any) -> int | None:
    descriptor = getattr(device, "descriptor", None)
    if getattr(descriptor, "vid", None) != YUBICO_VID or not hasattr(device, "call"):
        return None
    cached = getattr(device, "_tokenagent_serial", False)
    if cached is not False:
        return cached  # type: ignore[no-any-return]
    serial: int | None = None
    try:
        from yubikit.core import Version
        from yubikit.management import DeviceInfo

        info = DeviceInfo.parse(device.call(CTAPHID_READ_CONFIG, b"\0"), Version(*device.device_version))
        serial = info.serial
    except Exception as err:  # noqa: BLE001 - an older key, or another firmware: no serial then
        log.debug("no serial over READ CONFIG: %s", err)
    with contextlib.suppress(AttributeError):
        device._tokenagent_serial = serial
    return serial


def _fido2_devices() -> Iterator[Any]:
    try:
        from fido2.hid import CtapHidDevice

        yield from CtapHidDevice.list_devices()
    except Exception as err:  # noqa: BLE001 - no hidraw access, no HID backend
        log.debug("no HID FIDO2 devices: %s", err)
    for reader in _pcsc_readers():
        device = pcsc_fido2_device(reader)
        if device is not None:
            yield device


def _smartcard_devices(serial: int | None, kind: str = "piv") -> Iterator[Any]:
    """The cards in PC/SC readers (the OTP and PIV factors open their sessions on them); for
    kind "otp" also YubiKeys whose OTP application is reached over USB HID only."""
    seen: set[int] = set()
    for reader in _pcsc_readers():
        reader_serial = pcsc_serial(reader)
        if serial is not None and reader_serial != serial:
            continue
        device = _smartcard(reader, reader_serial)
        if device is None:
            continue
        if reader_serial is not None:
            seen.add(reader_serial)
        yield device
    if kind == "otp":
        yield from _otp_hid_devices(serial, seen)


def _otp_hid_devices(serial: int | None, seen: set[int]) -> Iterator[Any]:
    """YubiKeys' OTP applications over USB HID (yubikit's OtpConnection), but not the keys
    already found over PC/SC (a USB YubiKey offers both interfaces)."""
    from .drivers.smartcard import SmartCardDevice

    try:
        from ykman.device import list_otp_devices
        from yubikit.core.otp import OtpConnection
        from yubikit.support import read_info

        hid_devices = list(list_otp_devices())
    except Exception as err:  # noqa: BLE001 - no HID backend, no hidraw access
        log.debug("no OTP HID devices: %s", err)
        return
    for hid in hid_devices:
        try:
            connection = hid.open_connection(OtpConnection)
        except Exception as err:  # noqa: BLE001 - gone, or no permission
            log.debug("cannot open %s: %s", hid, err)
            continue
        try:
            hid_serial = read_info(connection, hid.pid).serial
        except Exception:  # noqa: BLE001 - serial not readable over OTP on older keys
            hid_serial = None
        if (serial is not None and hid_serial != serial) or (hid_serial is not None and hid_serial in seen):
            connection.close()
            continue
        yield SmartCardDevice(connection, f"YubiKey over USB HID ({hid.fingerprint})", hid_serial)


def pcsc_fido2_device(reader: Any) -> Any | None:
    """The FIDO2 device in a PC/SC reader (None: no card, or no FIDO2 applet), with its serial."""
    serial = pcsc_serial(reader)
    try:
        return _serial_pcsc_class()(reader.createConnection(), str(reader), serial)
    except Exception as err:  # noqa: BLE001 - no card, not FIDO2, card being reset
        log.debug("no FIDO2 device in %s: %s", reader, err)
        return None


def pcsc_serial(reader: Any) -> int | None:
    """The serial a YubiKey (or the virtual token) reports through its management applet."""
    try:
        from ykman.pcsc import ScardSmartCardConnection
        from yubikit.management import ManagementSession

        connection = ScardSmartCardConnection(reader.createConnection())
        try:
            return ManagementSession(connection).read_device_info().serial
        finally:
            connection.close()
    except Exception:  # noqa: BLE001 - not a YubiKey, no card, no management applet
        return None


_SERIAL_CLASS: Any = None


def _serial_pcsc_class() -> Any:
    """``CtapPcscDevice`` that knows the serial read from the management applet."""
    global _SERIAL_CLASS
    if _SERIAL_CLASS is None:
        from fido2.pcsc import CtapPcscDevice

        class SerialCtapPcscDevice(CtapPcscDevice):  # type: ignore[misc]
            def __init__(self, connection: Any, name: str, serial: int | None) -> None:
                self._serial = serial
                self.reader = name  # for its human name (drivers.fido2.device_name)
                super().__init__(connection, name)

            @property
            def serial_number(self) -> int | None:
                return self._serial

        _SERIAL_CLASS = SerialCtapPcscDevice
    return _SERIAL_CLASS


def serial_pcsc_device(connection: Any, name: str, serial: int | None) -> Any:
    return _serial_pcsc_class()(connection, name, serial)


def _pcsc_readers() -> list[Any]:
    """pyscard's readers ([] when pcscd is not running or pyscard is missing)."""
    try:
        from smartcard.System import readers

        return list(readers())
    except Exception as err:  # noqa: BLE001 - no pcscd, no pyscard
        log.debug("no PC/SC readers: %s", err)
        return []


def pcsc_readers() -> list[str]:
    """The names of the PC/SC readers pcscd knows now."""
    return [str(r) for r in _pcsc_readers()]


def describe_devices(pkcs11_modules: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every token present, with what can be read without spending a PIN try (PKCS#11 tokens of
    the modules named)."""
    from fido2.ctap2 import Ctap2
    from fido2.ctap2.pin import ClientPin

    from .drivers.fido2 import device_name

    out: list[dict[str, Any]] = []
    for device in SystemDevices().connections("fido2"):
        entry: dict[str, Any] = {"type": "fido2", "name": device_name(device),
                                 "serial": device_serial(device),
                                 "transport": "pcsc" if type(device).__name__.endswith("PcscDevice") else "hid"}
        try:
            ctap = Ctap2(device)
            info = ctap.info
            entry.update(versions=list(info.versions), aaguid=str(info.aaguid), extensions=list(info.extensions),
                         hmac_secret="hmac-secret" in info.extensions,
                         pin_set=bool(info.options.get("clientPin")))
            if info.options.get("clientPin"):
                entry["pin_retries"] = ClientPin(ctap).get_pin_retries()[0]
        except Exception as err:  # noqa: BLE001 - a device that does not answer CTAP2
            entry["error"] = str(err) or type(err).__name__
        finally:
            device.close()
        out.append(entry)
    out.extend(_describe_smartcards())
    for module in pkcs11_modules:
        out.extend(_describe_pkcs11(module))
    return out


def _describe_pkcs11(module: str) -> list[dict[str, Any]]:
    """The tokens of a PKCS#11 module, with their PIN state flags (reading them spends nothing)."""
    try:
        import pkcs11
        from pkcs11 import TokenFlag

        slots = pkcs11.lib(module).get_slots(token_present=True)
    except Exception as err:  # noqa: BLE001 - missing file, not a PKCS#11 module, module refusing
        return [{"type": "pkcs11", "name": module, "module": module, "serial": None,
                 "error": f"cannot load the module: {err or type(err).__name__}"}]
    out: list[dict[str, Any]] = []
    for slot in slots:
        try:
            token = slot.get_token()
            flags = TokenFlag(token.flags)
            serial = token.serial.decode("ascii", "replace").strip() if isinstance(token.serial, bytes) \
                else str(token.serial).strip()
            out.append({"type": "pkcs11", "name": token.label, "module": module, "serial": serial or None,
                        "transport": "pkcs11", "manufacturer": token.manufacturer_id, "model": token.model,
                        "pin_count_low": TokenFlag.USER_PIN_COUNT_LOW in flags,
                        "pin_final_try": TokenFlag.USER_PIN_FINAL_TRY in flags,
                        "pin_locked": TokenFlag.USER_PIN_LOCKED in flags})
        except Exception as err:  # noqa: BLE001 - a token removed while listed
            log.debug("PKCS#11 slot of %s: %s", module, err)
    return out


def _describe_smartcards() -> list[dict[str, Any]]:
    """PIV applications and YubiKey OTP applications on the cards in PC/SC readers."""
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import SLOT, PivSession
    from yubikit.yubiotp import SLOT as OTP_SLOT
    from yubikit.yubiotp import YubiOtpSession

    out: list[dict[str, Any]] = []
    for device in SystemDevices().connections("otp"):  # every card, and OTP-only HID YubiKeys
        try:
            transport = "pcsc" if isinstance(device.connection, SmartCardConnection) else "hid"
            base = {"name": device.name, "serial": device.serial, "transport": transport}
            try:
                if not isinstance(device.connection, SmartCardConnection):
                    raise TypeError("not a smart card (OTP over USB HID)")
                piv = PivSession(device.connection)
                keys = []
                for slot in [SLOT.KEY_MANAGEMENT, *(SLOT(n) for n in range(0x82, 0x96))]:
                    try:
                        keys.append({"slot": f"{int(slot):02x}", "algorithm": piv.get_slot_metadata(slot).key_type.name})
                    except Exception:  # noqa: BLE001 - empty slot, or no metadata before firmware 5.3
                        continue
                out.append({"type": "piv", **base, "version": str(piv.version),
                            "pin_retries": piv.get_pin_attempts(), "decryption_keys": keys})
            except Exception as err:  # noqa: BLE001 - no PIV application on this card
                log.debug("no PIV application in %s: %s", device.name, err)
            try:
                state = YubiOtpSession(device.connection).get_config_state()
                slots = [{"slot": int(n), "touch": bool(state.is_touch_triggered(n))}
                         for n in (OTP_SLOT.ONE, OTP_SLOT.TWO) if state.is_configured(n)]
                out.append({"type": "otp", **base, "configured_slots": slots})
            except Exception as err:  # noqa: BLE001 - no OTP application on this card
                log.debug("no OTP application in %s: %s", device.name, err)
        finally:
            device.close()
    return out


class PcscCardEvents:
    """pcscd's view of which readers hold a card, one blocking look at a time (pyscard's SCard calls).

    ``wait`` blocks in SCardGetStatusChange until a reader's state differs from the last one seen;
    pcsc-lite's pseudo-reader ``PNP`` in the list makes a reader plugged in or out a change too.
    A card's event count (the state's upper 16 bits) tells a card pulled out and put back between
    two looks. ``cancel`` (from another thread) ends a wait; after an error, ``reset`` forgets the
    context so that ``connect`` makes a new one (pcscd restarted)."""

    def __init__(self, scard: Any) -> None:
        self.scard = scard
        self.context: Any = None
        self.known: dict[str, int] = {}  # reader -> last event state
        self.pnp_state = scard.SCARD_STATE_UNAWARE
        self._readers: list[str] = []

    @classmethod
    def open(cls) -> PcscCardEvents | None:
        """None without pyscard."""
        try:
            from smartcard import scard
        except ImportError:
            return None
        return cls(scard)

    def connect(self) -> bool:
        """A context with pcscd (False: pcscd is not there)."""
        if self.context is None:
            rc, context = self.scard.SCardEstablishContext(self.scard.SCARD_SCOPE_USER)
            if rc != self.scard.SCARD_S_SUCCESS:
                return False
            self.context = context
        return True

    def readers(self) -> list[str]:
        """The readers pcscd has now (an OSError when pcscd went away)."""
        scard = self.scard
        rc, readers = scard.SCardListReaders(self.context, [])
        if rc in (scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED):
            raise OSError("pcscd went away")
        self._readers = list(readers) if rc == scard.SCARD_S_SUCCESS else []
        if not self._readers:
            self.known = {}
        return self._readers

    def wait(self, present: set[str]) -> tuple[set[str], set[str]] | None:
        """Block until something changes in the readers last listed: (readers holding a card,
        those of ``present`` whose card went out and in again); None when nothing did."""
        scard = self.scard
        watched = [(r, self.known.get(r, scard.SCARD_STATE_UNAWARE)) for r in self._readers]
        rc, states = scard.SCardGetStatusChange(self.context, scard.INFINITE, [*watched, (PNP, self.pnp_state)])
        if rc in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
            return None
        if rc != scard.SCARD_S_SUCCESS:
            raise OSError(f"SCardGetStatusChange: {scard.SCardGetErrorMessage(rc)}")
        now, reinserted = set(), set()
        for reader, state, _ in states:
            if reader == PNP:
                self.pnp_state = state & ~scard.SCARD_STATE_CHANGED
                continue
            before = self.known.get(reader)
            if state & scard.SCARD_STATE_PRESENT and not state & scard.SCARD_STATE_MUTE:
                now.add(reader)
                if before is not None and before >> 16 != state >> 16 and reader in present:
                    reinserted.add(reader)  # out and in again between two looks
            self.known[reader] = state & ~scard.SCARD_STATE_CHANGED
        return now, reinserted

    def cancel(self) -> None:
        context = self.context
        if context is not None:
            try:
                self.scard.SCardCancel(context)
            except Exception as err:  # noqa: BLE001 - the context went away meanwhile: nothing to cancel
                log.debug("reader watch cancel: %s", err)

    def reset(self) -> None:
        context, self.context = self.context, None
        self.known = {}
        if context is not None:
            with contextlib.suppress(Exception):
                self.scard.SCardReleaseContext(context)


FIDO_USAGE_PAGE = (b"\x06\xd0\xf1", b"\x07\xd0\xf1\x00\x00")  # Usage Page (0xF1D0), 2- or 4-byte item
SYS_HIDRAW = "/sys/class/hidraw"


def _fido_hid_possible() -> bool:
    """Whether a hidraw device may be a FIDO key: its report descriptor (sysfs, readable without
    opening the device) holds the FIDO usage page item. A look before python-fido2 (and cryptography
    with it) is imported: an agent on a machine with a keyboard and a mouse but no key stays small.
    python-fido2's parser decides; this only skips it when no device could match."""
    try:
        names = os.listdir(SYS_HIDRAW)
    except OSError:
        return os.path.isdir("/dev") and any(n.startswith("hidraw") for n in os.listdir("/dev"))
    for name in names:
        try:
            with open(os.path.join(SYS_HIDRAW, name, "device", "report_descriptor"), "rb") as f:
                descriptor = f.read()
        except OSError:
            return True  # cannot tell: python-fido2 looks
        if any(item in descriptor for item in FIDO_USAGE_PAGE):
            return True
    return False


def is_fido_hid(path: str) -> bool:
    """Whether the hidraw node ``path`` (a udev event's) is a FIDO key this user can open, decided
    as python-fido2's listing decides (its report descriptor parser: the FIDO usage page and usage)
    but from sysfs, without opening the node: an open and close are work for the key (and for a
    keyboard, nothing is imported)."""
    try:
        with open(os.path.join(SYS_HIDRAW, os.path.basename(path), "device", "report_descriptor"), "rb") as f:
            descriptor = f.read()
    except OSError:
        return _opens_as_fido(path)  # no sysfs entry to read: python-fido2 opens the node and looks
    if not any(item in descriptor for item in FIDO_USAGE_PAGE):
        return False
    from fido2.hid.base import parse_report_descriptor

    try:
        parse_report_descriptor(descriptor)
    except ValueError:
        return False  # the usage page, but not the FIDO usage
    return os.access(path, os.R_OK | os.W_OK)


def _opens_as_fido(path: str) -> bool:
    try:
        from fido2.hid import get_descriptor

        get_descriptor(path)
        return True
    except Exception as err:  # noqa: BLE001 - not a FIDO device, gone again, no permission
        log.debug("HID device %s is not a FIDO key this user can open: %s", path, err)
        return False


def fido_hid_paths() -> list[str]:
    """The hidraw paths of the FIDO keys this user can open ([] without any, or without access)."""
    if not _fido_hid_possible():
        return []
    try:
        from fido2.hid import list_descriptors

        return sorted(str(d.path) for d in list_descriptors())
    except Exception as err:  # noqa: BLE001 - no hidraw, no permission, no HID backend
        log.debug("no HID FIDO keys: %s", err)
        return []


UDEV_CONTROL = "/run/udev/control"  # systemd-udevd's socket: udev events come only while it runs


def udev_running() -> bool:
    return os.path.exists(UDEV_CONTROL)


def udev_hidraw_monitor() -> Any | None:
    """A started pyudev monitor of the hidraw subsystem, or None (no pyudev, or no udev daemon:
    a monitor would then stay silent, so the caller polls)."""
    if not udev_running():
        log.info("udev is not running (no %s): HID keys are looked for by polling", UDEV_CONTROL)
        return None
    try:
        import pyudev

        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by("hidraw")
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 - no pyudev, no netlink access, no udev
        log.info("udev is not available (%s): HID keys are looked for by polling", err)
        return None


class ReaderDevices:
    """A device provider limited to one token: the one in a PC/SC reader, or (``hid:PATH``) the
    FIDO key on a hidraw device; the agent's plug-in unlock uses it for the token that just arrived."""

    def __init__(self, reader: str) -> None:
        self.reader = reader

    def connections(self, kind: str, serial: int | None = None) -> Iterator[Any]:
        if self.reader.startswith(HID_PREFIX):
            if kind == "fido2":
                yield from self._hid_device(serial)
            return
        if kind not in ("fido2", "otp", "piv"):
            return
        from smartcard.System import readers

        for reader in readers():
            if str(reader) != self.reader:
                continue
            for attempt in range(SETTLE_ATTEMPTS):  # a card just inserted may be reset by pcscd once more
                device = pcsc_fido2_device(reader) if kind == "fido2" else _smartcard(reader, pcsc_serial(reader))
                if device is None:
                    log.debug("token in %s not ready, attempt %d", self.reader, attempt + 1)
                    time.sleep(SETTLE_DELAY)
                    continue
                found = device.serial_number if kind == "fido2" else device.serial
                if serial is None or found == serial:
                    yield device
                else:
                    device.close()
                break

    def _hid_device(self, serial: int | None) -> Iterator[Any]:
        from fido2.hid import open_device

        for attempt in range(SETTLE_ATTEMPTS):  # udev may still be setting the node's permissions
            try:
                device = open_device(self.reader[len(HID_PREFIX):])
            except Exception as err:  # noqa: BLE001 - gone, or not yet accessible
                log.debug("HID key %s not ready, attempt %d: %s", self.reader, attempt + 1, err)
                time.sleep(SETTLE_DELAY)
                continue
            if serial is None or device_serial(device) == serial:
                yield device
            else:
                device.close()
            return


def pcsc_gone() -> tuple[type[BaseException], ...]:
    """The exceptions of a PC/SC connection that mean the card or its reader went away (pyscard's)."""
    try:
        from smartcard.Exceptions import SmartcardException
    except ImportError:
        return (OSError,)
    return (OSError, SmartcardException)


def _smartcard(reader: Any, serial: int | None) -> Any | None:
    """The card in ``reader`` for the OTP and PIV factors (None: no card yet)."""
    from ykman.pcsc import ScardSmartCardConnection

    from .drivers.smartcard import SmartCardDevice

    try:
        return SmartCardDevice(ScardSmartCardConnection(reader.createConnection()), str(reader), serial, pcsc_gone())
    except Exception as err:  # noqa: BLE001 - no card, card being reset
        log.debug("no card in %s: %s", reader, err)
        return None


def default_provider() -> SystemDevices:
    return SystemDevices()


# --- key disks: filesystems named by UUID (udev's /dev/disk/by-uuid links) -------------------

BY_UUID = "/dev/disk/by-uuid"
MOUNTINFO = "/proc/self/mountinfo"


def _mounts() -> dict[str, str]:
    """Mounted block filesystems: "major:minor" -> the first mount point (mountinfo order)."""
    out: dict[str, str] = {}
    try:
        with open(MOUNTINFO) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                    out.setdefault(fields[2], point)
    except OSError as err:
        log.debug("no mount table: %s", err)
    return out


def _uuid_devices() -> dict[str, str]:
    """Filesystem UUID (lower case) -> "major:minor" of its block device."""
    out: dict[str, str] = {}
    try:
        names = os.listdir(BY_UUID)
    except OSError:
        return out
    for name in names:
        try:
            rdev = os.stat(os.path.join(BY_UUID, name)).st_rdev
        except OSError:
            continue
        out[name.lower()] = f"{os.major(rdev)}:{os.minor(rdev)}"
    return out


def filesystem_mount(uuid: str) -> str | None:
    """Where the filesystem with ``uuid`` is mounted (None: absent or not mounted)."""
    device = _uuid_devices().get(uuid.lower())
    return _mounts().get(device) if device else None


def mounted_filesystems() -> set[str]:
    """The UUIDs of the mounted filesystems udev knows."""
    mounts = _mounts()
    return {uuid for uuid, device in _uuid_devices().items() if device in mounts}
