"""Damaged and crafted vault files (DESIGN §6 #10, #11): each one loads or fails exactly as expected.

Every case names its expected outcome: "format" (refused when parsed, with a message naming
the problem), "auth" (parses, but no slot opens: the AEAD binds the edited field),
"integrity" (a slot opens, the header MAC catches the edit) or "ok".
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from scripted import context  # type: ignore[import-not-found]

from tokenagent.errors import NoSlotMatched, TokenAgentError, VaultFormatError, VaultIntegrityError
from tokenagent.factors.password import PasswordFactor
from tokenagent.factors.recovery import RecoveryFactor
from tokenagent.vault import new_vault, unlock
from tokenagent.vault.format import parse

Doc = dict[str, Any]


def _base() -> tuple[bytes, list[bytes]]:
    ctx = context([b"pw"])
    factors = [PasswordFactor.enroll(ctx, {}), RecoveryFactor.enroll(ctx, {}), PasswordFactor.enroll(context([b"p2"]), {})]
    recovery = ctx.ui.shown[0].encode()  # type: ignore[attr-defined]
    vault, _ = new_vault("crafted", factors, threshold=2)
    return vault.to_bytes(), [b"pw", recovery, b"p2"]


BASE, ANSWERS = _base()


def _flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def doc_case(change: Callable[[Doc], None]) -> Callable[[], bytes]:
    def make() -> bytes:
        doc = json.loads(BASE)
        change(doc)
        return json.dumps(doc).encode()

    return make


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        elif callable(value):
            key = int(last) if last.isdigit() else last
            node[key] = value(node[key])
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()
S = "slots.0"
P = "slots.0.factors.0.params"

CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "unchanged": (lambda: BASE, "ok"),
    "reserialized": (doc_case(lambda d: None), "ok"),
    "empty": (lambda: b"", "format"),
    "null": (lambda: b"null", "format"),
    "array": (lambda: b"[]", "format"),
    "not-utf8": (lambda: b"\xff\xfe" + BASE, "format"),
    "trailing-data": (lambda: BASE + b"x", "format"),
    "trailing-object": (lambda: BASE + b"{}", "format"),
    "deep-nesting": (lambda: b"[" * 100000 + b"]" * 100000, "format"),
    "huge-file": (lambda: b" " * (2 << 20), "format"),
    "nan": (lambda: BASE.replace(b'"seq": 1', b'"seq": NaN'), "format"),
    "huge-float": (lambda: BASE.replace(b'"seq": 1', b'"seq": 1e400'), "format"),
    "duplicate-key": (lambda: BASE.replace(b'"seq": 1,', b'"seq": 1, "seq": 2,'), "format"),
    "other-format": (doc_case(_set("format", "something-else/1")), "format"),
    "future-format": (doc_case(_set("format", "tokenagent-vault/2")), "format"),
    "unknown-top-key": (doc_case(_set("extra", 1)), "format"),
    "vault-id-short": (doc_case(_set("vault_id", base64.b64encode(b"x" * 15).decode())), "format"),
    "vault-id-bad-b64": (doc_case(_set("vault_id", "!!!!")), "format"),
    "vault-id-number": (doc_case(_set("vault_id", 5)), "format"),
    "seq-negative": (doc_case(_set("seq", -1)), "format"),
    "seq-bool": (doc_case(_set("seq", True)), "format"),
    "seq-string": (doc_case(_set("seq", "1")), "format"),
    "seq-huge": (doc_case(_set("seq", 2**64)), "format"),
    "secret-len-zero": (doc_case(_set("secret_len", 0)), "format"),
    "secret-len-huge": (doc_case(_set("secret_len", 5000)), "format"),
    "secret-len-mismatch": (doc_case(_set("secret_len", 31)), "format"),
    "allow-raw-string": (doc_case(_set("allow_raw", "yes")), "format"),
    "fingerprint-bad": (doc_case(_set("fingerprint", "abc")), "format"),
    "slots-empty": (doc_case(_set("slots", [])), "format"),
    "slots-object": (doc_case(_set("slots", {})), "format"),
    "slots-too-many": (doc_case(lambda d: d.update(slots=[copy.deepcopy(d["slots"][0]) | {"id": str(i)}
                                                          for i in range(1, 66)])), "format"),
    "slot-not-object": (doc_case(_set("slots.0", "x")), "format"),
    "slot-duplicate-id": (doc_case(lambda d: d["slots"].append(copy.deepcopy(d["slots"][0]))), "format"),
    "slot-id-zero": (doc_case(_set(f"{S}.id", "0")), "format"),
    "slot-id-int": (doc_case(_set(f"{S}.id", 1)), "format"),
    "slot-id-text": (doc_case(_set(f"{S}.id", "abc")), "format"),
    "slot-unknown-key": (doc_case(_set(f"{S}.extra", 1)), "format"),
    "label-too-long": (doc_case(_set(f"{S}.label", "x" * 201)), "format"),
    "label-number": (doc_case(_set(f"{S}.label", 3)), "format"),
    "last-drill-string": (doc_case(_set(f"{S}.last_drill", "yesterday")), "format"),
    "policy-unknown": (doc_case(_set(f"{S}.policy", {"kind": "any"})), "format"),
    "policy-k-too-big": (doc_case(_set(f"{S}.policy.k", 4)), "format"),
    "policy-k-zero": (doc_case(_set(f"{S}.policy.k", 0)), "format"),
    "policy-all-with-shares": (doc_case(_set(f"{S}.policy", {"kind": "all"})), "format"),
    "shares-missing": (doc_case(_set(f"{S}.shares", _DELETE)), "format"),
    "shares-short": (doc_case(lambda d: d["slots"][0]["shares"].pop()), "format"),
    "share-bad-length": (doc_case(_set(f"{S}.shares.0.sealed", base64.b64encode(b"x").decode())), "format"),
    "factors-empty": (doc_case(_set(f"{S}.factors", [])), "format"),
    "factor-not-object": (doc_case(_set(f"{S}.factors.0", [])), "format"),
    "factor-no-params": (doc_case(_set(f"{S}.factors.0.params", _DELETE)), "format"),
    "salt-short": (doc_case(_set(f"{S}.salt", base64.b64encode(b"s" * 31).decode())), "format"),
    "nonce-long": (doc_case(_set(f"{S}.nonce", base64.b64encode(b"n" * 13).decode())), "format"),
    "wrapped-truncated": (doc_case(_set(f"{S}.wrapped", lambda v: base64.b64encode(base64.b64decode(v)[:-1]).decode())),
                          "format"),
    "mac-short": (doc_case(_set("mac", base64.b64encode(b"m" * 31).decode())), "format"),
    "password-kdf-other": (doc_case(_set(f"{P}.kdf", "scrypt")), "format"),
    "password-t-zero": (doc_case(_set(f"{P}.t", 0)), "format"),
    "password-p-zero": (doc_case(_set(f"{P}.p", 0)), "format"),
    "password-m-below-lanes": (doc_case(_set(f"{P}.m", 7)), "format"),
    "password-extra-param": (doc_case(_set(f"{P}.extra", 1)), "format"),
    "password-salt-short": (doc_case(_set(f"{P}.salt", base64.b64encode(b"s").decode())), "format"),
    "recovery-check-upper": (doc_case(_set("slots.0.factors.1.params.check", lambda v: v.upper() + "A")), "format"),
    # parse, but the AEAD binds the edited value: no slot opens
    "password-t-raised": (doc_case(_set(f"{P}.t", 2)), "auth"),
    "password-salt-changed": (doc_case(_set(f"{P}.salt", _flip_b64)), "auth"),
    "wrapped-bit-flip": (doc_case(_set(f"{S}.wrapped", _flip_b64)), "auth"),
    "nonce-bit-flip": (doc_case(_set(f"{S}.nonce", _flip_b64)), "auth"),
    "salt-bit-flip": (doc_case(_set(f"{S}.salt", _flip_b64)), "auth"),
    "share-bit-flip-2": (doc_case(lambda d: [_set(f"{S}.shares.{i}.sealed", _flip_b64)(d) for i in (0, 1, 2)]),
                         "auth"),
    "slot-id-changed": (doc_case(_set(f"{S}.id", "7")), "auth"),
    "vault-id-changed": (doc_case(_set("vault_id", _flip_b64)), "auth"),
    "threshold-lowered": (doc_case(_set(f"{S}.policy.k", 1)), "auth"),
    "factors-reordered": (doc_case(lambda d: d["slots"][0]["factors"].reverse()), "auth"),
    "factor-type-unknown": (doc_case(_set(f"{S}.factors.0.type", "quantum")), "auth"),
    # a slot opens, the header MAC catches the edit
    "mac-bit-flip": (doc_case(_set("mac", _flip_b64)), "integrity"),
    "allow-raw-flipped": (doc_case(_set("allow_raw", True)), "integrity"),
    "seq-changed": (doc_case(_set("seq", 9)), "integrity"),
    "created-changed": (doc_case(_set("created", 1)), "integrity"),
    "label-changed": (doc_case(_set(f"{S}.label", "evil")), "integrity"),
    "last-drill-changed": (doc_case(_set(f"{S}.last_drill", 5)), "integrity"),
    "fingerprint-changed": (doc_case(_set("fingerprint", "0000:0000:0000:0000:0000:0000:0000:0000")), "integrity"),
}

for cut in (1, 10, 100, 500, len(BASE) // 2, len(BASE) - 40, len(BASE) - 2):
    CASES[f"truncated-{cut}"] = ((lambda c: lambda: BASE[:c])(cut), "format")


def test_there_are_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_crafted_file(name: str) -> None:
    make, expected = CASES[name]
    data = make()
    if expected == "format":
        with pytest.raises(VaultFormatError) as err:
            parse(data, "crafted")
        message = str(err.value)
        assert message and "\n" not in message and "Traceback" not in message
        return
    vault = parse(data, "crafted")
    ctx = context(None, password=[b"pw", b"p2"], recovery=[ANSWERS[1]])
    if expected == "ok":
        assert unlock(vault, ctx).slot_id == "1"
    elif expected == "auth":
        with pytest.raises(NoSlotMatched):
            unlock(vault, ctx)
    else:
        with pytest.raises(VaultIntegrityError):
            unlock(vault, ctx)


def test_downgrade_of_password_costs_is_refused_outside_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vault made with real costs, edited down to test costs, is refused on read (DESIGN §6 #11)."""
    monkeypatch.delenv("TOKENAGENT_TEST_KDF")
    factor = PasswordFactor(b"s" * 16, 2, 19456, 1)
    from tokenagent.factors.password import argon2id

    secret = argon2id(b"pw", factor.salt, factor.t, factor.m, factor.p)
    vault, _ = new_vault("real", [(factor, secret)])
    assert unlock(parse(vault.to_bytes(), "real"), context([b"pw"])).slot_id == "1"
    for field, value in (("m", 8), ("t", 1), ("kdf", "argon2i"), ("p", 0)):
        doc = json.loads(vault.to_bytes())
        doc["slots"][0]["factors"][0]["params"][field] = value
        with pytest.raises(VaultFormatError):
            parse(json.dumps(doc).encode(), "real")
    # with the test switch the low costs parse, and the AEAD still refuses the edit
    monkeypatch.setenv("TOKENAGENT_TEST_KDF", "1")
    doc = json.loads(vault.to_bytes())
    doc["slots"][0]["factors"][0]["params"]["m"] = 8
    with pytest.raises(NoSlotMatched):
        unlock(parse(json.dumps(doc).encode(), "real"), context([b"pw"]))


def test_error_messages_are_one_line_tokenagent_errors() -> None:
    for name, (make, expected) in CASES.items():
        if expected == "format":
            try:
                parse(make(), "crafted")
            except TokenAgentError as err:
                assert len(str(err)) < 300, name
