"""The virtual token's management applet: what yubikit's ManagementSession reads.

SELECT (AID A000000527471117) answers the firmware version as text ("5.7.2"); READ CONFIG
(INS 1D, P1 = page) answers one length byte and the DeviceInfo TLVs: serial, version, form
factor, and the USB/NFC capabilities supported and enabled (OTP, PIV and FIDO2: the
applets this token has). Writing the configuration is refused.
"""

from __future__ import annotations

from .card import SW_INS_NOT_SUPPORTED, SW_WRONG_P1P2, Apdu, ApduStatus, Applet, tlv

AID = bytes.fromhex("A000000527471117")
INS_READ_CONFIG = 0x1D
CAPABILITY_OTP, CAPABILITY_PIV, CAPABILITY_FIDO2 = 0x0001, 0x0010, 0x0200
FORM_FACTOR_USB_A_KEYCHAIN = 0x01


class ManagementApplet(Applet):
    aid = AID
    name = "Management"

    def __init__(self, serial: int, version: tuple[int, int, int]) -> None:
        super().__init__()
        self.serial, self.version = serial, version

    def select(self, p2: int) -> bytes:
        return ".".join(str(v) for v in self.version).encode()

    def process(self, apdu: Apdu) -> bytes:
        if apdu.ins != INS_READ_CONFIG:
            raise ApduStatus(SW_INS_NOT_SUPPORTED)
        if apdu.p1 != 0:
            raise ApduStatus(SW_WRONG_P1P2)
        caps = (CAPABILITY_OTP | CAPABILITY_PIV | CAPABILITY_FIDO2).to_bytes(2, "big")
        body = (tlv(0x01, caps) + tlv(0x02, self.serial.to_bytes(4, "big")) + tlv(0x03, caps)
                + tlv(0x04, bytes([FORM_FACTOR_USB_A_KEYCHAIN])) + tlv(0x05, bytes(self.version))
                + tlv(0x0D, caps) + tlv(0x0E, caps))
        return bytes([len(body)]) + body
