"""Virtual tokens as cards in a real pcscd (vpcd driver), used by the real CLI processes.

The token runs as ``tokenagent virtual-token run`` (its own process), pcscd is a private
instance (tests/pcscd.py), and every tokenagent command is a separate process that finds
the token the way it finds a real key: python-fido2's ``CtapPcscDevice`` over pyscard.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agentkit import cli, private_home
from pcscd import PrivatePcscd, TokenProcess


def run(home: Path, pcscd: PrivatePcscd, *args: str, **kw: object) -> object:
    return cli(home, *args, env=pcscd.env, **kw)  # type: ignore[arg-type]


@contextmanager
def touching(token: TokenProcess) -> Iterator[None]:
    """A person who touches the key whenever it blinks (for tokens run with --touch explicit)."""
    stop = threading.Event()

    def keep_touching() -> None:
        while not stop.is_set():
            token.touch()
            time.sleep(0.3)

    toucher = threading.Thread(target=keep_touching, daemon=True)
    toucher.start()
    try:
        yield
    finally:
        stop.set()
        toucher.join()


def test_token_is_seen_through_pcscd(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    home = private_home(tmp_path)
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 1111))
    done = run(home, pcscd, "devices", "--json")
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    listing = json.loads(done.stdout)  # type: ignore[attr-defined]
    by_type = {d["type"]: d for d in listing["devices"]}
    assert sorted(by_type) == ["fido2", "otp", "piv"] and len(listing["devices"]) == 3
    device = by_type["fido2"]
    assert device["transport"] == "pcsc" and device["hmac_secret"]
    assert device["pin_set"] is False and "Virtual PCD" in device["name"]
    assert device["serial"] == 1111  # read through yubikit's management session
    assert by_type["piv"]["serial"] == 1111 and by_type["piv"]["pin_retries"] == 3
    assert by_type["piv"]["decryption_keys"] == [] and by_type["otp"]["configured_slots"] == []
    text = run(home, pcscd, "devices").stdout  # type: ignore[attr-defined]
    assert "piv: " in text and "PIN 3 tries left" in text and "challenge-response slots: none" in text
    tokens[0].unplug()
    gone = json.loads(run(home, pcscd, "devices", "--json").stdout)  # type: ignore[attr-defined]
    assert gone["devices"] == [] and gone["pcsc_readers"]


def test_vault_on_a_token_opens_only_with_it_plugged(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                     tmp_path: Path) -> None:
    home = private_home(tmp_path)
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 2222))
    created = run(home, pcscd, "init", "docs", "--fido2", "--json")
    assert created.returncode == 0, created.stderr  # type: ignore[attr-defined]
    opened = run(home, pcscd, "open", "docs", "--reveal", "--json")
    assert opened.returncode == 0, opened.stderr  # type: ignore[attr-defined]
    key = json.loads(opened.stdout)["key"]  # type: ignore[attr-defined]
    tokens[0].unplug()
    absent = run(home, pcscd, "open", "docs", "--reveal")
    assert absent.returncode == 10 and "no FIDO2 key is plugged in" in absent.stderr  # type: ignore[attr-defined]
    tokens[0].plug()
    again = run(home, pcscd, "open", "docs", "--reveal", "--json")
    assert json.loads(again.stdout)["key"] == key  # type: ignore[attr-defined]


def test_backup_token_enrolled_while_the_main_one_is_plugged(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                             tmp_path: Path) -> None:
    """Two keys present: the main one unlocks (pre-flight finds it), the other one is enrolled."""
    home = private_home(tmp_path)
    main = TokenProcess(pcscd, tmp_path / "main.json", 3001, touch="delay", touch_delay=2.0)
    tokens.append(main)
    assert run(home, pcscd, "init", "docs", "--fido2", "--label", "main").returncode == 0  # type: ignore[attr-defined]
    backup = TokenProcess(pcscd, tmp_path / "backup.json", 3002, touch="explicit")
    tokens.append(backup)
    with touching(backup):
        enrolled = run(home, pcscd, "enroll", "docs", "--fido2", "--label", "backup", timeout=120)
        assert enrolled.returncode == 0, enrolled.stderr  # type: ignore[attr-defined]
        assert "skipping the FIDO2 key already enrolled" in enrolled.stderr  # type: ignore[attr-defined]
        slots = json.loads(run(home, pcscd, "slots", "docs", "--json").stdout)["slots"]  # type: ignore[attr-defined]
        assert [(s["label"], s["factors"]) for s in slots] == [("main", ["fido2"]), ("backup", ["fido2"])]
        main.unplug()
        with_backup = run(home, pcscd, "open", "docs", "--json", "--reveal")
        assert with_backup.returncode == 0, with_backup.stderr  # type: ignore[attr-defined]
        assert json.loads(with_backup.stdout)["slot"] == "2"  # type: ignore[attr-defined]
    main.plug()
    backup.unplug()
    with_main = run(home, pcscd, "open", "docs", "--json", "--reveal")
    assert json.loads(with_main.stdout)["slot"] == "1"  # type: ignore[attr-defined]
    assert json.loads(with_main.stdout)["key"] == json.loads(with_backup.stdout)["key"]  # type: ignore[attr-defined]


def test_pin_slot_through_pcscd_with_pin_file(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    from fido2.ctap2 import Ctap2
    from fido2.ctap2.pin import ClientPin

    from tokenagent.virtual.provider import VirtualDevices  # noqa: F401 - the module must import
    from tokenagent.virtual.token import VirtualToken

    home = private_home(tmp_path)
    state = tmp_path / "pin.json"
    seed = VirtualToken(state, serial=4444)  # set the PIN in the state file before the token runs
    from fido2.pcsc import CtapPcscDevice

    ClientPin(Ctap2(CtapPcscDevice(seed.connection(), "setup"))).set_pin("135790")
    del seed
    tokens.append(TokenProcess(pcscd, state, 4444))
    pin = tmp_path / "pin"
    pin.write_text("135790\n")
    assert run(home, pcscd, "init", "docs", "--fido2", "--fido2-uv", "--pin-file", str(pin)).returncode == 0  # type: ignore[attr-defined]
    wrong = tmp_path / "wrong"
    wrong.write_text("000000\n")
    failed = run(home, pcscd, "open", "docs", "--pin-file", str(wrong))
    assert failed.returncode == 5 and "wrong PIN" in failed.stderr and "7 tries left" in failed.stderr  # type: ignore[attr-defined]
    assert run(home, pcscd, "open", "docs", "--pin-file", str(pin)).returncode == 0  # type: ignore[attr-defined]
    assert json.loads(state.read_text())["fido2"]["pin_retries"] == 8


def test_token_pulled_out_while_waiting_for_touch(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                  tmp_path: Path) -> None:
    """DESIGN §6 #13: a clean error, no hang, the vault unchanged."""
    import os
    import subprocess
    import sys

    home = private_home(tmp_path)
    token = TokenProcess(pcscd, tmp_path / "a.json", 7001, touch="explicit")
    tokens.append(token)
    with touching(token):
        assert run(home, pcscd, "init", "docs", "--fido2", timeout=60).returncode == 0  # type: ignore[attr-defined]
    time.sleep(1.5)  # the last touch is forgotten
    vault_file = home / "data" / "vaults" / "docs.vault"
    before = sorted(p.name for p in vault_file.parent.iterdir()), vault_file.read_bytes()
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **pcscd.env}
    waiting = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "drill", "docs"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # the key blinks: it waits for a touch that will not come
    assert waiting.poll() is None
    started = time.monotonic()
    token.unplug()
    out, err = waiting.communicate(timeout=20)
    assert time.monotonic() - started < 15
    assert waiting.returncode in (4, 5), (out, err)
    assert "Traceback" not in err and err.strip(), err
    assert (sorted(p.name for p in vault_file.parent.iterdir()), vault_file.read_bytes()) == before


