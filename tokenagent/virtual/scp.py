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

The Security Domain applet (AID A000000151000000) answers GET DATA of the key information,
of an SCP11 key's certificate chain, of the CA identifiers and of the card recognition data.
A new token has the default SCP03 key set (KVN FF) and an SCP11b key (KID 13 KVN 01) whose
certificate the token's PIV attestation root CA issues (tokenagent.virtual.attestation).
Over an SCP03 channel (it authenticates the host; SCP11b does not) the keys can be managed
as ``ykman sd keys`` does: PUT KEY (an SCP03 key set under the session DEK with check values,
which replaces the default set; an SCP11 private key; a CA public key), GENERATE KEY, DELETE
KEY, STORE DATA (certificate chain, CA identifier, allowlist; the allowlist is kept, not
enforced). Each key family has 65 authentication tries (an INITIALIZE UPDATE not followed by
a good EXTERNAL AUTHENTICATE, a malformed INTERNAL AUTHENTICATE); at 0 it answers 6983, and
with all blocked the Security Domain goes back to the factory state (default SCP03 keys, a
new SCP11b key): this is how ``ykman sd reset`` works. SCP11a/c are not implemented.
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
    SW_CONDITIONS_NOT_SATISFIED,
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
INS_GET_DATA, INS_PUT_KEY, INS_STORE_DATA, INS_DELETE, INS_GENERATE_KEY = 0xCA, 0xD8, 0xE2, 0xE4, 0xF1
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
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # the IV derivation of SCP03
    return encryptor.update((b"\x80" if response else b"\x00") + counter.to_bytes(15, "big")) + encryptor.finalize()


