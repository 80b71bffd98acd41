"""The virtual PIV applet against clients nobody here wrote, where it used to differ from a
YubiKey 5: ECDSA over digests of another length than the curve (ykman, yubico-piv-tool,
OpenSC's and Yubico's PKCS#11 modules), the data objects a YubiKey stores, the identity it
reports, attestation. In process through yubikit, and through the private pcscd."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pcscd import PrivatePcscd, TokenProcess
from test_piv_virtual import first_reader, session, tool, ykman  # type: ignore[import-not-found]
from yubikit.core import Tlv
from yubikit.core.smartcard import ApduError
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT

from tokenagent.virtual.token import VirtualToken

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
YKCS11 = "/usr/lib/x86_64-linux-gnu/libykcs11.so"
MGM = DEFAULT_MANAGEMENT_KEY.hex()


@pytest.fixture
def token(tmp_path: Path) -> VirtualToken:
    return VirtualToken(tmp_path / "token.json", serial=5160)


# --- item 5: ECDSA over a digest shorter or longer than the curve ---------------------------


@pytest.mark.parametrize(("key_type", "hash_type"), [(KEY_TYPE.ECCP384, hashes.SHA256()),
                                                     (KEY_TYPE.ECCP256, hashes.SHA1()),
                                                     (KEY_TYPE.ECCP384, hashes.SHA1())])
def test_yubikit_signs_a_shorter_digest(token: VirtualToken, key_type: KEY_TYPE,
                                        hash_type: hashes.HashAlgorithm) -> None:
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.AUTHENTICATION, key_type)
    piv.verify_pin("123456")
    signature = piv.sign(SLOT.AUTHENTICATION, key_type, b"message", hash_type)
    public.verify(signature, b"message", ec.ECDSA(hash_type))  # type: ignore[union-attr, call-arg]


def test_a_longer_digest_is_cut_to_the_curve_size(token: VirtualToken) -> None:
    """yubikit cuts a SHA-384 digest for P-256 itself; sent whole (as a raw APDU), the card cuts
    it to its leftmost 32 bytes, which is what ECDSA verification with SHA-384 on P-256 does."""
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.verify_pin("123456")
    digest = hashes.Hash(hashes.SHA384())
    digest.update(b"message")
    whole = digest.finalize()
    request = Tlv(0x7C, Tlv(0x82) + Tlv(0x81, whole))
    answer = piv.protocol.send_apdu(0, 0x87, KEY_TYPE.ECCP256, SLOT.AUTHENTICATION, request)
    signature = Tlv.unpack(0x82, Tlv.unpack(0x7C, answer))
    public.verify(signature, whole, ec.ECDSA(Prehashed(hashes.SHA384())))  # type: ignore[union-attr, call-arg]


@pytest.mark.reader_name("Yubico Virtual PCD")
def test_p384_key_with_sha256_through_ykman_piv_tool_opensc_and_ykcs11(pcscd: PrivatePcscd,
                                                                       tokens: list[TokenProcess],
                                                                       tmp_path: Path) -> None:
    """A P-384 key signing SHA-256 digests, as four outside clients ask it through pcscd: ykman's
    self-signed certificate, yubico-piv-tool's test signature with -H SHA256, and CKM_ECDSA_SHA256
    in OpenSC's PKCS#11 module and in Yubico's ykcs11 (which finds the card only because the
    reader's name starts with "Yubico")."""
    for path, package in ((OPENSC, "opensc-pkcs11"), (YKCS11, "ykcs11")):
        if not os.path.exists(path):
            pytest.skip(f"{path} is missing (Debian package {package})")
    for program in ("yubico-piv-tool", "pkcs11-tool"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (Debian packages yubico-piv-tool, opensc)")
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 6505))
    reader = first_reader(pcscd)
    assert reader.startswith("Yubico Virtual PCD")
    pub, cert_file = tmp_path / "pub.pem", tmp_path / "cert.pem"
    generated = ykman(pcscd, reader, "piv", "keys", "generate", "-a", "ECCP384", "-m", MGM, "9a", str(pub))
    assert generated.returncode == 0, generated.stderr
    made = ykman(pcscd, reader, "piv", "certificates", "generate", "-s", "CN=p384", "-d", "30", "-P", "123456",
                 "-m", MGM, "9a", str(pub))
    assert made.returncode == 0, made.stderr
    exported = ykman(pcscd, reader, "piv", "certificates", "export", "9a", str(cert_file))
    assert exported.returncode == 0, exported.stderr
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))

    signed = tool(pcscd, "yubico-piv-tool", "-r", reader, "-a", "verify-pin", "-P", "123456", "-a",
                  "test-signature", "-s", "9a", "-H", "SHA256", "-i", str(cert_file))
    assert signed.returncode == 0 and "Successful ECDSA verification" in signed.stdout + signed.stderr, signed

    data = tmp_path / "data"
    data.write_bytes(b"signed through PKCS#11")
    for module in (OPENSC, YKCS11):
        out = tmp_path / f"sig-{Path(module).name}"
        done = tool(pcscd, "pkcs11-tool", "--module", module, "--slot-index", "0", "--login", "--pin", "123456",
                    "--sign", "--mechanism", "ECDSA-SHA256", "--id", "01", "-i", str(data), "-o", str(out))
        assert done.returncode == 0, (module, done.stdout, done.stderr)
        raw = out.read_bytes()
        assert len(raw) == 96, module
        signature = encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"))
        public.verify(signature, data.read_bytes(), ec.ECDSA(hashes.SHA256()))
    listed = tool(pcscd, "pkcs11-tool", "--module", YKCS11, "-L")
    assert listed.returncode == 0 and "Yubico Virtual PCD 00 00" in listed.stdout, listed.stdout + listed.stderr
    assert "serial num         : 6505" in listed.stdout, listed.stdout