def test_rotate_through_the_cli(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    home = private_home(tmp_path)
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 9001))
    assert run(home, pcscd, "init", "docs", "--fido2").returncode == 0  # type: ignore[attr-defined]
    key = json.loads(run(home, pcscd, "open", "docs", "--reveal", "--json").stdout)["key"]  # type: ignore[attr-defined]
    before = (home / "data" / "vaults" / "docs.vault").read_text()
    rotated = run(home, pcscd, "rotate", "docs", "1", "--json")
    assert rotated.returncode == 0, rotated.stderr  # type: ignore[attr-defined]
    after = (home / "data" / "vaults" / "docs.vault").read_text()
    salt = lambda text: json.loads(text)["slots"][0]["factors"][0]["params"]["salt"]  # noqa: E731
    assert salt(before) != salt(after)
    assert json.loads(run(home, pcscd, "open", "docs", "--reveal", "--json").stdout)["key"] == key  # type: ignore[attr-defined]
    pw = tmp_path / "pw"
    pw.write_text("a password\n")
    assert run(home, pcscd, "enroll", "docs", "--password", "--password-file", str(pw)).returncode == 0  # type: ignore[attr-defined]
    refused = run(home, pcscd, "rotate", "docs", "2", "--password-file", str(pw))
    assert refused.returncode == 5 and "cannot be rotated" in refused.stderr  # type: ignore[attr-defined]


def test_serial_picks_the_key_among_two(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    home = private_home(tmp_path)
    tokens.append(TokenProcess(pcscd, tmp_path / "a.json", 9101, touch="refuse"))
    tokens.append(TokenProcess(pcscd, tmp_path / "b.json", 9102))
    done = run(home, pcscd, "init", "docs", "--fido2", "--serial", "9102", "--touch-timeout", "10")
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    assert "touch the one to use" not in done.stderr  # type: ignore[attr-defined]
    tokens[1].unplug()
    absent = run(home, pcscd, "open", "docs")
    assert absent.returncode == 10 and "not plugged in" in absent.stderr  # type: ignore[attr-defined]


def test_two_of_three_keys_through_pcscd(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    """Three tokens in one private pcscd (two vpcd driver instances), any two open the slot."""
    home = private_home(tmp_path)
    for serial in (8001, 8002, 8003):
        tokens.append(TokenProcess(pcscd, tmp_path / f"{serial}.json", serial))
    created = run(home, pcscd, "init", "docs", "--fido2", "--fido2", "--fido2", "--threshold", "2",
                  "--serial", "8001", "--serial", "8002", "--serial", "8003")
    assert created.returncode == 0, created.stderr  # type: ignore[attr-defined]
    key = json.loads(run(home, pcscd, "open", "docs", "--reveal", "--json").stdout)["key"]  # type: ignore[attr-defined]
    tokens[0].unplug()
    two = run(home, pcscd, "open", "docs", "--reveal", "--json")
    assert two.returncode == 0 and json.loads(two.stdout)["key"] == key, two.stderr  # type: ignore[attr-defined]
    tokens[2].unplug()
    one = run(home, pcscd, "open", "docs")
    assert one.returncode != 0 and "Traceback" not in one.stderr, one.stderr  # type: ignore[attr-defined]
