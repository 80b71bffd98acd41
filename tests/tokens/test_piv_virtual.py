"""The virtual token's PIV applet, driven by yubikit's PivSession (in-process) and by the
independent tools a user would point at a YubiKey: yubico-piv-tool (libykpiv) and the ykman
CLI, through the private pcscd."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from pcscd import PrivatePcscd, TokenProcess
from ykman.pcsc import ScardSmartCardConnection
from yubikit.core.smartcard import ApduError
from yubikit.piv import (
    DEFAULT_MANAGEMENT_KEY,
    KEY_TYPE,
    MANAGEMENT_KEY_TYPE,
    PIN_POLICY,
    SLOT,
    TOUCH_POLICY,
    InvalidPinError,
    PivSession,
)

from tokenagent.virtual.card import TouchMode
from tokenagent.virtual.token import VirtualToken

OAEP = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)


def session(token: VirtualToken) -> PivSession:
    return PivSession(ScardSmartCardConnection(token.connection()))


@pytest.fixture
def token(tmp_path: Path) -> VirtualToken:
    return VirtualToken(tmp_path / "token.json", serial=5150)


@pytest.mark.parametrize("key_type", [KEY_TYPE.ECCP256, KEY_TYPE.ECCP384])
def test_ecdh_on_the_card_equals_ecdh_with_its_public_key(token: VirtualToken, key_type: KEY_TYPE) -> None:
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.KEY_MANAGEMENT, key_type)
    piv.verify_pin("123456")
    curve = ec.SECP256R1() if key_type == KEY_TYPE.ECCP256 else ec.SECP384R1()
    for _ in range(3):
        peer = ec.generate_private_key(curve)
        assert piv.calculate_secret(SLOT.KEY_MANAGEMENT, peer.public_key()) == peer.exchange(ec.ECDH(), public)
    metadata = piv.get_slot_metadata(SLOT.KEY_MANAGEMENT)
    assert metadata.key_type == key_type and metadata.generated and metadata.pin_policy == PIN_POLICY.ONCE


def test_rsa_oaep_decrypt_and_signatures(token: VirtualToken) -> None:
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.RETIRED1, KEY_TYPE.RSA2048)
    piv.verify_pin("123456")
    secret = os.urandom(32)
    assert piv.decrypt(SLOT.RETIRED1, public.encrypt(secret, OAEP), OAEP) == secret  # type: ignore[union-attr]
    signature = piv.sign(SLOT.RETIRED1, KEY_TYPE.RSA2048, b"message", hashes.SHA256(), padding.PKCS1v15())
    public.verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]
    ec_public = piv.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP384)
    with pytest.raises(ApduError):  # slot 9c: PIN policy "always" wants a VERIFY right before
        piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP384, b"message", hashes.SHA384())
    piv.verify_pin("123456")
    signature = piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP384, b"message", hashes.SHA384())
    ec_public.verify(signature, b"message", ec.ECDSA(hashes.SHA384()))  # type: ignore[union-attr, call-arg]


def test_keys_need_the_pin_and_the_management_key(token: VirtualToken) -> None:
    piv = session(token)
    with pytest.raises(ApduError):  # no management key yet
        piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256)
    with pytest.raises(Exception):  # noqa: B017 - yubikit's BadResponseError or ApduError
        piv.authenticate(bytes(24))
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256)
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ApduError) as refused:  # PIN policy "once", not verified
        piv.calculate_secret(SLOT.KEY_MANAGEMENT, peer)
    assert refused.value.sw == 0x6982
    piv = session(token)  # selecting again forgets the PIN (libykpiv counts on it)
    piv.verify_pin("123456")
    piv.calculate_secret(SLOT.KEY_MANAGEMENT, peer)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    new_key = os.urandom(32)
    piv.set_management_key(MANAGEMENT_KEY_TYPE.AES256, new_key)
    piv = session(token)
    assert piv.management_key_type == MANAGEMENT_KEY_TYPE.AES256
    assert not piv.get_management_key_metadata().default_value
    piv.authenticate(new_key)
    assert piv.get_slot_metadata(SLOT.KEY_MANAGEMENT).public_key == public


def test_pin_retries_puk_unblock_and_reset(token: VirtualToken) -> None:
    piv = session(token)
    assert piv.get_pin_attempts() == 3
    for _ in range(5):  # an empty VERIFY spends nothing
        assert piv.get_pin_attempts() == 3
    with pytest.raises(InvalidPinError) as wrong:
        piv.verify_pin("000000")
    assert wrong.value.attempts_remaining == 2
    piv.verify_pin("123456")  # a right PIN restores the counter
    assert piv.get_pin_metadata().attempts_remaining == 3
    for left in (2, 1, 0):
        with pytest.raises(InvalidPinError) as wrong:
            piv.verify_pin("000000")
        assert wrong.value.attempts_remaining == left
    with pytest.raises(InvalidPinError):  # blocked: even the right PIN is refused
        piv.verify_pin("123456")
    with pytest.raises(ApduError):  # RESET only when PIN and PUK are both blocked
        piv.protocol.send_apdu(0, 0xFB, 0, 0)
    with pytest.raises(InvalidPinError) as wrong_puk:
        piv.unblock_pin("00000000", "246810")
    assert wrong_puk.value.attempts_remaining == 2
    piv.unblock_pin("12345678", "246810")
    piv.verify_pin("246810")
    assert piv.get_pin_metadata().attempts_remaining == 3 and not piv.get_pin_metadata().default_value
    piv.change_pin("246810", "13579246")
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.reset()  # yubikit blocks PIN and PUK, then resets
    assert piv.get_pin_metadata().default_value and piv.get_pin_attempts() == 3
    with pytest.raises(ApduError):
        piv.get_slot_metadata(SLOT.AUTHENTICATION)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ykman's helper parses the subject string itself
def test_state_survives_a_restart_and_objects_are_kept(tmp_path: Path) -> None:
    from ykman.piv import generate_self_signed_certificate

    state = tmp_path / "token.json"
    piv = session(VirtualToken(state, serial=77))
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256, touch_policy=TOUCH_POLICY.CACHED)
    piv.verify_pin("123456")
    cert = generate_self_signed_certificate(piv, SLOT.KEY_MANAGEMENT, public, "CN=tokenagent test",
                                            datetime.datetime(2025, 1, 1), datetime.datetime(2035, 1, 1))
    piv.put_certificate(SLOT.KEY_MANAGEMENT, cert)
    with pytest.raises(InvalidPinError):
        piv.verify_pin("999999")
    restarted = session(VirtualToken(state, serial=77))
    assert restarted.get_serial() == 77 and restarted.get_pin_attempts() == 2
    assert restarted.get_certificate(SLOT.KEY_MANAGEMENT) == cert
    metadata = restarted.get_slot_metadata(SLOT.KEY_MANAGEMENT)
    assert metadata.touch_policy == TOUCH_POLICY.CACHED
    assert metadata.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_touch_policy_is_enforced(tmp_path: Path) -> None:
    token = VirtualToken(tmp_path / "token.json", serial=78, touch=TouchMode.REFUSE)
    piv = session(token)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.RETIRED2, KEY_TYPE.ECCP256, PIN_POLICY.NEVER, TOUCH_POLICY.ALWAYS)
    peer = ec.generate_private_key(ec.SECP256R1())
    import tokenagent.virtual.piv as piv_module

    timeout, piv_module.TOUCH_TIMEOUT = piv_module.TOUCH_TIMEOUT, 0.3
    try:
        with pytest.raises(ApduError):  # nobody touches
            piv.calculate_secret(SLOT.RETIRED2, peer.public_key())
        token.presence.mode = TouchMode.AUTO
        assert piv.calculate_secret(SLOT.RETIRED2, peer.public_key()) == peer.exchange(ec.ECDH(), public)
    finally:
        piv_module.TOUCH_TIMEOUT = timeout


# --- independent tools through the private pcscd ---------------------------------------------


def tool(pcscd: PrivatePcscd, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env={**os.environ, **pcscd.env}, capture_output=True, text=True, timeout=120,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)
    return done


def ykman(pcscd: PrivatePcscd, reader: str, *args: str) -> subprocess.CompletedProcess[str]:
    return tool(pcscd, sys.executable, "-m", "ykman._cli.__main__", "--reader", reader, *args)


def first_reader(pcscd: PrivatePcscd) -> str:
    """The full name of the first vpcd reader (ykman matches a substring and wants one reader)."""
    done = tool(pcscd, sys.executable, "-c", "from smartcard.System import readers; print(readers()[0])")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_yubico_piv_tool_drives_the_virtual_token(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                   tmp_path: Path) -> None:
    if shutil.which("yubico-piv-tool") is None:
        pytest.skip("yubico-piv-tool is not installed (Debian package yubico-piv-tool)")
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 6101))
    reader = first_reader(pcscd)
    status = tool(pcscd, "yubico-piv-tool", "-r", reader, "-a", "status")
    assert status.returncode == 0, status.stderr
    assert "Version:\t5.7.2" in status.stdout and "Serial Number:\t6101" in status.stdout
    assert "PIN tries left:\t3" in status.stdout
    version = tool(pcscd, "yubico-piv-tool", "--version").stdout.split()[-1]
    if tuple(int(part) for part in version.split(".")[:2]) < (2, 3):
        # A 5.7 key's default management key is AES-192, which libykpiv before 2.3 (Debian 12: 2.2)
        # cannot use: it fails as it does with a real 5.7 key, and a 3DES key set with ykman helps
        refused = tool(pcscd, "yubico-piv-tool", "-r", reader, "-a", "generate", "-s", "9d", "-A", "ECCP256")
        assert refused.returncode != 0 and "Failed authentication" in refused.stderr, refused
        tdes = ykman(pcscd, reader, "piv", "access", "change-management-key", "-a", "TDES", "-m",
                     DEFAULT_MANAGEMENT_KEY.hex(), "-n", DEFAULT_MANAGEMENT_KEY.hex(), "--force")
        assert tdes.returncode == 0, tdes.stderr
    generated = tool(pcscd, "yubico-piv-tool", "-r", reader, "-a", "generate", "-s", "9d", "-A", "ECCP256")
    assert generated.returncode == 0, generated.stderr
    public = serialization.load_pem_public_key(generated.stdout.encode())
    wrong = tool(pcscd, "yubico-piv-tool", "-r", reader, "-a", "verify-pin", "-P", "000000")
    assert wrong.returncode != 0 and "2 tries left" in wrong.stderr, wrong.stderr
    right = tool(pcscd, "yubico-piv-tool", "-r", reader, "-a", "verify-pin", "-P", "123456")
    assert right.returncode == 0 and "Successfully verified PIN" in right.stdout + right.stderr
    # the key generated by yubico-piv-tool does ECDH for yubikit, after the token was restarted
    tokens[0].remove()
    tokens.clear()
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 6101))
    probe = tool(pcscd, sys.executable, "-c", _ECDH_PROBE, reader)
    assert probe.returncode == 0, probe.stderr
    peer = serialization.load_pem_private_key(probe.stdout.split("|")[0].encode(), None)
    assert bytes.fromhex(probe.stdout.split("|")[1].strip()) == peer.exchange(ec.ECDH(), public)  # type: ignore[union-attr, arg-type]


_ECDH_PROBE = """
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from smartcard.System import readers
from ykman.pcsc import ScardSmartCardConnection
from yubikit.piv import SLOT, PivSession
reader = next(r for r in readers() if str(r) == sys.argv[1])
piv = PivSession(ScardSmartCardConnection(reader.createConnection()))
piv.verify_pin("123456")
peer = ec.generate_private_key(ec.SECP256R1())
secret = piv.calculate_secret(SLOT.KEY_MANAGEMENT, peer.public_key())
pem = peer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
print(pem.decode() + "|" + secret.hex())
"""


def test_ykman_cli_drives_the_virtual_token(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 6202))
    reader = first_reader(pcscd)
    info = ykman(pcscd, reader, "info")
    assert info.returncode == 0, info.stderr
    assert "Serial number: 6202" in info.stdout and "Firmware version: 5.7.2" in info.stdout
    assert "PIV" in info.stdout and "FIDO2" in info.stdout
    generated = ykman(pcscd, reader, "piv", "keys", "generate", "-a", "ECCP384", "-m",
                      DEFAULT_MANAGEMENT_KEY.hex(), "9a", str(tmp_path / "pub.pem"))
    assert generated.returncode == 0, generated.stderr
    assert isinstance(serialization.load_pem_public_key((tmp_path / "pub.pem").read_bytes()), ec.EllipticCurvePublicKey)
    changed = ykman(pcscd, reader, "piv", "access", "change-pin", "-P", "123456", "-n", "654321")
    assert changed.returncode == 0, changed.stderr
    piv_info = ykman(pcscd, reader, "piv", "info")
    assert piv_info.returncode == 0, piv_info.stderr
    assert "PIN tries remaining:      3/3" in piv_info.stdout and "Slot 9A" in piv_info.stdout
    assert "ECCP384" in piv_info.stdout and "Using default PIN" not in piv_info.stdout
    programmed = ykman(pcscd, reader, "otp", "chalresp", "--generate", "2", "--force")
    assert programmed.returncode == 0, programmed.stderr
    secret = bytes.fromhex(programmed.stdout.split("(hex):")[1].split()[0])
    calculated = ykman(pcscd, reader, "otp", "calculate", "2", "00112233")
    assert calculated.returncode == 0, calculated.stderr
    assert calculated.stdout.strip() == hmac.new(secret, bytes.fromhex("00112233"), hashlib.sha1).hexdigest()
    fido = ykman(pcscd, reader, "fido", "info")
    assert fido.returncode == 0 and "PIN:" in fido.stdout and "Not set" in fido.stdout, fido.stdout + fido.stderr


def test_unplug_during_a_piv_command_then_replug(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                 tmp_path: Path) -> None:
    """Pulled out while the card waits for a touch: the client gets a clean error; the key survives."""
    token = TokenProcess(pcscd, tmp_path / "a.json", 6303, touch="explicit")
    tokens.append(token)
    reader = first_reader(pcscd)
    setup = tool(pcscd, sys.executable, "-c", _SETUP_TOUCH_KEY, reader)
    assert setup.returncode == 0, setup.stderr
    waiting = subprocess.Popen([sys.executable, "-c", _USE_TOUCH_KEY, reader], env={**os.environ, **pcscd.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    assert waiting.poll() is None  # waiting for the touch
    started = time.monotonic()
    token.unplug()
    out, err = waiting.communicate(timeout=30)
    assert time.monotonic() - started < 20
    assert waiting.returncode == 3, (out, err)  # the probe's "card went away" exit
    token.plug()
    stop = threading.Event()

    def person() -> None:  # touches the key whenever it waits (a touch just before the wait counts for 1 s)
        while not stop.wait(0.3):
            token.touch()

    toucher = threading.Thread(target=person, daemon=True)
    toucher.start()
    try:
        again = tool(pcscd, sys.executable, "-c", _USE_TOUCH_KEY, reader)
    finally:
        stop.set()
        toucher.join()
    assert again.returncode == 0 and again.stdout.strip() == setup.stdout.strip(), again.stderr


_SETUP_TOUCH_KEY = """
import sys
from smartcard.System import readers
from ykman.pcsc import ScardSmartCardConnection
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, PIN_POLICY, SLOT, TOUCH_POLICY, PivSession
from cryptography.hazmat.primitives import serialization
reader = next(r for r in readers() if str(r) == sys.argv[1])
piv = PivSession(ScardSmartCardConnection(reader.createConnection()))
piv.authenticate(DEFAULT_MANAGEMENT_KEY)
public = piv.generate_key(SLOT.RETIRED5, KEY_TYPE.ECCP256, PIN_POLICY.NEVER, TOUCH_POLICY.ALWAYS)
print(public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint).hex())
"""

_USE_TOUCH_KEY = """
import sys
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from smartcard.System import readers
from ykman.pcsc import ScardSmartCardConnection
from yubikit.piv import SLOT, PivSession
reader = next(r for r in readers() if str(r) == sys.argv[1])
piv = PivSession(ScardSmartCardConnection(reader.createConnection()))
try:
    piv.calculate_secret(SLOT.RETIRED5, ec.generate_private_key(ec.SECP256R1()).public_key())
