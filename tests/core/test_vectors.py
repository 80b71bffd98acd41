"""Walk the known-answer vectors in tests/vectors/ (regenerate them with tests/vectors/generate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted import context  # type: ignore[import-not-found]

from tokenagent import agekeys, sshagent
from tokenagent.factors.keyfile import keepass_key
from tokenagent.factors.recovery import from_modhex, to_modhex
from tokenagent.vault import crypto, identities, unlock
from tokenagent.vault.format import parse

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FILES = sorted(p for p in VECTORS.iterdir() if p.is_file() and not p.name.endswith(".py"))


def read_vector(path: Path) -> tuple[dict[str, str], bytes]:
    head, _, body = path.read_bytes().partition(b"\n\n")
    headers = dict(line.split(": ", 1) for line in head.decode().splitlines())
    return headers, body


def test_there_are_vectors_of_every_kind() -> None:
    kinds = {read_vector(p)[0]["kind"] for p in FILES}
    assert kinds == {"derive", "kek", "vault", "keyfile", "shamir", "modhex", "identity", "get-socket"}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_vector(path: Path, tmp_path: Path) -> None:
    h, body = read_vector(path)
    kind = h["kind"]
    if kind == "derive":
        mk = bytes.fromhex(h["masterkey"])
        assert crypto.fingerprint(mk) == h["fingerprint"]
        assert crypto.derive_subkey(mk, h["context"]).hex() == h["subkey"]
    elif kind == "kek":
        kek = crypto.derive_kek([bytes.fromhex(h["secret1"]), bytes.fromhex(h["secret2"])],
                                bytes.fromhex(h["salt"]), bytes.fromhex(h["bound"]))
        assert kek.hex() == h["kek"]
    elif kind == "vault":
        files = []
        if "keyfile-hex" in h:
            kf = tmp_path / "key"
            kf.write_bytes(bytes.fromhex(h["keyfile-hex"]))
            files.append(str(kf))
        recovery = [h["recovery"].encode()] if "recovery" in h else []
        ctx = context(None, files or [str(tmp_path / "absent")], password=[h["password"].encode()], recovery=recovery)
        opened = unlock(parse(body, "vector"), ctx)
        assert opened.masterkey.hex() == h["masterkey"] and opened.slot_id == h["slot"]
    elif kind == "keyfile":
        assert keepass_key(body).hex() == h["key"]
    elif kind == "shamir":
        assert crypto.shamir_combine({1: bytes.fromhex(h["x1"]), 3: bytes.fromhex(h["x3"])}).hex() == h["secret"]
    elif kind == "modhex":
        assert to_modhex(bytes.fromhex(h["key"])) == h["modhex"]
        assert from_modhex(h["modhex"]).hex() == h["key"]  # type: ignore[union-attr]
    elif kind == "identity":
        mk, label = bytes.fromhex(h["masterkey"]), h["label"]
        for key_type in ("ed25519", "ecdsa-p256"):
            blob = sshagent.public_blob(identities.ssh_private_key(mk, label, key_type))
            assert sshagent.authorized_keys_line(blob, "") == h[f"ssh-{key_type}"]
        assert agekeys.recipient(identities.age_public(mk, label)) == h["age-recipient"]
        assert agekeys.identity("work", label) == h["age-identity"]
        assert agekeys.parse_identity(h["age-identity"]) == ("work", label)
    elif kind == "get-socket":  # the Python side; tests/agent/test_get_socket.py walks the native side
        check_get_socket_cases(bytes.fromhex(h["secret"]), body)
    else:
        pytest.fail(f"unknown vector kind {kind!r}")


def check_get_socket_cases(secret: bytes, body: bytes) -> None:
    import json

    from tokenagent.daemon.audit import audit_line
    from tokenagent.protocol import encode_get

    for case in map(json.loads, body.splitlines()):
        if case["vault"] is None:  # a request no client encodes
            continue
        vault, context = case["vault"], case["context"]
        assert encode_get(vault, context)[4:].hex() == case["request"]  # type: ignore[index]
        if context is None and not case["allow_raw"]:
            key, error = None, "denied"
        else:
            key, error = (crypto.derive_subkey(secret, context) if context else secret), None
        assert (None if key is None else bytes(key).hex()) == case["key"] and error == case["error"]
        line = audit_line(vault, context, case["pid"], case["uid"], case["exe"], case["parent_exe"], error, case["time"])
        assert line.decode() == case["audit"]
