"""Cryptomator vault format 8, checked against pycryptomator (an independent implementation).

Vaults are created, filled, listed and read by pycryptomator's own command line; tokenagent
only reads and writes the two key files.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenagent.errors import ForeignFormatError, UsageError, WrongSecret
from tokenagent.integrations import cryptomator as cm

PASSWORD = "correct horse battery staple"


def pycryptomator(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pycryptomator", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cm_vault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vault made by pycryptomator holding /hello.txt and /docs/note.txt."""
    root = tmp_path_factory.mktemp("cm")
    vault = root / "vault"
    vault.mkdir()
    done = pycryptomator("--init", "--password", PASSWORD, str(vault))
    assert done.returncode == 0, done.stderr
    (root / "hello.txt").write_text("hello from pycryptomator\n")
    (root / "note.txt").write_text("a second file\n")
    for cmd in (
        ["encrypt", str(root / "hello.txt"), "/hello.txt"],
        ["mkdir", "/docs"],
        ["encrypt", str(root / "note.txt"), "/docs/note.txt"],
    ):
        done = pycryptomator("--password", PASSWORD, str(vault), *cmd)
        assert done.returncode == 0, done.stdout + done.stderr
    return vault


def pycryptomator_keys(vault: Path) -> bytes:
    """The raw keys as pycryptomator prints them (--print-keys b64)."""
    done = pycryptomator("--password", PASSWORD, "--print-keys", "b64", str(vault))
    assert done.returncode == 0, done.stderr
    lines = {
        k.strip(): v.strip()
        for k, _, v in (ln.partition(":") for ln in done.stdout.splitlines() if ":" in ln)
    }
    return base64.urlsafe_b64decode(lines["Primary master key"]) + base64.urlsafe_b64decode(
        lines["HMAC master key"]
    )


def test_open_vault_gives_the_keys_pycryptomator_uses(cm_vault: Path) -> None:
    keys = cm.open_vault(cm_vault, PASSWORD)
    assert len(keys) == 64
    assert bytes(keys) == pycryptomator_keys(cm_vault)
    config = cm.check_keys(cm_vault, keys)
    assert config.cipher_combo == "SIV_GCM" and config.vault_id


def test_served_keys_list_and_read_files_with_pycryptomator(cm_vault: Path) -> None:
    keys = cm.open_vault(cm_vault, PASSWORD)
    enc, mac = cm.encode_keys(keys, "pycryptomator").decode().split()
    listing = pycryptomator("--master-keys", enc, mac, str(cm_vault), "ls", "-r", "/")
    assert listing.returncode == 0, listing.stderr
    assert "hello.txt" in listing.stdout and "note.txt" in listing.stdout
    content = pycryptomator("--master-keys", enc, mac, str(cm_vault), "decrypt", "/docs/note.txt", "-")
    assert content.returncode == 0, content.stderr
    assert "a second file" in content.stdout


def test_wrong_password_is_wrong_secret(cm_vault: Path) -> None:
    with pytest.raises(WrongSecret, match="wrong Cryptomator password"):
        cm.open_vault(cm_vault, "not the password")


def test_other_keys_fail_the_jwt_check(cm_vault: Path) -> None:
    keys = bytearray(cm.open_vault(cm_vault, PASSWORD))
    keys[63] ^= 1
    with pytest.raises(ForeignFormatError, match="not signed by this key"):
        cm.check_keys(cm_vault, keys)


def test_fresh_masterkey_file_opens_in_pycryptomator(cm_vault: Path, tmp_path: Path) -> None:
    keys = cm.open_vault(cm_vault, PASSWORD)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(cm_vault), str(copy)], check=True)
    (copy / cm.MASTERKEY_NAME).unlink()
    fresh = cm.wrap_masterkey(keys, "a new password")
    cm.write_new_file(copy / cm.MASTERKEY_NAME, fresh.to_json())
    # pycryptomator verifies the unwrap, versionMac and the JWT signature on open
    done = pycryptomator("--password", "a new password", str(copy), "decrypt", "/hello.txt", "-")
    assert done.returncode == 0, done.stderr
    assert "hello from pycryptomator" in done.stdout
    assert bytes(cm.open_vault(copy, "a new password")) == bytes(keys)
    assert fresh.scrypt_cost == cm.DEFAULT_SCRYPT_COST and fresh.version == 999


def test_masterkey_elsewhere(cm_vault: Path, tmp_path: Path) -> None:
    moved = tmp_path / "mk.json"
    moved.write_bytes((cm_vault / cm.MASTERKEY_NAME).read_bytes())
    assert len(cm.open_vault(cm_vault, PASSWORD, masterkey=moved)) == 64