except Exception as err:
    print(type(err).__name__, err, file=sys.stderr)
    sys.exit(3)
public = piv.get_slot_metadata(SLOT.RETIRED5).public_key
print(public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint).hex())
"""


_PYSCARD_PIV = """
import json, os, sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from smartcard.System import readers
from ykman.pcsc import ScardSmartCardConnection
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, InvalidPinError, PivSession
reader = next(r for r in readers() if str(r) == sys.argv[1])
piv = PivSession(ScardSmartCardConnection(reader.createConnection()))
piv.authenticate(DEFAULT_MANAGEMENT_KEY)
out = {}
for slot, key_type, curve in ((SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256, ec.SECP256R1()),
                              (SLOT.RETIRED1, KEY_TYPE.ECCP384, ec.SECP384R1())):
    public = piv.generate_key(slot, key_type)
    piv.verify_pin("123456")
    peer = ec.generate_private_key(curve)
    out[key_type.name] = piv.calculate_secret(slot, peer.public_key()) == peer.exchange(ec.ECDH(), public)
public = piv.generate_key(SLOT.RETIRED2, KEY_TYPE.RSA2048)
oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
secret = os.urandom(32)
out["RSA2048"] = piv.decrypt(SLOT.RETIRED2, public.encrypt(secret, oaep), oaep) == secret
tries = []
for _ in range(3):
    try:
        piv.verify_pin("000000")
    except InvalidPinError as err:
        tries.append(err.attempts_remaining)
out["tries"] = tries
piv.unblock_pin("12345678", "654321")
piv.verify_pin("654321")
out["after_unblock"] = piv.get_pin_attempts()
print(json.dumps(out))
"""


def test_piv_session_over_pyscard_through_pcscd(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                tmp_path: Path) -> None:
    """yubikit's PivSession over pyscard and the real pcscd: the three key types, PIN retries, PUK unblock."""
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 6404))
    done = tool(pcscd, sys.executable, "-c", _PYSCARD_PIV, first_reader(pcscd))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ECCP256": True, "ECCP384": True, "RSA2048": True, "tries": [2, 1, 0],
                                       "after_unblock": 3}