# --- item 6: the data objects a YubiKey stores -----------------------------------------------


def test_objects_a_yubikey_takes_and_those_it_refuses(token: VirtualToken) -> None:
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    taken = {0x5F0001: b"vendor test object", 0x5FC123: b"pc ref data", 0x5FFF00: b"\x80\x01\x00",
             0x5FFF10: b"mscmap", 0x7F61: b"\x02\x01\x00", 0x5FFFFF: b"last"}
    for object_id, data in taken.items():
        piv.put_object(object_id, data)
    again = session(VirtualToken(token.state_path))  # kept in the state file
    for object_id, data in taken.items():
        assert again.get_object(object_id) == data
    with pytest.raises(ApduError) as absent:
        again.get_object(0x5F0002)
    assert absent.value.sw == 0x6A82
    for refused in (b"\x5e\x00\x01", b"\x7d", b"\x5f\xc1", b"\x00\x5f\xc1\x05", b"\x7e"):  # 7E: fixed discovery
        with pytest.raises(ApduError) as status:
            piv.protocol.send_apdu(0, 0xDB, 0x3F, 0xFF, Tlv(0x5C, refused) + Tlv(0x53, b"x"))
        assert status.value.sw == 0x6A80, refused.hex()
    assert Tlv.parse_dict(piv.get_object(0x7E))[0x4F] == bytes.fromhex("A000000308000010000100")
    piv.put_object(0x5F0001)  # an empty object deletes it
    with pytest.raises(ApduError):
        piv.get_object(0x5F0001)


# --- item 7: what firmware 5.7.2 promises in PIV ---------------------------------------------


def test_default_management_key_is_aes192_and_ed25519_x25519_work(token: VirtualToken) -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519
    from yubikit.piv import MANAGEMENT_KEY_TYPE

    piv = session(token)
    metadata = piv.get_management_key_metadata()
    assert metadata.key_type == MANAGEMENT_KEY_TYPE.AES192 and metadata.default_value
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    signing = piv.generate_key(SLOT.SIGNATURE, KEY_TYPE.ED25519)
    agreeing = piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.X25519)
    piv.verify_pin("123456")
    signature = piv.sign(SLOT.SIGNATURE, KEY_TYPE.ED25519, b"message", None)  # type: ignore[arg-type]
    signing.verify(signature, b"message")  # type: ignore[call-arg, union-attr]
    peer = x25519.X25519PrivateKey.generate()
    assert piv.calculate_secret(SLOT.KEY_MANAGEMENT, peer.public_key()) == peer.exchange(agreeing)  # type: ignore[arg-type]
    assert piv.get_slot_metadata(SLOT.KEY_MANAGEMENT).key_type == KEY_TYPE.X25519
    imported = x25519.X25519PrivateKey.generate()
    piv.put_key(SLOT.RETIRED1, imported)
    assert piv.calculate_secret(SLOT.RETIRED1, peer.public_key()) == peer.exchange(imported.public_key())
    with pytest.raises(ApduError):  # X25519 only agrees, it does not sign
        piv.protocol.send_apdu(0, 0x87, KEY_TYPE.X25519, SLOT.KEY_MANAGEMENT, Tlv(0x7C, Tlv(0x82) + Tlv(0x81, b"m")))


# --- item 8: attestation ---------------------------------------------------------------------

OID_FIRMWARE, OID_SERIAL, OID_POLICY, OID_FORM_FACTOR = (x509.ObjectIdentifier(f"1.3.6.1.4.1.41482.3.{n}")
                                                         for n in (3, 7, 8, 9))


def verify_attestation(attested: x509.Certificate, f9: x509.Certificate, root: x509.Certificate) -> dict[str, bytes]:
    """The chain check of Yubico's PIV attestation guide: root -> F9 certificate -> attestation."""
    for child, parent in ((f9, root), (attested, f9)):
        assert child.issuer == parent.subject
        parent_key = parent.public_key()
        assert isinstance(parent_key, ec.EllipticCurvePublicKey)
        assert child.signature_hash_algorithm is not None
        parent_key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm))
    return {oid.dotted_string: attested.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
            for oid in (OID_FIRMWARE, OID_SERIAL, OID_POLICY, OID_FORM_FACTOR)}


def root_of(state: Path) -> x509.Certificate:
    import json

    return x509.load_pem_x509_certificate(json.loads(state.read_text())["piv"]["attestation"]["root_cert"].encode())


