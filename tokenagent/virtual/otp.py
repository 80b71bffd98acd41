"""The virtual token's OTP applet: two slots of stored configurations, HMAC-SHA1
challenge-response answered.

What yubikit's ``YubiOtpSession`` (``ykman otp ...``) drives over a smart-card connection
(AID A0000005272001):

* SELECT answers the status: version (3 bytes), programming sequence, touch level (2 bytes,
  little endian: bit 0/1 slot 1/2 configured, bit 2/3 slot 1/2 needs a touch). A slot in a
  keyboard mode (Yubico OTP, static password, OATH-HOTP) is set off by a touch, so it has the
  touch bit; a challenge-response slot has it when programmed with CHAL_BTN_TRIG.
* INS 01, P1 = 01 / 03: write slot 1 / 2: a 52-byte configuration (fixed, uid, key, access
  code, ext/tkt/cfg flags, CRC) and the current access code. Every mode is kept as written:
  Yubico OTP, static password (and static ticket), OATH-HOTP, challenge-response with HMAC-SHA1
  or Yubico OTP; the mode is read from the flags as ykpers defines them. A wrong CRC or access
  code is refused; an all-zero configuration deletes the slot. Success answers the new status
  with the sequence incremented.
* P1 = 04 / 05: update slot 1 / 2 (``ykman otp settings``): only a slot programmed with
  ALLOW_UPDATE; the new ext flags, the updatable tkt/cfg flags (tabs, delays, CR, pacing) and
  the access code replace the stored ones, the secret stays (a challenge-response slot keeps
  its cfg flags: there the pacing bits mean HMAC_LT64 and CHAL_BTN_TRIG).
* P1 = 06: swap the two slots (with their access codes).
* P1 = 08 / 09: the NDEF record of slot 1 / 2 (``ykman otp ndef``): type URI or text, kept.
* P1 = 30 / 38: HMAC-SHA1 of the challenge with the slot's key (with the HMAC_LT64 flag,
  trailing bytes equal to the last one are padding and dropped); a slot programmed with
  CHAL_BTN_TRIG waits for a touch.
* P1 = 10: the serial number; INS 03: the status.

Stored, but not produced: the keyboard output of the keyboard modes (no HID keyboard here)
and the Yubico OTP challenge-response answer (P1 20/28: "function not supported"), the NDEF
tag's content. Device configuration and scan maps (P1 11, 12) are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable

from .card import (
    SW_CONDITIONS_NOT_SATISFIED,
    SW_FUNCTION_NOT_SUPPORTED,
    SW_INS_NOT_SUPPORTED,
    SW_SECURITY_STATUS_NOT_SATISFIED,
    SW_WRONG_LENGTH,
    Apdu,
    ApduStatus,
    Applet,
    Presence,
)

AID = bytes.fromhex("A0000005272001")
INS_CONFIG = 0x01
INS_STATUS = 0x03
CONFIG_SLOTS = {0x01: 1, 0x03: 2}
UPDATE_SLOTS = {0x04: 1, 0x05: 2}
SWAP = 0x06
NDEF_SLOTS = {0x08: 1, 0x09: 2}
CHAL_HMAC_SLOTS = {0x30: 1, 0x38: 2}
DEVICE_SERIAL = 0x10
CONFIG_SIZE = 52
ACC_CODE_SIZE = 6
NDEF_SIZE = 56  # length, type, 54 bytes of data
TKT_CHAL_RESP = 0x40  # = TKT_OATH_HOTP: the cfg flags tell them apart
CFG_CHAL_YUBICO = 0x20  # = CFG_STATIC_TICKET outside challenge-response
CFG_CHAL_HMAC = 0x22
CFG_SHORT_TICKET = 0x02
CFG_HMAC_LT64 = 0x04
CFG_CHAL_BTN_TRIG = 0x08
EXT_ALLOW_UPDATE = 0x20
TKT_UPDATE_MASK = 0x3F  # tabs, delays, CR
CFG_UPDATE_MASK = 0x0C  # pacing
CRC_OK_RESIDUAL = 0xF0B8
TOUCH_TIMEOUT = 15.0


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def slot_mode(tkt: int, cfg: int) -> str:
    """The mode a configuration's flags select (ykpers: ykdef.h)."""
    if tkt & TKT_CHAL_RESP:
        if cfg & CFG_CHAL_HMAC == CFG_CHAL_HMAC:
            return "challenge-response-hmac-sha1"
        if cfg & CFG_CHAL_YUBICO:
            return "challenge-response-yubico-otp"
        return "oath-hotp"
    if cfg & CFG_CHAL_YUBICO:
        return "static-ticket"
    if cfg & CFG_SHORT_TICKET:
        return "static-password"
    return "yubico-otp"