def _tamper(cm_vault: Path, tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "mk"
    obj = json.loads((cm_vault / cm.MASTERKEY_NAME).read_text())
    change(obj)
    path.write_text(json.dumps(obj))
    return path


def test_version_mac_mismatch_is_refused(cm_vault: Path, tmp_path: Path) -> None:
    path = _tamper(cm_vault, tmp_path, lambda o: o.update(version=8))
    with pytest.raises(ForeignFormatError, match="versionMac"):
        cm.open_vault(cm_vault, PASSWORD, masterkey=path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o.update(scryptCostParam=1 << 30), "1 GiB"),
        (lambda o: o.update(scryptCostParam=1000), "power of 2"),
        (lambda o: o.update(scryptBlockSize=True), "positive integer"),
        (lambda o: o.pop("versionMac"), "versionMac is missing"),
        (lambda o: o.update(primaryMasterKey="!!"), "not base64"),
        (lambda o: o.update(hmacMasterKey=base64.b64encode(b"x" * 16).decode()), "not a wrapped 256-bit key"),
    ],
)
def test_crafted_masterkey_files(cm_vault: Path, tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    path = _tamper(cm_vault, tmp_path, change)
    with pytest.raises(ForeignFormatError, match=message):
        cm.open_vault(cm_vault, PASSWORD, masterkey=path)


def _jwt(header: dict[str, object], claims: dict[str, object]) -> bytes:
    enc = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=")  # noqa: E731
    return enc(header) + b"." + enc(claims) + b".c2ln"


GOOD_HEADER = {"kid": "masterkeyfile:masterkey.cryptomator", "alg": "HS256", "typ": "JWT"}
GOOD_CLAIMS = {"format": 8, "cipherCombo": "SIV_GCM", "jti": "x"}


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not a jwt", "not a JWT"),
        (_jwt({**GOOD_HEADER, "alg": "none"}, GOOD_CLAIMS), "HS256"),
        (_jwt({**GOOD_HEADER, "kid": "hub+https://x"}, GOOD_CLAIMS), "not a masterkey file"),
        (
            _jwt({**GOOD_HEADER, "kid": "masterkeyfile:../../etc/passwd"}, GOOD_CLAIMS),
            "inside the vault folder",
        ),
        (_jwt(GOOD_HEADER, {**GOOD_CLAIMS, "format": 7}), "only format 8"),
        (_jwt(GOOD_HEADER, {**GOOD_CLAIMS, "cipherCombo": "ROT13"}), "cipher combo"),
        (b"e30.W10.c2ln", "not a JSON object"),
        (b"e30.%%%.c2ln", "not base64"),
    ],
)
def test_crafted_configs(data: bytes, message: str) -> None:
    with pytest.raises(ForeignFormatError, match=message):
        cm.parse_config(data)


def test_pycryptomator_style_padded_base64_config_parses() -> None:
    padded = (
        base64.b64encode(json.dumps(GOOD_HEADER).encode())
        + b"."
        + base64.b64encode(json.dumps(GOOD_CLAIMS).encode())
    )
    assert cm.parse_config(padded + b".c2ln").masterkey_name == "masterkey.cryptomator"


def test_encodings_round_trip() -> None:
    keys = bytes(range(64))
    assert cm.encode_keys(keys, "raw") == keys
    assert bytes.fromhex(cm.encode_keys(keys, "hex").decode()) == keys
    assert base64.b64decode(cm.encode_keys(keys, "base64")) == keys
    obj = json.loads(cm.encode_keys(keys, "json"))
    assert base64.b64decode(obj["encKey"]) + base64.b64decode(obj["macKey"]) == keys
    with pytest.raises(UsageError, match="64 bytes"):
        cm.encode_keys(keys[:32], "hex")
    with pytest.raises(UsageError, match="unknown key format"):
        cm.encode_keys(keys, "words")


def test_write_refuses_weak_costs_and_empty_password() -> None:
    with pytest.raises(UsageError, match="scrypt cost"):
        cm.wrap_masterkey(bytes(64), "pw", scrypt_cost=1024)
    with pytest.raises(UsageError, match="empty"):
        cm.wrap_masterkey(bytes(64), "")


def test_pycryptomator_key_arguments_never_look_like_options() -> None:
    """pycryptomator's argparse would take a key beginning with '-' for an option."""
    for _ in range(2000):
        keys = os.urandom(64)
        enc, mac = cm.encode_keys(keys, "pycryptomator").decode().split()
        assert not enc.startswith("-") and not mac.startswith("-")
        # decoded the way pycryptomator's tryDecode falls back to: urlsafe_b64decode
        assert base64.urlsafe_b64decode(enc) + base64.urlsafe_b64decode(mac) == keys


@pytest.mark.parametrize("kind", ["FIFO", "huge"])
def test_adopt_refuses_a_masterkey_that_is_not_a_small_file(cm_vault: Path, tmp_path: Path, kind: str) -> None:
    """``cryptomator adopt`` with masterkey.cryptomator replaced by a FIFO nobody writes (the run has
    a timeout: the old code blocked in the open) or a 100 MB file (the old code read it whole)."""
    import shutil

    vault = tmp_path / "vault"
    shutil.copytree(cm_vault, vault)
    (vault / cm.MASTERKEY_NAME).unlink()
    if kind == "FIFO":
        os.mkfifo(vault / cm.MASTERKEY_NAME, 0o600)
    else:
        with open(vault / cm.MASTERKEY_NAME, "wb") as f:
            f.truncate(100 << 20)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    secrets = tmp_path / "secrets"
    secrets.write_text(PASSWORD + "\n")
    done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "cryptomator", "adopt", str(vault),
                           "--name", "cm", "--password", "--password-file", str(secrets),
                           "--cryptomator-password-file", str(secrets)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"})
    assert done.returncode != 0 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert ("not a regular file" if kind == "FIFO" else "too large") in done.stderr, done.stderr
    assert not (home / "data" / "vaults" / "cm.vault").exists()
