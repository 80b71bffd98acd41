"""The virtual token's Security Domain and secure channels (SCP03, SCP11b) against yubikit's
own SCP code (PivSession, YubiOtpSession, ManagementSession, SecurityDomainSession with key
parameters) and the ykman CLI's --scp options through the private pcscd."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pcscd import PrivatePcscd, TokenProcess
from test_piv_virtual import first_reader, tool  # type: ignore[import-not-found]
from ykman.pcsc import ScardSmartCardConnection
from yubikit.core.smartcard import ApduError
from yubikit.core.smartcard.scp import KeyRef, Scp03KeyParams, Scp11KeyParams, StaticKeys
from yubikit.management import ManagementSession
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, PivSession
from yubikit.securitydomain import SecurityDomainSession
from yubikit.yubiotp import SLOT as OTP_SLOT
from yubikit.yubiotp import HmacSha1SlotConfiguration, YubiOtpSession

from tokenagent.virtual.token import VirtualToken

SCP11B = KeyRef(0x13, 0x01)


@pytest.fixture
def token(tmp_path: Path) -> VirtualToken:
    return VirtualToken(tmp_path / "token.json", serial=9901)


def connection(token: VirtualToken) -> ScardSmartCardConnection:
    return ScardSmartCardConnection(token.connection())


def scp11b_params(token: VirtualToken) -> Scp11KeyParams:
    chain = SecurityDomainSession(connection(token)).get_certificate_bundle(SCP11B)
    public = chain[-1].public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return Scp11KeyParams(SCP11B, public)


def test_security_domain_lists_its_factory_keys(token: VirtualToken) -> None:
    sd = SecurityDomainSession(connection(token))
    assert set(sd.get_key_information()) == {KeyRef(0x01, 0xFF), SCP11B}
    chain = sd.get_certificate_bundle(SCP11B)
    root = x509.load_pem_x509_certificate(
        json.loads(token.state_path.read_text())["piv"]["attestation"]["root_cert"].encode())
    chain[-1].verify_directly_issued_by(root)  # the token's own CA, as a YubiKey's is Yubico's
    assert sd.get_certificate_bundle(KeyRef(0x13, 0x02)) == []


@pytest.mark.parametrize("kind", ["scp03", "scp11b"])
def test_piv_otp_and_management_over_a_secure_channel(token: VirtualToken, kind: str) -> None:
    params = Scp03KeyParams() if kind == "scp03" else scp11b_params(token)
    piv = PivSession(connection(token), params)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP384)
    piv.verify_pin("123456")
    peer = ec.generate_private_key(ec.SECP384R1())
    assert piv.calculate_secret(SLOT.KEY_MANAGEMENT, peer.public_key()) == peer.exchange(ec.ECDH(), public)
    assert piv.get_certificate(SLOT.ATTESTATION)  # a long answer: encrypted, then chained
    blob = os.urandom(1500)  # a long command: MAC over the extended length form, then chained
    piv.put_object(0x5F0001, blob)
    assert piv.get_object(0x5F0001) == blob
    otp = YubiOtpSession(connection(token), params)
    otp.put_configuration(OTP_SLOT.ONE, HmacSha1SlotConfiguration(b"k" * 20))
    assert otp.calculate_hmac_sha1(OTP_SLOT.ONE, b"abc") == hmac.new(b"k" * 20, b"abc", hashlib.sha1).digest()
    with pytest.raises(Exception):  # noqa: B017 - another program's SELECT closed the channel
        YubiOtpSession(connection(token))
        otp.calculate_hmac_sha1(OTP_SLOT.ONE, b"abc")
    assert ManagementSession(connection(token), params).read_device_info().serial == 9901


def test_wrong_keys_and_plain_commands_are_refused(token: VirtualToken) -> None:
    with pytest.raises(ValueError, match="Incorrect SCP parameters"):  # yubikit sees a wrong card cryptogram
        PivSession(connection(token), Scp03KeyParams(keys=StaticKeys(*(os.urandom(16) for _ in range(3)))))
    piv = PivSession(connection(token), Scp03KeyParams())
    plain = piv.protocol.connection
    _, sw = plain.send_and_receive(bytes.fromhex("00FD000000"))  # GET VERSION without secure messaging
    assert sw == 0x6982
    version, sw = plain.send_and_receive(bytes.fromhex("00FD000000"))  # that ended the channel
    assert sw == 0x9000 and version == bytes([5, 7, 2])
    with pytest.raises(ApduError):  # a forged MAC
        piv = PivSession(connection(token), Scp03KeyParams())
        state = piv.protocol._processor.state  # type: ignore[attr-defined]
        state._mac_chain = os.urandom(16)
        piv.verify_pin("123456")


def test_ykman_cli_over_scp11b_and_scp03(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    state = tmp_path / "a.json"
    tokens.append(TokenProcess(pcscd, state, 6808))
    reader = first_reader(pcscd)
    def ykman(*args: str) -> subprocess.CompletedProcess[str]:
        return tool(pcscd, sys.executable, "-m", "ykman._cli.__main__", *args)

    info = ykman("--reader", reader, "sd", "info")
    assert info.returncode == 0, info.stderr
    assert "Default key set" in info.stdout and "tokenagent virtual SD SCP11b key" in info.stdout, info.stdout
    root = tmp_path / "root.pem"
    root.write_text(json.loads(state.read_text())["piv"]["attestation"]["root_cert"])
    over_scp11b = ykman("--scp-ca", str(root), "--scp-sd", "scp11b", "1", "--reader", reader, "piv", "info")
    assert over_scp11b.returncode == 0 and "PIV version:              5.7.2" in over_scp11b.stdout, over_scp11b
    default = "404142434445464748494a4b4c4d4e4f"
    over_scp03 = ykman("--scp", f"{default}:{default}:{default}", "--reader", reader, "otp", "info")
    assert over_scp03.returncode == 0 and "Slot 1: empty" in over_scp03.stdout, over_scp03
    wrong = ykman("--scp", f"{'00' * 16}:{'00' * 16}", "--reader", reader, "otp", "info")
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr, wrong
    keys = f"{default}:{default}:{default}"
    generated = ykman("--scp", keys, "--reader", reader, "sd", "keys", "generate", "scp11b", "2",
                      str(tmp_path / "sd2.pem"))
    assert generated.returncode == 0, generated.stderr
    deleted = ykman("--scp", keys, "--reader", reader, "sd", "keys", "delete", "scp11b", "1", "--force")
    assert deleted.returncode == 0, deleted.stderr
    listed = ykman("--reader", reader, "sd", "info")
    assert "KVN=0x02" in listed.stdout and "KVN=0x01" not in listed.stdout, listed.stdout
    before = json.loads(state.read_text())["sd"]["scp11"]["13:02"]["key"]
    reset = ykman("--reader", reader, "sd", "reset", "--force")  # blocks every key, so the card resets
    assert reset.returncode == 0, reset.stderr
    assert "13:02" not in json.loads(state.read_text())["sd"]["scp11"]  # the factory keys again
    assert json.loads(state.read_text())["sd"]["scp11"]["13:01"]["key"] != before
    again = ykman("--scp", f"{default}:{default}:{default}", "--reader", reader, "otp", "info")
    assert again.returncode == 0, again.stderr  # the default SCP03 keys work again


def test_a_blocked_key_and_the_reset_after_all_are(token: VirtualToken) -> None:
    sd = SecurityDomainSession(connection(token))
    for _ in range(65):  # INITIALIZE UPDATE without EXTERNAL AUTHENTICATE: failed authentications
        sd.protocol.send_apdu(0x80, 0x50, 0, 0, bytes(8))
    with pytest.raises(ApduError) as blocked:
        sd.protocol.send_apdu(0x80, 0x50, 0, 0, bytes(8))
    assert blocked.value.sw == 0x6983
    with pytest.raises(ApduError) as refused:
        PivSession(connection(token), Scp03KeyParams())
    assert refused.value.sw == 0x6983
    PivSession(connection(token), scp11b_params(token))  # the other key still opens a channel
    assert json.loads(token.state_path.read_text())["sd"]["tries"]["scp11b"] == 65


def test_key_management_over_scp03_only(token: VirtualToken) -> None:
    """yubikit's SecurityDomainSession: a key set of one's own replaces the default one, an SCP11b
    key generated, certified and used, the factory one deleted; none of it over SCP11b."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    sd = SecurityDomainSession(connection(token))
    sd.authenticate(Scp03KeyParams())
    own = StaticKeys(os.urandom(16), os.urandom(16), os.urandom(16))
    sd.put_key(KeyRef(0x01, 0x02), own)
    assert set(SecurityDomainSession(connection(token)).get_key_information()) == {KeyRef(0x01, 0x02), SCP11B}
    with pytest.raises(ValueError):  # the default keys are gone
        PivSession(connection(token), Scp03KeyParams())
    sd = SecurityDomainSession(connection(token))
    sd.authenticate(Scp03KeyParams(KeyRef(0x01, 0x02), own))
    public = sd.generate_ec_key(KeyRef(0x13, 0x02))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my SD CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public).serial_number(1)
            .not_valid_before(datetime.datetime(2025, 1, 1)).not_valid_after(datetime.datetime(2035, 1, 1))
            .sign(ca_key, hashes.SHA256()))
    sd.store_certificate_bundle(KeyRef(0x13, 0x02), [cert])
    sd.store_ca_issuer(KeyRef(0x13, 0x02), b"\x01" * 20)
    sd.delete_key(0x13, 0x01)
    fresh = SecurityDomainSession(connection(token))
    assert fresh.get_certificate_bundle(KeyRef(0x13, 0x02)) == [cert]
    assert fresh.get_supported_ca_identifiers(klcc=True) == {KeyRef(0x13, 0x02): b"\x01" * 20}
    assert set(fresh.get_key_information()) == {KeyRef(0x01, 0x02), KeyRef(0x13, 0x02)}
    params = Scp11KeyParams(KeyRef(0x13, 0x02), public)
    over_scp11b = SecurityDomainSession(connection(token))
    over_scp11b.authenticate(params)  # the new key opens channels
    with pytest.raises(ApduError) as refused:  # but SCP11b does not authenticate the host
        over_scp11b.delete_key(0x13, 0x02)
    assert refused.value.sw == 0x6982
    again = VirtualToken(token.state_path)  # all of it is kept
    assert set(SecurityDomainSession(connection(again)).get_key_information()) == {KeyRef(0x01, 0x02),
                                                                                  KeyRef(0x13, 0x02)}
