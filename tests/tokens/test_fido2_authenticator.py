"""The virtual token's CTAP 2.1 authenticator against clients we did not write (python-fido2's Ctap2,
ClientPin, Fido2Client, Fido2Server, CredentialManagement; ykman through the private pcscd), over both
framings: getPINRetries without a PIN, the reset window after power-up, the list limits of getInfo,
EdDSA credentials, getNextAssertion and credential management (0x0A and the 0x41 preview)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fido2.client import ClientError, DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin
from fido2.pcsc import CtapPcscDevice
from fido2.server import Fido2Server
from pcscd import PrivatePcscd, TokenProcess

from tokenagent.virtual import ctap2 as ctap2_module
from tokenagent.virtual.card import TouchMode
from tokenagent.virtual.token import VirtualToken

PIN = "4321"
RP = {"id": "example.com", "name": "Example RP"}
ES256, EDDSA = {"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -8}


class Interaction(UserInteraction):
    def request_pin(self, permissions: Any, rp_id: str | None) -> str:
        return PIN


def device(tok: VirtualToken, transport: str) -> Any:
    return tok.hid_device() if transport == "hid" else CtapPcscDevice(tok.connection(), "virtual")


@pytest.fixture(params=["pcsc", "hid"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def client_for(dev: Any, origin: str = "https://example.com") -> Fido2Client:
    return Fido2Client(dev, client_data_collector=DefaultClientDataCollector(origin), user_interaction=Interaction())


def register(client: Fido2Client, server: Fido2Server, user: dict[str, Any], alg: dict[str, Any] = ES256,
             resident: bool = True, exclude: list[Any] | None = None) -> Any:
    options, state = server.register_begin(user, exclude, resident_key_requirement="required" if resident
                                           else "discouraged")
    result = client.make_credential({**options["publicKey"], "pubKeyCredParams": [alg]})
    return server.register_complete(state, result).credential_data


def credman(ctap: Ctap2) -> CredentialManagement:
    client_pin = ClientPin(ctap)
    token = client_pin.get_pin_token(PIN, ClientPin.PERMISSION.CREDENTIAL_MGMT)
    return CredentialManagement(ctap, client_pin.protocol, token)


def ykman(pcscd: PrivatePcscd, reader: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ykman._cli.__main__", "--reader", reader, *args],
                          env={**os.environ, **pcscd.env}, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def first_reader(pcscd: PrivatePcscd) -> str:
    done = subprocess.run([sys.executable, "-c", "from smartcard.System import readers; print(readers()[0])"],
                          env={**os.environ, **pcscd.env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- getPINRetries without a PIN ---------------------------------------------------------

def test_pin_retries_without_a_pin_is_pin_not_set(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=1)
    ctap = Ctap2(device(tok, transport))
    client_pin = ClientPin(ctap)
    with pytest.raises(CtapError) as raised:
        client_pin.get_pin_retries()
    assert raised.value.code == CtapError.ERR.PIN_NOT_SET
    client_pin.set_pin(PIN)
    assert client_pin.get_pin_retries()[0] == 8


# --- authenticatorReset only just after power-up, with a touch --------------------------

def test_reset_only_within_five_seconds_of_power_up(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=2)
    ctap = Ctap2(device(tok, transport))
    ClientPin(ctap).set_pin(PIN)
    tok.fido2.powered_at -= ctap2_module.RESET_WINDOW + 1  # as if plugged in six seconds ago
    with pytest.raises(CtapError) as raised:
        ctap.reset()
    assert raised.value.code == CtapError.ERR.NOT_ALLOWED
    assert Ctap2(device(tok, transport)).get_info().options["clientPin"] is True  # nothing was reset
    tok.replug()
    ctap = Ctap2(device(tok, transport))
    ctap.reset()
    assert ctap.get_info().options["clientPin"] is False


def test_reset_waits_for_a_touch(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=3, touch=TouchMode.EXPLICIT)
    ctap = Ctap2(device(tok, transport))
    ClientPin(ctap).set_pin(PIN)
    cancel = threading.Event()
    statuses: list[int] = []
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(CtapError) as raised:
        ctap.reset(event=cancel, on_keepalive=statuses.append)
    assert raised.value.code == CtapError.ERR.KEEPALIVE_CANCEL and 2 in statuses  # UP needed, nobody touched
    assert ctap.get_info().options["clientPin"] is True
    tok.replug()
    ctap = Ctap2(device(tok, transport))
    threading.Timer(0.3, tok.touch).start()
    ctap.reset()
    assert ctap.get_info().options["clientPin"] is False


# --- list limits ------------------------------------------------------------------------

def test_list_limits_are_stated_and_enforced_and_the_client_splits(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=4)
    dev = device(tok, transport)
    ctap = Ctap2(dev)
    assert (ctap.info.max_creds_in_list, ctap.info.max_cred_id_length) == (8, 128)
    ClientPin(ctap).set_pin(PIN)
    server = Fido2Server(RP)
    user = {"id": b"user", "name": "user"}
    cred = register(client_for(dev), server, user, resident=False)
    assert len(cred.credential_id) <= 128
    too_many = [{"type": "public-key", "id": os.urandom(64)} for _ in range(9)]
    with pytest.raises(CtapError) as raised:
        ctap.get_assertion(RP["id"], b"c" * 32, too_many, options={"up": False})
    assert raised.value.code == CtapError.ERR.LIMIT_EXCEEDED
    too_large = [{"type": "public-key", "id": os.urandom(128)} for _ in range(8)]
    ctap._max_msg_size = 4096  # let the request leave the client: the authenticator refuses it itself
    with pytest.raises(CtapError) as raised:
        ctap.get_assertion(RP["id"], b"c" * 32, too_large, options={"up": False})
    assert raised.value.code == CtapError.ERR.REQUEST_TOO_LARGE
    # Fido2Client drops ids over 128 bytes and asks in chunks of 8: the one credential in 30 is found
    exclude = [{"type": "public-key", "id": os.urandom(128)} for _ in range(29)]
    exclude.insert(17, {"type": "public-key", "id": cred.credential_id})
    exclude.append({"type": "public-key", "id": os.urandom(129)})
    with pytest.raises(ClientError, match="CREDENTIAL_EXCLUDED"):
        register(client_for(dev), server, user, resident=False, exclude=exclude)


# --- EdDSA, resident credentials, getNextAssertion, credential management ---------------

def test_eddsa_and_es256_credentials_verify_with_fido2_server(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=5)
    dev = device(tok, transport)
    assert {"type": "public-key", "alg": -8} in Ctap2(dev).info.algorithms
    ClientPin(Ctap2(dev)).set_pin(PIN)
    server = Fido2Server(RP)
    for alg in (EDDSA, ES256):
        cred = register(client_for(dev), server, {"id": b"u", "name": "u"}, alg, resident=False)
        assert cred.public_key[3] == alg["alg"]
        options, state = server.authenticate_begin([cred])
        result = client_for(dev).get_assertion(options.public_key).get_response(0)
        assert server.authenticate_complete(state, [cred], result) == cred


def test_resident_credentials_and_get_next_assertion(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=6)
    dev = device(tok, transport)
    ClientPin(Ctap2(dev)).set_pin(PIN)
    server = Fido2Server(RP)
    creds = [register(client_for(dev), server, {"id": f"user{i}".encode(), "name": f"user {i}"},
                      (ES256, EDDSA)[i % 2]) for i in range(3)]
    options, state = server.authenticate_begin(user_verification="required")
    selection = client_for(dev).get_assertion(options.public_key)
    assertions = selection.get_assertions()  # the first from getAssertion, two more by getNextAssertion
    assert [a.user["id"] for a in assertions] == [b"user2", b"user1", b"user0"]  # the newest first
    assert assertions[0].number_of_credentials == 3
    for index in range(3):
        server.authenticate_complete(state, creds, selection.get_response(index))
    with pytest.raises(CtapError) as raised:
        Ctap2(dev).get_next_assertion()  # nothing pending any more
    assert raised.value.code == CtapError.ERR.NOT_ALLOWED


def test_credential_management_list_update_delete(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=7)
    dev = device(tok, transport)
    ctap = Ctap2(dev)
    assert ctap.info.options["credMgmt"] and ctap.info.options["credentialMgmtPreview"]
    ClientPin(ctap).set_pin(PIN)
    assert credman(ctap).get_metadata() == {1: 0, 2: 100}
    other = {"id": "example.org", "name": "Other RP"}
    made = [register(client_for(dev), Fido2Server(RP), {"id": b"alice", "name": "alice", "displayName": "Alice"},
                     EDDSA),
            register(client_for(dev), Fido2Server(RP), {"id": b"bob", "name": "bob"}),
            register(client_for(dev, "https://example.org"), Fido2Server(other), {"id": b"carol", "name": "carol"})]
    cm = credman(ctap)
    assert cm.get_metadata() == {1: 3, 2: 97}
    assert ctap.get_info().remaining_disc_creds == 97
    rps = cm.enumerate_rps()
    assert sorted(r[3]["id"] for r in rps) == ["example.com", "example.org"]
    assert {r[3]["id"]: r[3]["name"] for r in rps} == {"example.com": "Example RP", "example.org": "Other RP"}
    listed = cm.enumerate_creds(Fido2Server(RP).rp.id_hash)
    by_user = {c[6]["id"]: c for c in listed}
    assert by_user[b"alice"][6] == {"id": b"alice", "name": "alice", "displayName": "Alice"}
    assert by_user[b"alice"][7]["id"] == made[0].credential_id
    assert by_user[b"alice"][8] == made[0].public_key and by_user[b"alice"][8][3] == -8
    assert by_user[b"bob"][8] == made[1].public_key and by_user[b"alice"][10] == 1
    cm.update_user_info(by_user[b"bob"][7], {"id": b"bob", "name": "robert", "displayName": "Robert"})
    with pytest.raises(CtapError) as raised:
        cm.update_user_info(by_user[b"bob"][7], {"id": b"mallory", "name": "x"})  # another user id
    assert raised.value.code == CtapError.ERR.INVALID_PARAMETER
    cm.delete_cred(by_user[b"alice"][7])
    listed = cm.enumerate_creds(Fido2Server(RP).rp.id_hash)
    assert [c[6] for c in listed] == [{"id": b"bob", "name": "robert", "displayName": "Robert"}]
    with pytest.raises(CtapError) as raised:
        cm.delete_cred(by_user[b"alice"][7])
    assert raised.value.code == CtapError.ERR.NO_CREDENTIALS
    assert cm.get_metadata() == {1: 2, 2: 98}
    # the credential is gone from assertions too; a token without the cm permission is refused
    options, state = Fido2Server(RP).authenticate_begin(user_verification="required")
    assert len(client_for(dev).get_assertion(options.public_key).get_assertions()) == 1
    token = ClientPin(ctap).get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP["id"])
    with pytest.raises(CtapError) as raised:
        CredentialManagement(ctap, ClientPin(ctap).protocol, token).get_metadata()
    assert raised.value.code == CtapError.ERR.PIN_AUTH_INVALID


def test_credential_management_preview_command(tmp_path: Path, transport: str) -> None:
    """A client that knows only the CTAP 2.1 preview (0x41, as YubiKey 5 firmware before 5.4 offers)."""
    tok = VirtualToken(tmp_path / "t.json", serial=8)
    dev = device(tok, transport)
    ctap = Ctap2(dev)
    ClientPin(ctap).set_pin(PIN)
    register(client_for(dev), Fido2Server(RP), {"id": b"dave", "name": "dave"})
    options = {k: v for k, v in ctap.info.options.items() if k != "credMgmt"}
    ctap._info = replace(ctap.info, options=options)
    cm = credman(ctap)
    (rp,) = cm.enumerate_rps()
    (cred,) = cm.enumerate_creds(rp[4])
    assert cred[6]["name"] == "dave"
    cm.delete_cred(cred[7])
    assert cm.get_metadata()[1] == 0
    assert json.loads(tok.state_path.read_text())["fido2"]["resident"] == []


@pytest.mark.pcscd
def test_ykman_lists_and_deletes_resident_credentials(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                      tmp_path: Path) -> None:
    state = tmp_path / "t.json"
    seed = VirtualToken(state, serial=8201)
    dev = device(seed, "pcsc")
    ClientPin(Ctap2(dev)).set_pin(PIN)
    made = [register(client_for(dev), Fido2Server(RP), {"id": b"erin", "name": "erin", "displayName": "Erin"}),
            register(client_for(dev), Fido2Server(RP), {"id": b"frank", "name": "frank"}, EDDSA)]
    del seed, dev
    tokens.append(TokenProcess(pcscd, state, 8201))
    reader = first_reader(pcscd)
    listed = ykman(pcscd, reader, "fido", "credentials", "list", "--pin", PIN, "--csv")
    assert listed.returncode == 0, listed.stderr
    rows = list(csv.DictReader(io.StringIO(listed.stdout.strip())))
    assert {(r["rp_id"], r["user_name"], r["user_display_name"], r["credential_id"]) for r in rows} == {
        ("example.com", "erin", "Erin", made[0].credential_id.hex()),
        ("example.com", "frank", "", made[1].credential_id.hex())}
    deleted = ykman(pcscd, reader, "fido", "credentials", "delete", made[1].credential_id.hex()[:12], "--pin", PIN,
                    "--force")
    assert deleted.returncode == 0 and "Credential deleted." in deleted.stdout, deleted.stderr + deleted.stdout
    listed = ykman(pcscd, reader, "fido", "credentials", "list", "--pin", PIN, "--csv")
    assert listed.returncode == 0, listed.stderr
    assert [r["user_name"] for r in csv.DictReader(io.StringIO(listed.stdout.strip()))] == ["erin"]
    info = ykman(pcscd, reader, "fido", "info")
    assert info.returncode == 0 and "PIN:" in info.stdout, info.stderr


# --- large blobs ---------------------------------------------------------------------------------

def test_large_blobs_with_fido2_client_and_large_blobs(tmp_path: Path, transport: str) -> None:
    from fido2.ctap2.blob import LargeBlobs
    from fido2.utils import websafe_encode

    tok = VirtualToken(tmp_path / "t.json", serial=9)
    dev = device(tok, transport)
    ctap = Ctap2(dev)
    assert ctap.info.options["largeBlobs"] and "largeBlobKey" in ctap.info.extensions
    assert ctap.info.max_large_blob == 4096
    key = os.urandom(32)
    LargeBlobs(ctap).put_blob(key, b"before any PIN")  # no PIN: writes need no token (CTAP 2.1 §6.10.2)
    ClientPin(ctap).set_pin(PIN)
    with pytest.raises(CtapError) as raised:
        LargeBlobs(ctap).put_blob(key, b"x")
    assert raised.value.code == CtapError.ERR.PUAT_REQUIRED
    server = Fido2Server(RP)
    options, state = server.register_begin({"id": b"gina", "name": "gina"}, resident_key_requirement="required",
                                           user_verification="required")
    made = client_for(dev).make_credential({**options["publicKey"], "extensions": {"largeBlob": {"support":
                                                                                                 "required"}}})
    assert made.client_extension_results["largeBlob"]["supported"] is True
    cred = server.register_complete(state, made).credential_data
    options, state = server.authenticate_begin([cred], user_verification="required")
    written = client_for(dev).get_assertion({**options["publicKey"], "extensions": {"largeBlob": {
        "write": websafe_encode(b"a secret note")}}}).get_response(0)
    assert written.client_extension_results["largeBlob"]["written"] is True
    # the blob is kept in the state file: a restarted token gives it back
    dev = device(VirtualToken(tok.state_path), transport)
    read = client_for(dev).get_assertion({**options["publicKey"], "extensions": {"largeBlob": {"read": True}}})
    assert read.get_response(0).client_extension_results.large_blob.blob == b"a secret note"
    ctap = Ctap2(dev)
    client_pin = ClientPin(ctap)
    token = client_pin.get_pin_token(PIN, ClientPin.PERMISSION.LARGE_BLOB_WRITE)
    blobs = LargeBlobs(ctap, client_pin.protocol, token)
    assert blobs.get_blob(key) == b"before any PIN" and len(blobs.read_blob_array()) == 2
    (listed,) = credman(ctap).enumerate_creds(server.rp.id_hash)
    assert listed[11] and len(listed[11]) == 32  # the largeBlobKey, as enumerateCredentials gives it
    with pytest.raises(CtapError) as raised:
        blobs.write_blob_array([{1: os.urandom(4096)}])
    assert raised.value.code == CtapError.ERR.LARGE_BLOB_STORAGE_FULL
    token = client_pin.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP["id"])
    with pytest.raises(CtapError) as raised:
        LargeBlobs(ctap, client_pin.protocol, token).put_blob(key, b"y")  # a token without lbw
    assert raised.value.code == CtapError.ERR.PIN_AUTH_INVALID


@pytest.mark.pcscd
def test_ykman_fido_reset_with_remove_and_reinsert(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                    tmp_path: Path) -> None:
    """'ykman fido reset' asks to take the key off the reader and put it back, then resets within
    the 5 s after power-up: its two steps are done through the token's control socket."""
    state = tmp_path / "t.json"
    seed = VirtualToken(state, serial=8202)
    dev = device(seed, "pcsc")
    ClientPin(Ctap2(dev)).set_pin(PIN)
    register(client_for(dev), Fido2Server(RP), {"id": b"hana", "name": "hana"})
    del seed, dev
    token = TokenProcess(pcscd, state, 8202)
    tokens.append(token)
    reader = first_reader(pcscd)
    proc = subprocess.Popen([sys.executable, "-m", "ykman._cli.__main__", "--reader", reader, "fido", "reset",
                             "--force"], env={**os.environ, **pcscd.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    said: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            said.append(line.strip())
            if "Remove your YubiKey" in line:
                token.unplug()
            elif "Place your YubiKey back" in line:
                token.plug()
        assert proc.wait(timeout=60) == 0, said
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "FIDO application data reset." in said, said
    fido = json.loads(state.read_text())["fido2"]
    assert fido["pin_hash"] is None and fido["resident"] == []


def test_credential_ids_of_the_earlier_format_still_open() -> None:
    """Tokens made before the seed-based ids (format 1: the sealed CBOR of the scalar and both
    CredRandom values) keep working: their credentials open, sign and give the same hmac-secret."""
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from fido2 import cbor

    from tokenagent.virtual.fido2_keys import new_credential, open_credential

    device_key, rp_hash = os.urandom(32), hashlib.sha256(b"example.com").digest()
    private = ec.generate_private_key(ec.SECP256R1())
    secret = {"d": private.private_numbers().private_value.to_bytes(32, "big"), "cr": b"r" * 32, "cru": b"u" * 32,
              "protect": 2}
    nonce = os.urandom(12)
    legacy = b"\x01" + nonce + AESGCM(device_key).encrypt(nonce, cbor.encode(secret), rp_hash)
    key = open_credential(device_key, rp_hash, legacy)
    assert key is not None and (key.alg, key.protect, key.cred_random, key.cred_random_uv) == (-7, 2, b"r" * 32,
                                                                                              b"u" * 32)
    private.public_key().verify(key.sign(b"message"), b"message", ec.ECDSA(hashes.SHA256()))
    assert open_credential(device_key, hashlib.sha256(b"example.org").digest(), legacy) is None  # another rp
    cred_id, made = new_credential(device_key, rp_hash, -8, 3)
    opened = open_credential(device_key, rp_hash, cred_id)
    assert len(cred_id) == 63 and opened is not None
    assert (opened.alg, opened.protect, opened.cose_public_key()) == (-8, 3, made.cose_public_key())


# --- authenticatorConfig and credBlob --------------------------------------------------------------

def test_authenticator_config_min_pin_length_force_change_and_always_uv(tmp_path: Path, transport: str) -> None:
    from fido2.ctap2.config import Config

    tok = VirtualToken(tmp_path / "t.json", serial=10)
    dev = device(tok, transport)
    ctap = Ctap2(dev)
    assert ctap.info.options["authnrCfg"] and ctap.info.options["setMinPINLength"]
    client_pin = ClientPin(ctap)
    client_pin.set_pin(PIN)

    def config() -> Config:
        token = ClientPin(ctap).get_pin_token(PIN, ClientPin.PERMISSION.AUTHENTICATOR_CFG)
        return Config(ctap, ClientPin(ctap).protocol, token)

    config().set_min_pin_length(min_pin_length=6, rp_ids=["example.com"])
    info = ctap.get_info()
    assert (info.min_pin_length, info.force_pin_change) == (6, True)  # the current PIN is shorter
    with pytest.raises(CtapError) as raised:
        client_pin.get_pin_token(PIN)  # a right PIN, but it must be changed first
    assert raised.value.code == CtapError.ERR.PIN_INVALID
    assert client_pin.get_pin_retries()[0] == 8  # and it spent no try
    with pytest.raises(CtapError) as raised:
        client_pin.change_pin(PIN, "54321")
    assert raised.value.code == CtapError.ERR.PIN_POLICY_VIOLATION
    client_pin.change_pin(PIN, "654321")
    assert ctap.get_info().force_pin_change is False
    with pytest.raises(CtapError) as raised:
        token = ClientPin(ctap).get_pin_token("654321", ClientPin.PERMISSION.AUTHENTICATOR_CFG)
        Config(ctap, ClientPin(ctap).protocol, token).set_min_pin_length(min_pin_length=5)  # only grows
    assert raised.value.code == CtapError.ERR.PIN_POLICY_VIOLATION
    # the minPinLength extension tells the listed rp the minimum
    client_pin.change_pin("654321", PIN + "99")
    server = Fido2Server(RP)
    options, state = server.register_begin({"id": b"ivan", "name": "ivan"})

    class SixDigits(Interaction):
        def request_pin(self, permissions: Any, rp_id: str | None) -> str:
            return PIN + "99"

    client = Fido2Client(dev, client_data_collector=DefaultClientDataCollector("https://example.com"),
                         user_interaction=SixDigits())
    made = client.make_credential({**options["publicKey"], "extensions": {"minPinLength": True}})
    assert server.register_complete(state, made).extensions["minPinLength"] == 6
    # alwaysUv: no makeCredential without the PIN; a reset restores the defaults
    token = ClientPin(ctap).get_pin_token(PIN + "99", ClientPin.PERMISSION.AUTHENTICATOR_CFG)
    Config(ctap, ClientPin(ctap).protocol, token).toggle_always_uv()
    assert ctap.get_info().options["alwaysUv"] is True
    with pytest.raises(CtapError) as raised:
        ctap.make_credential(b"c" * 32, RP, {"id": b"x", "name": "x"}, [ES256])
    assert raised.value.code == CtapError.ERR.PUAT_REQUIRED
    tok.replug()
    ctap = Ctap2(device(tok, transport))
    ctap.reset()
    info = ctap.get_info()
    assert (info.min_pin_length, info.options["alwaysUv"], info.options["clientPin"]) == (4, False, False)


def test_cred_blob_kept_with_a_resident_credential(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=11)
    dev = device(tok, transport)
    ClientPin(Ctap2(dev)).set_pin(PIN)
    assert Ctap2(dev).info.max_cred_blob_length == 32
    server = Fido2Server(RP)
    blob = os.urandom(32)
    for resident, kept in ((True, True), (False, False)):
        options, state = server.register_begin({"id": b"judy", "name": "judy"}, resident_key_requirement=(
            "required" if resident else "discouraged"), user_verification="required")
        made = client_for(dev).make_credential({**options["publicKey"], "extensions": {"credBlob": blob}})
        auth_data = server.register_complete(state, made)
        assert auth_data.extensions["credBlob"] is kept
        options, state = server.authenticate_begin([auth_data.credential_data], user_verification="required")
        got = client_for(dev).get_assertion({**options["publicKey"], "extensions": {"getCredBlob": True}})
        assert got.get_response(0).response.authenticator_data.extensions["credBlob"] == (blob if kept else b"")