class OtpApplet(Applet):
    aid = AID
    name = "OTP"
    state_key = "otp"

    def __init__(self, presence: Presence, serial: int, version: tuple[int, int, int]) -> None:
        super().__init__()
        self.presence, self.serial, self.version = presence, serial, version
        # slot -> {"mode", "config" (b64, 52 bytes as written), "acc" (b64 or ""), "touch": bool,
        #          and for HMAC-SHA1: "key" (b64, 20 bytes), "lt64": bool}
        self.slots: dict[int, dict[str, object]] = {}
        self.ndef: dict[int, str] = {}  # slot -> b64 of the 56-byte NDEF configuration
        self.prog_seq = 0

    def state_dict(self) -> dict[str, object]:
        return {"slots": {str(k): v for k, v in self.slots.items()}, "prog_seq": self.prog_seq,
                "ndef": {str(k): v for k, v in self.ndef.items()}}

    def load_state(self, state: dict[str, object]) -> None:
        self.slots = {int(k): dict(v) for k, v in dict(state.get("slots", {})).items()}  # type: ignore[call-overload]
        self.prog_seq = int(state.get("prog_seq", 0))  # type: ignore[call-overload]
        self.ndef = {int(k): str(v) for k, v in dict(state.get("ndef", {})).items()}  # type: ignore[call-overload]

    def status(self) -> bytes:
        touch_level = 0
        for slot, config in self.slots.items():
            touch_level |= 0x01 if slot == 1 else 0x02
            if config.get("touch"):
                touch_level |= 0x04 if slot == 1 else 0x08
        return bytes(self.version) + bytes([self.prog_seq]) + struct.pack("<H", touch_level)

    def select(self, p2: int) -> bytes:
        return self.status()

    def process(self, apdu: Apdu) -> bytes:
        if apdu.ins == INS_STATUS:
            return self.status()
        if apdu.ins != INS_CONFIG:
            raise ApduStatus(SW_INS_NOT_SUPPORTED)
        if apdu.p1 in CONFIG_SLOTS:
            return self._write(CONFIG_SLOTS[apdu.p1], apdu.data, self._configure)
        if apdu.p1 in UPDATE_SLOTS:
            return self._write(UPDATE_SLOTS[apdu.p1], apdu.data, self._update)
        if apdu.p1 in NDEF_SLOTS:
            return self._ndef(NDEF_SLOTS[apdu.p1], apdu.data)
        if apdu.p1 == SWAP:
            self.slots = {3 - slot: config for slot, config in self.slots.items()}
            return self._written()
        if apdu.p1 in CHAL_HMAC_SLOTS:
            return self._hmac(CHAL_HMAC_SLOTS[apdu.p1], apdu.data)
        if apdu.p1 == DEVICE_SERIAL:
            return self.serial.to_bytes(4, "big")
        raise ApduStatus(SW_FUNCTION_NOT_SUPPORTED)

    def _written(self) -> bytes:
        self.prog_seq = (self.prog_seq + 1) & 0xFF
        self.changed()
        return self.status()

    def _check_access(self, slot: int, given: bytes) -> None:
        existing = self.slots.get(slot)
        if existing is not None and existing.get("acc"):
            if not hmac.compare_digest(base64.b64decode(str(existing["acc"])), given):
                raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)

    def _write(self, slot: int, data: bytes, apply: Callable[[int, bytes], None]) -> bytes:
        if len(data) != CONFIG_SIZE + ACC_CODE_SIZE:
            raise ApduStatus(SW_WRONG_LENGTH)
        config, current_acc = data[:CONFIG_SIZE], data[CONFIG_SIZE:]
        self._check_access(slot, current_acc)
        if config == bytes(CONFIG_SIZE):  # delete the slot
            self.slots.pop(slot, None)
        else:
            if crc16(config) != CRC_OK_RESIDUAL:
                raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
            apply(slot, config)
        return self._written()

    def _configure(self, slot: int, config: bytes) -> None:
        uid, key, acc = config[16:22], config[22:38], config[38:44]
        tkt, cfg = config[46], config[47]
        mode = slot_mode(tkt, cfg)
        entry: dict[str, object] = {"mode": mode, "config": base64.b64encode(config).decode(),
                                    "acc": base64.b64encode(acc).decode() if any(acc) else ""}
        if mode.startswith("challenge-response"):
            entry["touch"] = bool(cfg & CFG_CHAL_BTN_TRIG)
        else:
            entry["touch"] = True  # a keyboard mode: a touch sets it off
        if mode == "challenge-response-hmac-sha1":
            entry["key"] = base64.b64encode(key + uid[:4]).decode()
            entry["lt64"] = bool(cfg & CFG_HMAC_LT64)
        self.slots[slot] = entry

    def _update(self, slot: int, update: bytes) -> None:
        existing = self.slots.get(slot)
        stored = base64.b64decode(str(existing["config"])) if existing and "config" in existing else None
        if existing is None or stored is None or not stored[45] & EXT_ALLOW_UPDATE:
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)  # empty, or not programmed to allow updates
        ext = update[45]
        tkt = (stored[46] & ~TKT_UPDATE_MASK) | (update[46] & TKT_UPDATE_MASK)
        cfg = (stored[47] & ~CFG_UPDATE_MASK) | (update[47] & CFG_UPDATE_MASK)
        if str(existing["mode"]).startswith("challenge-response"):
            cfg = stored[47]  # there bits 04 and 08 are HMAC_LT64 and CHAL_BTN_TRIG, not pacing
        body = stored[:38] + update[38:44] + bytes([stored[44], ext, tkt, cfg]) + stored[48:50]
        self._configure(slot, body + struct.pack("<H", 0xFFFF & ~crc16(body)))

    def _ndef(self, slot: int, data: bytes) -> bytes:
        if len(data) != NDEF_SIZE + ACC_CODE_SIZE:
            raise ApduStatus(SW_WRONG_LENGTH)
        record, current_acc = data[:NDEF_SIZE], data[NDEF_SIZE:]
        self._check_access(slot, current_acc)
        if record[1] not in (ord("U"), ord("T")) or record[0] > NDEF_SIZE - 2:
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
        self.ndef[slot] = base64.b64encode(record).decode()
        return self._written()

    def _hmac(self, slot: int, challenge: bytes) -> bytes:
        config = self.slots.get(slot)
        if config is None or "key" not in config:
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
        if config.get("lt64") and challenge:
            challenge = challenge.rstrip(challenge[-1:])  # padding: the last byte, repeated
        if config.get("touch") and not self.presence.wait(TOUCH_TIMEOUT):
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
        return hmac.digest(base64.b64decode(str(config["key"])), challenge, hashlib.sha1)