class Channel:
    """One open secure channel: session keys, MAC chaining value, encryption counter."""

    def __init__(self, s_enc: bytes, s_mac: bytes, s_rmac: bytes, chain: bytes = bytes(16),
                 authenticated: bool = True) -> None:
        self.s_enc, self.s_mac, self.s_rmac, self.chain = s_enc, s_mac, s_rmac, chain
        self.counter = self.answering = 1
        self.authenticated = authenticated  # SCP03: after EXTERNAL AUTHENTICATE
        self.dek: bytes | None = None  # the key that wraps keys put over this channel
        self.oce = False  # the host (off-card entity) is authenticated: SCP03

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
        self.card: Any = None  # the VirtualCard, whose open channel key management needs (set by the token)
        self._pending: tuple[bytes, bytes] | None = None  # SCP03: S-MAC and context of the handshake
        self._factory()

    def _factory(self) -> None:
        default = base64.b64encode(DEFAULT_KEY).decode()
        self.scp03: dict[int, dict[str, str]] = {SCP03_KVN: {"enc": default, "mac": default, "dek": default}}
        self.scp11: dict[tuple[int, int], dict[str, Any]] = {}  # (kid, kvn) -> key (PKCS#8) or public, certs
        self.ca: dict[tuple[int, int], dict[str, Any]] = {}  # (kid, kvn) -> CA identifier (SKI), KLCC or KLOC
        self.tries = {"scp03": AUTH_TRIES, "scp11b": AUTH_TRIES}
        self.made = False  # the factory SCP11b key was made (deleting it later does not bring it back)

    def state_dict(self) -> dict[str, object]:
        return {"scp03": {f"{kvn:02x}": keys for kvn, keys in self.scp03.items()},
                "scp11": {f"{kid:02x}:{kvn:02x}": key for (kid, kvn), key in self.scp11.items()},
                "ca": {f"{kid:02x}:{kvn:02x}": ca for (kid, kvn), ca in self.ca.items()}, "tries": self.tries,
                "made": self.made}

    def load_state(self, state: dict[str, Any]) -> None:
        def ref(text: str) -> tuple[int, int]:
            kid, kvn = text.split(":")
            return int(kid, 16), int(kvn, 16)

        if "scp03" in state:
            self.scp03 = {int(kvn, 16): keys for kvn, keys in state["scp03"].items()}
        self.scp11 = {ref(text): key for text, key in state.get("scp11", {}).items()}
        if state.get("scp11b"):  # state files of before key management
            self.scp11[(SCP11B_KID, SCP11B_KVN)] = state["scp11b"]
        self.ca = {ref(text): ca for text, ca in state.get("ca", {}).items()}
        self.tries = dict(state.get("tries") or self.tries)
        self.made = bool(state.get("made", self.scp11))

    def factory_keys(self) -> None:
        """The SCP11b key a YubiKey leaves the factory with (made once per token)."""
        if not self.made:
            self.scp11[(SCP11B_KID, SCP11B_KVN)] = _make_scp11b(self._attestation())
            self.made = True
            self.changed()

    def _spend(self, key: str) -> None:
        """An authentication begun or failed with ``key``; blocked at 0, and with every key blocked
        the Security Domain goes back to the factory: default SCP03 keys, a new SCP11b key."""
        if self.tries[key] <= 0:
            raise ApduStatus(SW_BLOCKED)
        self.tries[key] -= 1
        if all(left <= 0 for left in self.tries.values()):
            self._factory()
            self.factory_keys()
        self.changed()

    def _succeeded(self, key: str) -> None:
        if self.tries[key] != AUTH_TRIES:
            self.tries[key] = AUTH_TRIES
            self.changed()

    def _scp11_private(self, kid: int, kvn: int) -> tuple[tuple[int, int], ec.EllipticCurvePrivateKey]:
        for ref, entry in sorted(self.scp11.items()):
            if ref[0] == kid and kvn in (0, ref[1]) and entry.get("key"):
                key = serialization.load_der_private_key(base64.b64decode(entry["key"]), None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)  # stored by this module
                return ref, key
        raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)

    # --- handshakes (any selected applet) ---------------------------------------------

    def handshake(self, apdu: Apdu, current: Channel | None) -> tuple[bytes, Channel | None]:
        """INITIALIZE UPDATE, EXTERNAL or INTERNAL AUTHENTICATE: the answer and the channel after it."""
        if apdu.ins == INS_INITIALIZE_UPDATE:
            return self._initialize_update(apdu)
        if apdu.ins == INS_EXTERNAL_AUTHENTICATE:
            return self._external_authenticate(apdu, current)
        return self._internal_authenticate(apdu)

    def _initialize_update(self, apdu: Apdu) -> tuple[bytes, Channel | None]:
        if len(apdu.data) != 8:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        kvn = apdu.p1 or min(self.scp03, default=0)
        if kvn not in self.scp03:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        self._spend("scp03")  # given back by a good EXTERNAL AUTHENTICATE
        keys = {name: base64.b64decode(value) for name, value in self.scp03[kvn].items()}
        card_challenge = os.urandom(8)
        context = apdu.data + card_challenge
        channel = Channel(_derive(keys["enc"], 0x04, context), _derive(keys["mac"], 0x06, context),
                          _derive(keys["mac"], 0x07, context), authenticated=False)
        channel.dek, channel.oce = keys["dek"], True  # SCP03 authenticates the host: it may manage keys
        cryptogram = _derive(channel.s_mac, 0x00, context, 64)
        self._pending = (channel.s_mac, context)
        return bytes(10) + bytes([kvn, 0x03, 0x00]) + card_challenge + cryptogram, channel

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
        if apdu.p2 != SCP11B_KID:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)  # SCP11a/c need an off-card chain: not implemented
        if self.tries["scp11b"] <= 0:
            raise ApduStatus(SW_BLOCKED)
        _, static = self._scp11_private(SCP11B_KID, apdu.p1)
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
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        card_tlv = tlv(0x5F49, ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                                    serialization.PublicFormat.UncompressedPoint))
        shared = ephemeral.exchange(ec.ECDH(), host) + static.exchange(ec.ECDH(), host)
        material = X963KDF(hashes.SHA256(), 5 * 16, KEY_USAGE + KEY_TYPE_AES + KEY_LENGTH).derive(shared)
        keys = [material[i:i + 16] for i in range(0, 80, 16)]
        receipt = _cmac(keys[0], apdu.data + card_tlv)
        channel = Channel(keys[1], keys[2], keys[3], receipt)
        channel.dek = keys[4]  # SCP11b does not authenticate the host: no key management over it
        return card_tlv + tlv(0x86, receipt), channel

    # --- the applet ---------------------------------------------------------------------

    def process(self, apdu: Apdu) -> bytes:
        if apdu.ins == INS_GET_DATA:
            return self._get_data(apdu)
        handler = {INS_PUT_KEY: self._put_key, INS_GENERATE_KEY: self._generate_key, INS_DELETE: self._delete,
                   INS_STORE_DATA: self._store_data}.get(apdu.ins)
        if handler is None:
            raise ApduStatus(SW_INS_NOT_SUPPORTED)
        channel = getattr(self.card, "channel", None)
        if channel is None or not channel.oce:  # key management needs an authenticated host (SCP03 here)
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        answer = handler(apdu, channel)
        self.changed()
        return answer

    def _get_data(self, apdu: Apdu) -> bytes:
        tag = apdu.p1 << 8 | apdu.p2
        if tag == 0x00E0:  # key information
            info = b"".join(tlv(0xC0, bytes([0x01, kvn, 0x88, 0x10, 0x88, 0x10, 0x88, 0x10]))
                            for kvn in sorted(self.scp03))
            return info + b"".join(tlv(0xC0, bytes([kid, kvn, 0x88, 0x10])) for kid, kvn in sorted(self.scp11))
        if tag == 0xBF21:
            reference = dict(tlv_parse(dict(tlv_parse(apdu.data)).get(0xA6, b""))).get(0x83, b"")
            entry = self.scp11.get((reference[0], reference[1])) if len(reference) == 2 else None
            if entry is None or not entry.get("certs"):
                raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
            return b"".join(base64.b64decode(cert) for cert in entry["certs"])
        if tag in (0xFF33, 0xFF34):  # CA identifiers: KLOC, KLCC
            found = b"".join(tlv(0x42, base64.b64decode(ca["ski"])) + tlv(0x83, bytes(ref))
                             for ref, ca in sorted(self.ca.items()) if ca["klcc"] == (tag == 0xFF34))
            if not found:
                raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
            return found
        if tag == 0x0066:  # card recognition data: GlobalPlatform card, SCP03 i=00
            return tlv(0x73, tlv(0x06, bytes.fromhex("2a864886fc6b01")) + tlv(0x64, tlv(
                0x06, bytes.fromhex("2a864886fc6b040300"))))
        raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)

    def _put_key(self, apdu: Apdu, channel: Channel) -> bytes:
        """PUT KEY: an SCP03 key set (P2 81; keys under the session DEK with their check values), an
        SCP11 private key (tag B1, under the DEK) or a CA public key (tag B0)."""
        data, kid, replace = apdu.data, apdu.p2 & 0x7F, apdu.p1
        if not data or channel.dek is None:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        kvn = data[0]
        if kid == 0x01:
            keys, checks, pos = [], b"", 1
            for _ in range(3):
                if data[pos:pos + 2] != b"\x88\x10":
                    raise ApduStatus(SW_INCORRECT_PARAMETERS)
                key = _cbc(channel.dek, data[pos + 2:pos + 18], decrypt=True)
                check_len = data[pos + 18]
                check = data[pos + 19:pos + 19 + check_len]
                if check != _cbc(key, b"\x01" * 16)[:check_len]:
                    raise ApduStatus(SW_INCORRECT_PARAMETERS)
                keys.append(key)
                checks += check
                pos += 19 + check_len
            if replace:
                self.scp03.pop(replace, None)
            self.scp03.pop(SCP03_KVN, None)  # a key set of one's own replaces the default one
            self.scp03[kvn] = dict(zip(("enc", "mac", "dek"), (base64.b64encode(k).decode() for k in keys),
                                       strict=True))
            return bytes([kvn]) + checks
        fields = dict(tlv_parse(data[1:].rstrip(b"\x00")))
        if fields.get(0xF0) != b"\x00":  # P-256 only
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        if replace:
            self.scp11.pop((kid, replace), None)
        if 0xB1 in fields:
            value = int.from_bytes(_cbc(channel.dek, fields[0xB1], decrypt=True), "big")
            private = ec.derive_private_key(value, ec.SECP256R1())
            der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            self.scp11[(kid, kvn)] = {"key": base64.b64encode(der).decode(), "certs": []}
        elif 0xB0 in fields:
            self.scp11[(kid, kvn)] = {"public": base64.b64encode(fields[0xB0]).decode(), "certs": []}
        else:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        return bytes([kvn])

    def _generate_key(self, apdu: Apdu, channel: Channel) -> bytes:
        data, kid = apdu.data, apdu.p2
        if kid not in (0x11, SCP11B_KID, 0x15) or len(data) < 1 or dict(tlv_parse(data[1:])).get(0xF0) != b"\x00":
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        if apdu.p1:
            self.scp11.pop((kid, apdu.p1), None)
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self.scp11[(kid, data[0])] = {"key": base64.b64encode(der).decode(), "certs": []}
        return tlv(0xB0, key.public_key().public_bytes(serialization.Encoding.X962,
                                                       serialization.PublicFormat.UncompressedPoint))

    def _delete(self, apdu: Apdu, channel: Channel) -> bytes:
        fields = dict(tlv_parse(apdu.data))
        kid = fields.get(0xD0, b"\x00")[0]
        kvn = fields.get(0xD2, b"\x00")[0]
        if not kid and not kvn:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        scp03 = [k for k in self.scp03 if not kid and k == kvn]
        scp11 = [ref for ref in self.scp11 if kid in (0, ref[0]) and kvn in (0, ref[1])]
        if not scp03 and not scp11:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        if len(scp03) + len(scp11) == len(self.scp03) + len(self.scp11) and not apdu.p2:
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)  # the last key: only with "delete last"
        for k in scp03:
            del self.scp03[k]
        for ref in scp11:
            del self.scp11[ref]
            self.ca.pop(ref, None)
        return b""

    def _store_data(self, apdu: Apdu, channel: Channel) -> bytes:
        """STORE DATA: a key's certificate chain (BF21), a CA identifier (A6 with 80/42), an allowlist."""
        items = tlv_parse(apdu.data)
        if not items or items[0][0] != 0xA6:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        control = dict(tlv_parse(items[0][1]))
        reference = control.get(0x83, b"")
        if len(reference) != 2:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        ref = (reference[0], reference[1])
        if 0x42 in control:
            self.ca[ref] = {"klcc": control.get(0x80) == b"\x01", "ski": base64.b64encode(control[0x42]).decode()}
            return b""
        if ref not in self.scp11:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        rest = dict(items[1:])
        if 0xBF21 in rest:
            from yubikit.core import Tlv

            self.scp11[ref]["certs"] = [base64.b64encode(bytes(cert)).decode() for cert in Tlv.parse_list(rest[0xBF21])]
        elif 0x70 in rest:
            self.scp11[ref]["allowlist"] = base64.b64encode(rest[0x70]).decode()
        else:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        return b""


def _cbc(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(bytes(16)))
    worker = cipher.decryptor() if decrypt else cipher.encryptor()
    return worker.update(data) + worker.finalize()


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
