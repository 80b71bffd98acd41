"""The virtual token's Security Domain and its secure channels (GlobalPlatform SCP03 and
SCP11b), as YubiKey 5.3+ (SCP03) and 5.7.2+ (SCP11) have them and yubikit's
``SmartCardProtocol.init_scp`` and ``SecurityDomainSession`` drive them.

Theory of operation. A secure channel is opened on the applet that is selected (PIV, OTP,
management or the Security Domain itself) and lasts until the next SELECT or power cycle:

* SCP03: INITIALIZE UPDATE (80 50, P1 = key version or 0, the host challenge) answers the
  key diversification data, key information, a card challenge and the card cryptogram; the
  session keys S-ENC, S-MAC, S-RMAC come from the static keys by the AES-CMAC KDF of SCP03
  over host + card challenge. EXTERNAL AUTHENTICATE (84 82, P1 33) carries the host
  cryptogram under a C-MAC; the channel then has C-MAC, C-DECRYPTION, R-MAC, R-ENCRYPTION.
* SCP11b: INTERNAL AUTHENTICATE (80 88, P1 = key version, P2 = 13) carries the host's
  ephemeral P-256 key; the card answers its own ephemeral key and a receipt. The keys come
  from X9.63 KDF(SHA-256) over ECDH(ephemeral, ephemeral) || ECDH(card's static key, host's
  ephemeral); the receipt is the first MAC chaining value.
* Then every command must have CLA bit 04: its C-MAC (AES-CMAC chained over the previous MAC,
  the header, Lc in the short or extended form the host used, the data) is checked and its
  data decrypted (AES-CBC, IV = AES(S-ENC, counter)); a 9000 answer is encrypted (IV from 80 ||
  counter) and gets an R-MAC over the answer and SW. A command without secure messaging
  inside a channel ends it with 6982.

The Security Domain applet (AID A000000151000000) answers GET DATA of the key information
(the default SCP03 key set, KVN FF, and the SCP11b key, KID 13 KVN 01), of the SCP11b key's
certificate chain (issued by the token's PIV attestation root CA, tokenagent.virtual.attestation)
and of the card recognition data. Each key has 65 authentication tries (an INITIALIZE UPDATE
not followed by a good EXTERNAL AUTHENTICATE, a malformed INTERNAL AUTHENTICATE); at 0 it
answers 6983, and with all keys blocked the Security Domain is reset to the factory state:
the default SCP03 keys and a new SCP11b key (this is how ``ykman sd reset`` works). Managing
keys (PUT KEY, GENERATE KEY, DELETE, STORE DATA) is not implemented: those answer 6D00.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import os
import struct
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import cmac, hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.x509.oid import NameOID

from .card import (
    SW_INCORRECT_PARAMETERS,
    SW_INS_NOT_SUPPORTED,
    SW_REFERENCE_DATA_NOT_FOUND,
    SW_SECURITY_STATUS_NOT_SATISFIED,
    Apdu,
    ApduStatus,
    Applet,
    tlv,
    tlv_parse,
)

AID = bytes.fromhex("A000000151000000")
INS_INITIALIZE_UPDATE, INS_EXTERNAL_AUTHENTICATE, INS_INTERNAL_AUTHENTICATE = 0x50, 0x82, 0x88
HANDSHAKE = frozenset({INS_INITIALIZE_UPDATE, INS_EXTERNAL_AUTHENTICATE, INS_INTERNAL_AUTHENTICATE})
INS_GET_DATA = 0xCA
CLA_SECURE = 0x04
DEFAULT_KEY = bytes(range(0x40, 0x50))
SCP03_KVN, SCP11B_KID, SCP11B_KVN = 0xFF, 0x13, 0x01
AUTH_TRIES = 65  # failed authentications that block a key; all keys blocked = factory reset (ykman sd reset)
SW_BLOCKED = 0x6983
LEVEL_ALL = 0x33  # C-MAC, C-DECRYPTION, R-MAC, R-ENCRYPTION
KEY_USAGE, KEY_TYPE_AES, KEY_LENGTH = b"\x3c", b"\x88", b"\x10"


def _cmac(key: bytes, *parts: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    for part in parts:
        mac.update(part)
    return mac.finalize()


def _derive(key: bytes, constant: int, context: bytes, bits: int = 128) -> bytes:
    """SCP03's KDF (NIST SP 800-108 counter mode with AES-CMAC), GP Amendment D 6.2.2."""
    return _cmac(key, bytes(11) + struct.pack(">BBHB", constant, 0, bits, 1) + context)[: bits // 8]


def _iv(key: bytes, counter: int, response: bool) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - the IV derivation of SCP03
    return encryptor.update((b"\x80" if response else b"\x00") + counter.to_bytes(15, "big")) + encryptor.finalize()


class Channel:
    """One open secure channel: session keys, MAC chaining value, encryption counter."""

    def __init__(self, s_enc: bytes, s_mac: bytes, s_rmac: bytes, chain: bytes = bytes(16),
                 authenticated: bool = True) -> None:
        self.s_enc, self.s_mac, self.s_rmac, self.chain = s_enc, s_mac, s_rmac, chain
        self.counter = self.answering = 1
        self.authenticated = authenticated  # SCP03: after EXTERNAL AUTHENTICATE

    def check_mac(self, apdu: Apdu) -> bytes:
        """Check the C-MAC of a whole command; the data without it."""
        if len(apdu.data) < 8:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        data, mac = apdu.data[:-8], apdu.data[-8:]
        header = bytes([apdu.cla & ~0x10 & 0xFF, apdu.ins, apdu.p1, apdu.p2])
        lc = len(apdu.data)
        length = bytes([lc]) if lc <= 0xFF else b"\x00" + lc.to_bytes(2, "big")  # as the host formatted it
        chain = _cmac(self.s_mac, self.chain, header + length + data)
        if not hmac.compare_digest(chain[:8], mac):
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        self.chain = chain
        return data

    def unwrap(self, apdu: Apdu) -> Apdu:
        """Check and decrypt a command; every command counts, whatever its answer (as the host counts)."""
        data = self.check_mac(apdu)
        self.answering, self.counter = self.counter, self.counter + 1
        if data:
            decryptor = Cipher(algorithms.AES(self.s_enc), modes.CBC(_iv(self.s_enc, self.answering, False))).decryptor()
            if len(data) % 16:
                raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
            plain = (decryptor.update(data) + decryptor.finalize()).rstrip(b"\x00")
            if not plain.endswith(b"\x80"):
                raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
            data = plain[:-1]
        return Apdu(apdu.cla & ~CLA_SECURE & 0xFF, apdu.ins, apdu.p1, apdu.p2, data, apdu.le, apdu.extended)

    def wrap(self, answer: bytes, sw: int) -> bytes:
        """Encrypt the answer to the command just unwrapped and append its R-MAC."""
        if answer:
            padded = answer + b"\x80" + bytes(15 - len(answer) % 16)
            encryptor = Cipher(algorithms.AES(self.s_enc), modes.CBC(_iv(self.s_enc, self.answering, True))).encryptor()
            answer = encryptor.update(padded) + encryptor.finalize()
        return answer + _cmac(self.s_rmac, self.chain, answer + sw.to_bytes(2, "big"))[:8]


class SecurityDomain(Applet):
    """The Security Domain applet; it also opens the channels of the other applets (``handshake``)."""

    aid = AID
    name = "Security Domain"
    state_key = "sd"

    def __init__(self, attestation: Callable[[], dict[str, str]]) -> None:
        super().__init__()
        self._attestation = attestation  # the PIV attestation CA, which issues the SCP11b certificate
        self.scp11b: dict[str, Any] | None = None  # {"key": b64 PKCS#8, "certs": [b64 DER]}
        self._pending: tuple[bytes, bytes, bytes] | None = None  # SCP03 keys and cryptogram context
        self.tries = {"scp03": AUTH_TRIES, "scp11b": AUTH_TRIES}

    def state_dict(self) -> dict[str, object]:
        return {"scp11b": self.scp11b, "tries": self.tries}

    def load_state(self, state: dict[str, object]) -> None:
        self.scp11b = state.get("scp11b")  # type: ignore[assignment]
        self.tries = dict(state.get("tries") or self.tries)  # type: ignore[call-overload]

    def _spend(self, key: str) -> None:
        """An authentication begun or failed with ``key``; blocked at 0, and with every key blocked
        the Security Domain goes back to the factory: default SCP03 keys, a new SCP11b key."""
        if self.tries[key] <= 0:
            raise ApduStatus(SW_BLOCKED)
        self.tries[key] -= 1
        if all(left <= 0 for left in self.tries.values()):
            self.scp11b = None
            self.tries = {name: AUTH_TRIES for name in self.tries}
            self._scp11b_key()
        self.changed()

    def _succeeded(self, key: str) -> None:
        if self.tries[key] != AUTH_TRIES:
            self.tries[key] = AUTH_TRIES
            self.changed()

    def _scp11b_key(self) -> tuple[ec.EllipticCurvePrivateKey, list[bytes]]:
        if self.scp11b is None:
            self.scp11b = _make_scp11b(self._attestation())
            self.changed()
        key = serialization.load_der_private_key(base64.b64decode(self.scp11b["key"]), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # noqa: S101 - made by _make_scp11b
        return key, [base64.b64decode(c) for c in self.scp11b["certs"]]

    # --- handshakes (any selected applet) ---------------------------------------------

    def handshake(self, apdu: Apdu, current: Channel | None) -> tuple[bytes, Channel | None]:
        """INITIALIZE UPDATE, EXTERNAL or INTERNAL AUTHENTICATE: the answer and the channel after it."""
        if apdu.ins == INS_INITIALIZE_UPDATE:
            return self._initialize_update(apdu)
        if apdu.ins == INS_EXTERNAL_AUTHENTICATE:
            return self._external_authenticate(apdu, current)
        return self._internal_authenticate(apdu)

    def _initialize_update(self, apdu: Apdu) -> tuple[bytes, Channel | None]:
        if apdu.p1 not in (0, SCP03_KVN) or len(apdu.data) != 8:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND if len(apdu.data) == 8 else SW_INCORRECT_PARAMETERS)
        self._spend("scp03")  # given back by a good EXTERNAL AUTHENTICATE
        card_challenge = os.urandom(8)
        context = apdu.data + card_challenge
        channel = Channel(_derive(DEFAULT_KEY, 0x04, context), _derive(DEFAULT_KEY, 0x06, context),
                          _derive(DEFAULT_KEY, 0x07, context), authenticated=False)
        cryptogram = _derive(channel.s_mac, 0x00, context, 64)
        self._pending = (channel.s_mac, context, b"")
        diversification = bytes(10)
        key_info = bytes([SCP03_KVN, 0x03, 0x00])
        return diversification + key_info + card_challenge + cryptogram, channel

    def _external_authenticate(self, apdu: Apdu, current: Channel | None) -> tuple[bytes, Channel | None]:
        pending, self._pending = self._pending, None
        if current is None or current.authenticated or pending is None or apdu.cla & CLA_SECURE == 0:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        host_cryptogram = current.check_mac(apdu)
        expected = _derive(pending[0], 0x01, pending[1], 64)
        if apdu.p1 != LEVEL_ALL or not hmac.compare_digest(host_cryptogram, expected):
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        current.authenticated = True
        self._succeeded("scp03")
        return b"", current

    def _internal_authenticate(self, apdu: Apdu) -> tuple[bytes, Channel | None]:
        if (apdu.p1, apdu.p2) not in ((SCP11B_KVN, SCP11B_KID), (0, SCP11B_KID)):
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        if self.tries["scp11b"] <= 0:
            raise ApduStatus(SW_BLOCKED)
        try:
            fields = dict(tlv_parse(apdu.data))
            control = dict(tlv_parse(fields.get(0xA6, b"")))
            if (control.get(0x90) != b"\x11\x00" or control.get(0x95) != KEY_USAGE
                    or control.get(0x80) != KEY_TYPE_AES or control.get(0x81) != KEY_LENGTH):
                raise ApduStatus(SW_INCORRECT_PARAMETERS)
            host = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), fields[0x5F49])
        except (ApduStatus, KeyError, ValueError):
            self._spend("scp11b")
            raise ApduStatus(SW_INCORRECT_PARAMETERS) from None
        self._succeeded("scp11b")
        static, _ = self._scp11b_key()
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        card_tlv = tlv(0x5F49, ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                                    serialization.PublicFormat.UncompressedPoint))
        shared = ephemeral.exchange(ec.ECDH(), host) + static.exchange(ec.ECDH(), host)
        material = X963KDF(hashes.SHA256(), 5 * 16, KEY_USAGE + KEY_TYPE_AES + KEY_LENGTH).derive(shared)
        keys = [material[i:i + 16] for i in range(0, 80, 16)]
        receipt = _cmac(keys[0], apdu.data + card_tlv)
        return card_tlv + tlv(0x86, receipt), Channel(keys[1], keys[2], keys[3], receipt)

    # --- the applet ---------------------------------------------------------------------

    def process(self, apdu: Apdu) -> bytes:
        if apdu.ins != INS_GET_DATA:
            raise ApduStatus(SW_INS_NOT_SUPPORTED)
        tag = apdu.p1 << 8 | apdu.p2
        if tag == 0x00E0:  # key information: the default SCP03 key set and the SCP11b key
            return (tlv(0xC0, bytes([0x01, SCP03_KVN, 0x88, 0x10, 0x88, 0x10, 0x88, 0x10]))
                    + tlv(0xC0, bytes([SCP11B_KID, SCP11B_KVN, 0x88, 0x10])))
        if tag == 0xBF21:
            reference = dict(tlv_parse(dict(tlv_parse(apdu.data)).get(0xA6, b""))).get(0x83)
            if reference != bytes([SCP11B_KID, SCP11B_KVN]):
                raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
            return b"".join(self._scp11b_key()[1])
        if tag == 0x0066:  # card recognition data: GlobalPlatform card, SCP03 i=00
            return tlv(0x73, tlv(0x06, bytes.fromhex("2a864886fc6b01")) + tlv(0x64, tlv(
                0x06, bytes.fromhex("2a864886fc6b040300"))))
        raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)  # CA identifiers (FF33, FF34): none stored


def _make_scp11b(attestation: dict[str, str]) -> dict[str, Any]:
    """The SCP11b key (KID 13 KVN 01) and its certificate, issued by the PIV attestation root CA."""
    from .attestation import root_signer

    signer, issuer = root_signer(attestation)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokenagent virtual SD SCP11b key")]))
            .issuer_name(issuer).public_key(key.public_key())
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
            .not_valid_before(now).not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
            .add_extension(x509.KeyUsage(False, False, False, False, True, False, False, False, False), critical=True)
            .sign(signer, hashes.SHA256()))
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return {"key": base64.b64encode(der).decode(),
            "certs": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]}
