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
