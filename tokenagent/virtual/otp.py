"""The virtual token's OTP applet: HMAC-SHA1 challenge-response in slots 1 and 2.

What yubikit's ``YubiOtpSession`` drives over a smart-card connection (AID A0000005272001):

* SELECT answers the status: version (3 bytes), programming sequence, touch level (2 bytes,
  little endian: slot 1/2 configured, slot 1/2 needs touch).
* INS 01 with P1 = 01 / 03 writes slot 1 / 2: a 52-byte configuration (fixed, uid, key,
  access code, flags, CRC) and the current access code. Only HMAC-SHA1 challenge-response
  configurations are taken (the 20-byte key is the 16-byte key field plus 4 bytes of uid);
  a wrong CRC or access code is refused. An empty configuration erases the slot. Success
  answers the new status with the sequence incremented.
* INS 01 with P1 = 30 / 38: HMAC-SHA1 of the challenge with the slot's key (with the
  HMAC_LT64 flag, trailing bytes equal to the last one are padding and dropped); a slot
  configured with CHAL_BTN_TRIG waits for a touch.
* INS 01 with P1 = 10: the serial number; INS 03: the status.

Other OTP modes (Yubico OTP, static passwords, OATH-HOTP), NDEF, swap and update are
refused with "function not supported".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

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
CHAL_HMAC_SLOTS = {0x30: 1, 0x38: 2}
DEVICE_SERIAL = 0x10
CONFIG_SIZE = 52
ACC_CODE_SIZE = 6
TKT_CHAL_RESP = 0x40
CFG_CHAL_HMAC = 0x22
CFG_HMAC_LT64 = 0x04
CFG_CHAL_BTN_TRIG = 0x08
CRC_OK_RESIDUAL = 0xF0B8
TOUCH_TIMEOUT = 15.0


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


class OtpApplet(Applet):
    aid = AID
    name = "OTP"
    state_key = "otp"

    def __init__(self, presence: Presence, serial: int, version: tuple[int, int, int]) -> None:
        super().__init__()
        self.presence, self.serial, self.version = presence, serial, version
        self.slots: dict[int, dict[str, object]] = {}  # slot -> {"key": b64, "touch": bool, "lt64": bool, "acc": b64}
        self.prog_seq = 0

    def state_dict(self) -> dict[str, object]:
        return {"slots": {str(k): v for k, v in self.slots.items()}, "prog_seq": self.prog_seq}

    def load_state(self, state: dict[str, object]) -> None:
        self.slots = {int(k): dict(v) for k, v in dict(state.get("slots", {})).items()}  # type: ignore[call-overload]
        self.prog_seq = int(state.get("prog_seq", 0))  # type: ignore[call-overload]

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
            return self._configure(CONFIG_SLOTS[apdu.p1], apdu.data)
        if apdu.p1 in CHAL_HMAC_SLOTS:
            return self._hmac(CHAL_HMAC_SLOTS[apdu.p1], apdu.data)
        if apdu.p1 == DEVICE_SERIAL:
            return self.serial.to_bytes(4, "big")
        raise ApduStatus(SW_FUNCTION_NOT_SUPPORTED)

    def _configure(self, slot: int, data: bytes) -> bytes:
        if len(data) != CONFIG_SIZE + ACC_CODE_SIZE:
            raise ApduStatus(SW_WRONG_LENGTH)
        config, current_acc = data[:CONFIG_SIZE], data[CONFIG_SIZE:]
        existing = self.slots.get(slot)
        if existing is not None and existing.get("acc"):
            if not hmac.compare_digest(base64.b64decode(str(existing["acc"])), current_acc):
                raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if config == bytes(CONFIG_SIZE):  # delete the slot
            self.slots.pop(slot, None)
        else:
            if crc16(config) != CRC_OK_RESIDUAL:
                raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
            uid, key, acc = config[16:22], config[22:38], config[38:44]
            tkt, cfg = config[46], config[47]
            if not (tkt & TKT_CHAL_RESP and cfg & CFG_CHAL_HMAC == CFG_CHAL_HMAC):
                raise ApduStatus(SW_FUNCTION_NOT_SUPPORTED)  # only HMAC-SHA1 challenge-response
            self.slots[slot] = {"key": base64.b64encode(key + uid[:4]).decode(),
                                "touch": bool(cfg & CFG_CHAL_BTN_TRIG), "lt64": bool(cfg & CFG_HMAC_LT64),
                                "acc": base64.b64encode(acc).decode() if any(acc) else ""}
        self.prog_seq = (self.prog_seq + 1) & 0xFF
        self.changed()
        return self.status()

    def _hmac(self, slot: int, challenge: bytes) -> bytes:
        config = self.slots.get(slot)
        if config is None:
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
        if config.get("lt64") and challenge:
            challenge = challenge.rstrip(challenge[-1:])  # padding: the last byte, repeated
        if config.get("touch") and not self.presence.wait(TOUCH_TIMEOUT):
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
        return hmac.digest(base64.b64decode(str(config["key"])), challenge, hashlib.sha1)
