"""Regenerate the known-answer vectors in this directory: python tests/vectors/generate.py

Each vector is a file in age's style: ``key: value`` header lines, a blank line, a body.
``kind`` says what the walking test (tests/core/test_vectors.py) checks. Values are hex
unless the key says otherwise. Salts and nonces are random, so each run writes new
vectors; the walking test must pass on every generation.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

os.environ["TOKENAGENT_TEST_KDF"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tokenagent.factors.base import FactorContext, Interaction, SecretRequest  # noqa: E402
from tokenagent.factors.keyfile import KeyFileFactor, keepass_key, xml2_keyfile  # noqa: E402
from tokenagent.factors.password import PasswordFactor  # noqa: E402
from tokenagent.factors.recovery import RecoveryFactor, to_modhex  # noqa: E402
from tokenagent.vault import crypto, new_vault  # noqa: E402

HERE = Path(__file__).resolve().parent


class _Answers(Interaction):
    def __init__(self, answers: list[bytes]) -> None:
        self.answers, self.shown = list(answers), []

    def ask_secret(self, request: SecretRequest) -> bytearray:
        return bytearray(self.answers.pop(0))

    def notify(self, event: str, message: str) -> None:
        pass

    def show_secret_once(self, title: str, text: str) -> None:
        self.shown.append(text)


def write(name: str, headers: dict[str, str], body: bytes = b"") -> None:
    head = "".join(f"{k}: {v}\n" for k, v in headers.items())
    (HERE / name).write_bytes(head.encode() + b"\n" + body)


def labels() -> None:
    mk = secrets.token_bytes(32)
    write("fingerprint-and-subkey", {
        "kind": "derive", "masterkey": mk.hex(), "fingerprint": crypto.fingerprint(mk),
        "context": "restic:/srv/backup", "subkey": crypto.derive_subkey(mk, "restic:/srv/backup").hex(),
    })
    secrets_ = [secrets.token_bytes(32), secrets.token_bytes(20)]
    salt, bound = secrets.token_bytes(32), b'{"example":"bound"}'
    write("kek-two-factors", {
        "kind": "kek", "secret1": secrets_[0].hex(), "secret2": secrets_[1].hex(), "salt": salt.hex(),
        "bound": bound.hex(), "kek": crypto.derive_kek(secrets_, salt, bound).hex(),
    })


def vaults() -> None:
    data = xml2_keyfile(secrets.token_bytes(32))
    tmp = HERE / ".keyfile.tmp"
    tmp.write_bytes(data)
    try:
        ui = _Answers([b"correct horse", b"second"])
        ctx = FactorContext(ui=ui, test_costs=True)
        enrolled = [PasswordFactor.enroll(ctx, {}), KeyFileFactor.enroll(ctx, {"path": str(tmp)})]
        vault, mk = new_vault("vector", enrolled)
        write("vault-password-and-keyfile", {
            "kind": "vault", "password": "correct horse", "keyfile-hex": data.hex(),
            "masterkey": mk.hex(), "slot": "1",
        }, vault.to_bytes())
        enrolled = [PasswordFactor.enroll(ctx, {}), RecoveryFactor.enroll(ctx, {}), KeyFileFactor.enroll(ctx, {"path": str(tmp)})]
        vault, mk = new_vault("vector", enrolled, threshold=2, secret=b"an imported passphrase")
        write("vault-2-of-3-imported", {
            "kind": "vault", "password": "second", "recovery": ui.shown[0], "masterkey": mk.hex(), "slot": "1",
        }, vault.to_bytes())
    finally:
        tmp.unlink()


def keyfiles() -> None:
    key = secrets.token_bytes(32)
    for name, data in {"keyfile-xml2": xml2_keyfile(key), "keyfile-hex64": key.hex().encode(),
                       "keyfile-other": b"any other file: hashed\n"}.items():
        write(name, {"kind": "keyfile", "key": keepass_key(data).hex()}, data)


def shamir() -> None:
    secret = secrets.token_bytes(32)
    shares = crypto.shamir_split(secret, 2, 3)
    write("shamir-2-of-3", {"kind": "shamir", "secret": secret.hex(), "x1": shares[0].hex(), "x3": shares[2].hex()})
    write("modhex", {"kind": "modhex", "key": secret.hex(), "modhex": to_modhex(secret)})


def identities() -> None:
    """The SSH and age keys derived from a vault (docs/spec/vault.md, "Identities")."""
    from tokenagent import agekeys, sshagent
    from tokenagent.vault import identities as ids

    mk = secrets.token_bytes(32)
    label = "laptop"
    write("identity-ssh-and-age", {
        "kind": "identity", "masterkey": mk.hex(), "label": label,
        "ssh-ed25519": sshagent.authorized_keys_line(sshagent.public_blob(ids.ssh_private_key(mk, label)), ""),
        "ssh-ecdsa-p256": sshagent.authorized_keys_line(
            sshagent.public_blob(ids.ssh_private_key(mk, label, "ecdsa-p256")), ""),
        "age-recipient": agekeys.recipient(ids.age_public(mk, label)),
        "age-identity": agekeys.identity("work", label),
    })


def get_socket() -> None:
    """Requests to the get socket and what each implementation does with them: the native code
    releases (with this key and this audit line) or asks the agent socket, whose Python gives the
    key or the refusal with this line. Read by tests/core/test_vectors.py (the Python side) and
    tests/agent/test_get_socket.py (the native side)."""
    from tokenagent.daemon.audit import audit_line
    from tokenagent.protocol import encode_get

    secret = secrets.token_bytes(32)
    python, restic = "/usr/bin/python3.11", "/usr/bin/restic"
    asks = [  # vault, context, allow_raw, exe, parent_exe, why the native code asks the agent socket
        ("backup", "restic:/srv/repo", False, python, restic, None),
        ("backup", None, True, python, restic, None),
        ("backup", None, False, python, restic, "raw"),
        ("a" * 64, "x" * 256, False, None, None, None),
        ("b.k_-9", "borg repo ~/x (1)", True, python, "/usr/bin/my tool", None),
        ("backup", "é", False, python, restic, "request"),
        ("backup", "tab\there", False, python, restic, "request"),
        ("backup", 'say "hi"', False, python, restic, "request"),
        ("backup", "back\\slash", False, python, restic, "request"),
        ("backup", "\U0001f511", False, python, restic, "request"),
        ("backup", "restic:/srv/repo", False, "/opt/prögram", restic, "peer"),
        ("backup", "restic:/srv/repo", False, python, '/home/u/"x"', "peer"),
    ]
    lines = []
    for i, (vault, context, allow_raw, exe, parent, why) in enumerate(asks):
        request = encode_get(vault, context)
        assert request is not None
        when = 1764600000 + i + 0.25
        if context is None and not allow_raw:
            key, error = None, "denied"
        else:
            key, error = (crypto.derive_subkey(secret, context) if context else secret), None
        lines.append({"vault": vault, "context": context, "request": request[4:].hex(), "allow_raw": allow_raw,
                      "exe": exe, "parent_exe": parent, "pid": 4000 + i, "uid": 1000, "time": when,
                      "native": "release" if why is None else "ask", "ask_because": why,
                      "key": None if key is None else bytes(key).hex(), "error": error,
                      "audit": audit_line(vault, context, 4000 + i, 1000, exe, parent, error, when).decode()})
    name = b"backup".hex()
    malformed = [
        "02010" + "6" + name + "0000",        # version 2
        "01020" + "6" + name + "0000",        # op 2
        "01010" + "6" + name + "00",          # context length cut off
        "01010" + "6" + name + "00014141",    # a byte more than the context length says
        "01010" + "6" + name + "000241",      # a byte less
        "010100" + "0000",                    # no name
        "010141" + "61" * 65 + "0000",        # a 65-byte name
        "", "01", "0101",
    ]
    for body in malformed:
        lines.append({"vault": None, "context": None, "request": body, "native": "ask", "ask_because": "request"})
    write("get-socket", {"kind": "get-socket", "secret": secret.hex(), "cases": str(len(lines))},
          b"".join(json.dumps(line, sort_keys=True).encode() + b"\n" for line in lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["identities"]:  # only the identity vectors (the others keep their values)
        identities()
        sys.exit(0)
    if sys.argv[1:] == ["get-socket"]:  # only the get-socket vectors
        get_socket()
        sys.exit(0)
    identities()
    get_socket()
    labels()
    vaults()
    keyfiles()
    shamir()
    print(json.dumps(sorted(p.name for p in HERE.iterdir() if not p.name.endswith(".py"))))