def test_attestation_of_generated_keys_only(token: VirtualToken) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from yubikit.piv import PIN_POLICY, TOUCH_POLICY

    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.RETIRED3, KEY_TYPE.ECCP384, PIN_POLICY.ALWAYS, TOUCH_POLICY.CACHED)
    attested = piv.attest_key(SLOT.RETIRED3)
    fields = verify_attestation(attested, piv.get_certificate(SLOT.ATTESTATION), root_of(token.state_path))
    assert attested.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == \
        public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert fields == {OID_FIRMWARE.dotted_string: bytes([5, 7, 2]), OID_SERIAL.dotted_string: b"\x02\x02\x14\x28",
                      OID_POLICY.dotted_string: bytes([PIN_POLICY.ALWAYS, TOUCH_POLICY.CACHED]),
                      OID_FORM_FACTOR.dotted_string: b"\x01"}
    piv.put_key(SLOT.RETIRED4, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ApduError) as imported:
        piv.attest_key(SLOT.RETIRED4)
    assert imported.value.sw == 0x6A80
    with pytest.raises(ApduError) as empty:
        piv.attest_key(SLOT.RETIRED5)
    assert empty.value.sw == 0x6A88
    before = piv.get_certificate(SLOT.ATTESTATION)
    for _ in range(3):  # block PIN and PUK, then reset: the attestation key stays, as from the factory
        with pytest.raises(Exception):  # noqa: B017
            piv.verify_pin("000000")
        with pytest.raises(Exception):  # noqa: B017
            piv.unblock_pin("00000000", "654321")
    piv.reset()
    assert session(token).get_certificate(SLOT.ATTESTATION) == before


# --- items 6, 7 and 8 through ykman, yubico-piv-tool and pcscd -------------------------------


def test_objects_identity_and_attestation_through_ykman(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                        tmp_path: Path) -> None:
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 6606))
    reader = first_reader(pcscd)
    info = ykman(pcscd, reader, "piv", "info")
    assert info.returncode == 0 and "PIV version:              5.7.2" in info.stdout, info.stdout + info.stderr
    assert "Management key algorithm: AES192" in info.stdout, info.stdout
    # item 6: an object outside 5FC101-5FFFFF, written by ykman, read by yubico-piv-tool
    blob = tmp_path / "blob"
    blob.write_bytes(b"vendor object 5F0001")
    written = ykman(pcscd, reader, "piv", "objects", "import", "-m", MGM, "5F0001", str(blob))
    assert written.returncode == 0, written.stderr
    read = ykman(pcscd, reader, "piv", "objects", "export", "5F0001", "-")
    assert read.returncode == 0 and read.stdout == "vendor object 5F0001", read
    if shutil.which("yubico-piv-tool"):
        piv_tool = tool(pcscd, "yubico-piv-tool", "-r", reader, "-a", "read-object", "--id", "0x5f0001",
                        "-f", "binary")
        assert piv_tool.returncode == 0 and piv_tool.stdout == "vendor object 5F0001", piv_tool
    # item 7: the 5.7 key types through ykman
    for slot, algorithm in (("9c", "ED25519"), ("9d", "X25519")):
        made = ykman(pcscd, reader, "piv", "keys", "generate", "-a", algorithm, "-m", MGM, slot,
                     str(tmp_path / f"{slot}.pem"))
        assert made.returncode == 0, made.stderr
    # item 8: ykman's attestation and the F9 certificate, verified up to this token's root
    for slot in ("9c", "9d"):
        attested = ykman(pcscd, reader, "piv", "keys", "attest", slot, str(tmp_path / f"att-{slot}.pem"))
        assert attested.returncode == 0, attested.stderr
    exported = ykman(pcscd, reader, "piv", "certificates", "export", "f9", str(tmp_path / "f9.pem"))
    assert exported.returncode == 0, exported.stderr
    f9 = x509.load_pem_x509_certificate((tmp_path / "f9.pem").read_bytes())
    for slot in ("9c", "9d"):
        attested_cert = x509.load_pem_x509_certificate((tmp_path / f"att-{slot}.pem").read_bytes())
        fields = verify_attestation(attested_cert, f9, root_of(tmp_path / "a.json"))
        assert fields[OID_FIRMWARE.dotted_string] == bytes([5, 7, 2])
        assert attested_cert.subject.rfc4514_string() == f"CN=YubiKey PIV Attestation {slot}"


def test_an_attestation_key_of_ones_own_in_f9(token: VirtualToken) -> None:
    """`ykman piv keys import f9` and `certificates import f9`: attestations then chain to that CA."""
    import datetime

    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my attestation CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(7).not_valid_before(datetime.datetime(2025, 1, 1))
          .not_valid_after(datetime.datetime(2035, 1, 1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA384()))
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.put_key(SLOT.ATTESTATION, ca_key)
    piv.put_certificate(SLOT.ATTESTATION, ca)
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    attested = piv.attest_key(SLOT.AUTHENTICATION)
    assert attested.issuer == name and attested.not_valid_after_utc == ca.not_valid_after_utc
    attested.verify_directly_issued_by(ca)
