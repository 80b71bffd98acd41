"""The virtual token's CTAP 2.1 authenticator as python-fido2 sees it, over both framings
(CtapPcscDevice: NFC/ISO 7816; CtapHidDevice: CTAPHID), plus the CTAPHID framing itself with
raw reports: channels, fragmentation, sequence errors, busy channels, cancel, unplug."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2
from fido2.hid import CTAPHID
from fido2.pcsc import CtapPcscDevice
from pcscd import PrivatePcscd, TokenProcess

from tokenagent.virtual.card import TouchMode
from tokenagent.virtual.ctaphid import BROADCAST, PACKET_SIZE, HidFrontEnd
from tokenagent.virtual.token import VirtualToken

RP = {"id": "example.org", "name": "example"}
USER = {"id": b"user", "name": "user"}
ES256 = [{"type": "public-key", "alg": -7}]


def device(tok: VirtualToken, transport: str) -> Any:
    return tok.hid_device() if transport == "hid" else CtapPcscDevice(tok.connection(), "virtual")


@pytest.fixture(params=["pcsc", "hid"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def hmac_outputs(ctap: Ctap2, cred_id: bytes, salt: bytes, protocol: Any, pin_token: bytes | None = None) -> bytes:
    key_agreement, shared = protocol.encapsulate(ctap.client_pin(protocol.VERSION,
                                                                 ClientPin.CMD.GET_KEY_AGREEMENT)[1])
    enc = protocol.encrypt(shared, salt)
    client_data_hash = b"c" * 32
    kw: dict[str, Any] = {}
    if pin_token is not None:
        kw = {"pin_uv_param": protocol.authenticate(pin_token, client_data_hash), "pin_uv_protocol": protocol.VERSION}
    assertion = ctap.get_assertion(RP["id"], client_data_hash, [{"type": "public-key", "id": cred_id}],
                                   {"hmac-secret": {1: key_agreement, 2: enc, 3: protocol.authenticate(shared, enc),
                                                    4: protocol.VERSION}}, **kw)
    return bytes(protocol.decrypt(shared, assertion.auth_data.extensions["hmac-secret"]))


@pytest.mark.parametrize("protocol", [PinProtocolV1, PinProtocolV2])
def test_hmac_secret_same_salt_same_output_other_salt_or_uv_differs(tmp_path: Path, transport: str,
                                                                   protocol: type) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=1)
    ctap = Ctap2(device(tok, transport))
    assert "hmac-secret" in ctap.info.extensions
    cred = ctap.make_credential(b"h" * 32, RP, USER, ES256, extensions={"hmac-secret": True})
    assert cred.auth_data.extensions == {"hmac-secret": True}
    cred_id = cred.auth_data.credential_data.credential_id
    p = protocol()
    salt, other = os.urandom(32), os.urandom(32)
    first = hmac_outputs(ctap, cred_id, salt, p)
    assert hmac_outputs(ctap, cred_id, salt, p) == first  # stable
    assert hmac_outputs(ctap, cred_id, other, p) != first  # another salt
    ClientPin(ctap, p).set_pin("4321")
    pin_token = ClientPin(ctap, p).get_pin_token("4321", ClientPin.PERMISSION.GET_ASSERTION, RP["id"])
    with_uv = hmac_outputs(ctap, cred_id, salt, p, pin_token)
    assert with_uv != first  # CredRandom with UV differs (CTAP 2.1 §12.5)
    assert hmac_outputs(ctap, cred_id, salt, p) == first  # without UV: unchanged by the new PIN


def test_pin_set_change_retries_and_blocked(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=2)
    client = ClientPin(Ctap2(device(tok, transport)))
    client.set_pin("1111")
    client.change_pin("1111", "2222")
    assert client.get_pin_retries()[0] == 8
    for expected in (7, 6):
        with pytest.raises(CtapError) as wrong:
            client.get_pin_token("0000")
        assert wrong.value.code == CtapError.ERR.PIN_INVALID
        assert client.get_pin_retries()[0] == expected
    with pytest.raises(CtapError) as third:
        client.get_pin_token("0000")
    assert third.value.code == CtapError.ERR.PIN_AUTH_BLOCKED  # 3 in a row: until a power cycle
    with pytest.raises(CtapError) as still:
        client.get_pin_token("2222")
    assert still.value.code == CtapError.ERR.PIN_AUTH_BLOCKED
    assert client.get_pin_retries()[0] == 5
    for _ in range(3):  # spend the rest, one power cycle per three mistakes
        tok.replug()
        client = ClientPin(Ctap2(device(tok, transport)))
        for _ in range(3):
            with pytest.raises(CtapError):
                client.get_pin_token("0000")
            if client.get_pin_retries()[0] == 0:
                break
    assert client.get_pin_retries()[0] == 0
    with pytest.raises(CtapError) as blocked:
        client.get_pin_token("2222")
    assert blocked.value.code == CtapError.ERR.PIN_BLOCKED


def test_cancel_during_a_touch_wait(tmp_path: Path, transport: str) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=3, touch=TouchMode.EXPLICIT)
    ctap = Ctap2(device(tok, transport))
    cancel = threading.Event()
    statuses: list[int] = []
    threading.Timer(0.6, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(CtapError) as cancelled:
        ctap.make_credential(b"h" * 32, RP, USER, ES256, event=cancel, on_keepalive=statuses.append)
    assert cancelled.value.code == CtapError.ERR.KEEPALIVE_CANCEL
    assert time.monotonic() - started < 5 and 2 in statuses  # STATUS_UPNEEDED was reported
    tok.presence.mode = TouchMode.AUTO
    assert ctap.make_credential(b"h" * 32, RP, USER, ES256).auth_data.credential_data is not None


# --- CTAPHID framing with raw reports ------------------------------------------------------


def init_packet(cid: int, cmd: int, data: bytes, length: int | None = None) -> bytes:
    header = struct.pack(">IBH", cid, 0x80 | cmd, len(data) if length is None else length)
    return (header + data).ljust(PACKET_SIZE, b"\0")[:PACKET_SIZE]


def send(front: HidFrontEnd, cid: int, cmd: int, data: bytes) -> None:
    """A whole message: an initialization packet and as many continuation packets as needed."""
    front.write(init_packet(cid, cmd, data[: PACKET_SIZE - 7], length=len(data)))
    rest, seq = data[PACKET_SIZE - 7 :], 0
    while rest:
        front.write((struct.pack(">IB", cid, seq) + rest[: PACKET_SIZE - 5]).ljust(PACKET_SIZE, b"\0"))
        rest, seq = rest[PACKET_SIZE - 5 :], seq + 1


def open_channel(front: HidFrontEnd) -> int:
    nonce = os.urandom(8)
    front.write(init_packet(BROADCAST, CTAPHID.INIT, nonce))
    answer = front.read(2)
    assert answer[:4] == b"\xff\xff\xff\xff" and answer[4] == 0x80 | CTAPHID.INIT and answer[7:15] == nonce
    return int(struct.unpack_from(">I", answer, 15)[0])


def error_of(packet: bytes, cid: int) -> int:
    assert struct.unpack_from(">I", packet)[0] == cid and packet[4] == 0x80 | CTAPHID.ERROR
    return packet[7]


def test_channels_fragmentation_and_errors(tmp_path: Path) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=4)
    dev_a, dev_b = tok.hid_device(), tok.hid_device()
    assert dev_a._channel_id != dev_b._channel_id  # two INITs, two channels
    payload = os.urandom(1000)  # 1 init + 17 continuation packets each way
    assert dev_a.call(CTAPHID.PING, payload) == payload
    with pytest.raises(CtapError) as u2f:
        dev_a.call(CTAPHID.MSG, b"\x00\x03\x00\x00\x00")
    assert u2f.value.code == CtapError.ERR.INVALID_COMMAND  # no CTAP1/U2F: the NMSG capability says so
    assert dev_a.capabilities & 0x08 and dev_a.capabilities & 0x04
    front = tok.hid
    cid = open_channel(front)
    front.write(init_packet(0x01020304, CTAPHID.PING, b"x"))
    assert error_of(front.read(2), 0x01020304) == 0x0B  # INVALID_CHANNEL
    front.write(init_packet(cid, CTAPHID.PING, b"y" * 100, length=100))
    front.write(struct.pack(">IB", cid, 5).ljust(PACKET_SIZE, b"\0"))  # sequence 5 instead of 0
    assert error_of(front.read(2), cid) == 0x04  # INVALID_SEQ
    front.write(init_packet(cid, CTAPHID.PING, b"", length=8000))
    assert error_of(front.read(2), cid) == 0x03  # INVALID_LEN


def test_busy_channel_and_unplug_while_waiting_for_a_touch(tmp_path: Path) -> None:
    tok = VirtualToken(tmp_path / "t.json", serial=5, touch=TouchMode.EXPLICIT)
    front = tok.hid
    waiting_cid, other_cid = open_channel(front), open_channel(front)
    request = bytes([0x01]) + cbor.encode({1: b"h" * 32, 2: RP, 3: USER, 4: ES256})
    send(front, waiting_cid, CTAPHID.CBOR, request)
    keepalive = front.read(2)
    assert keepalive[4] == 0x80 | CTAPHID.KEEPALIVE and keepalive[7] == 2  # UP needed
    front.write(init_packet(other_cid, CTAPHID.PING, b"z"))
    seen = [front.read(2) for _ in range(3)]
    assert any(struct.unpack_from(">I", p)[0] == other_cid and p[4] == 0x80 | CTAPHID.ERROR and p[7] == 0x06
               for p in seen)  # CHANNEL_BUSY for the other channel
    client = tok.hid_device  # a new client while the key is gone must fail at once
    tok.hid.unplug()
    with pytest.raises(OSError):
        front.read(1)
    with pytest.raises(OSError):
        client()
    tok.replug()
    assert Ctap2(tok.hid_device()).info.versions  # plugged back in: a fresh device


_PCSCD_CTAP = """
import json, os, sys
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV2
from fido2.pcsc import CtapPcscDevice
(device,) = list(CtapPcscDevice.list_devices())
ctap = Ctap2(device)
rp, user = {"id": "example.org", "name": "x"}, {"id": b"u", "name": "u"}
cred = ctap.make_credential(b"h" * 32, rp, user, [{"type": "public-key", "alg": -7}],
                            extensions={"hmac-secret": True}).auth_data.credential_data.credential_id
p = PinProtocolV2()
def output(salt, pin_token=None):
    key_agreement, shared = p.encapsulate(ctap.client_pin(2, ClientPin.CMD.GET_KEY_AGREEMENT)[1])
    enc = p.encrypt(shared, salt)
    kw = {"pin_uv_param": p.authenticate(pin_token, b"c" * 32), "pin_uv_protocol": 2} if pin_token else {}
    a = ctap.get_assertion(rp["id"], b"c" * 32, [{"type": "public-key", "id": cred}],
                           {"hmac-secret": {1: key_agreement, 2: enc, 3: p.authenticate(shared, enc), 4: 2}}, **kw)
    return p.decrypt(shared, a.auth_data.extensions["hmac-secret"])
salt = os.urandom(32)
first = output(salt)
client = ClientPin(ctap, p)
client.set_pin("1357")
client.change_pin("1357", "2468")
token = client.get_pin_token("2468", ClientPin.PERMISSION.GET_ASSERTION, rp["id"])
codes = []
for _ in range(3):
    try:
        client.get_pin_token("0000")
    except CtapError as err:
        codes.append(err.code.name)
print(json.dumps({"same": output(salt) == first, "other_salt": output(os.urandom(32)) != first,
                  "uv": output(salt, token) != first, "codes": codes, "retries": client.get_pin_retries()[0]}))
"""


def test_ctap_over_pcscd_with_python_fido2(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    """The same checks through the real pcscd: python-fido2 lists the reader, hmac-secret and clientPIN."""
    tokens.append(TokenProcess(pcscd, tmp_path / "t.json", 9301))
    done = subprocess.run([sys.executable, "-c", _PCSCD_CTAP], env={**os.environ, **pcscd.env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"same": True, "other_salt": True, "uv": True, "retries": 5,
                                       "codes": ["PIN_INVALID", "PIN_INVALID", "PIN_AUTH_BLOCKED"]}
