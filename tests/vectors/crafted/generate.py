"""Regenerate the crafted vault-file corpus: ``python tests/vectors/crafted/generate.py`` (from the repo root).

Three sound vaults (a 2-of-3 threshold slot of two passwords and a recovery key; a password slot holding an
imported canary secret; a key-file slot plus a password slot) are written at test KDF costs, then damaged
in every way listed below: by hand-picked cases, and systematically (every field deleted, set to null, set
to a value of the wrong type; every base64 field bit-flipped, cut short, and given a character outside
the alphabet). Each file's expected outcome goes into manifest.json:

    ok          loads, and a slot opens with the secrets in the manifest
    format      refused when read (vault-format), with a message holding ``fragment``
    auth        reads, but no slot opens (the AEAD binds the edited value)
    integrity   a slot opens, the header MAC (or the fingerprint) catches the edit

For systematic cases the rule gives the outcome (a deleted or mistyped field: format; an edited bound
field: auth; an edited unbound field: integrity) and the generator checks the reader agrees before it
writes anything: a disagreement is a bug to look at, not a vector to record.
tests/core/test_crafted_corpus.py walks the corpus through the real CLI.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["TOKENAGENT_TEST_KDF"] = "1"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/: the scripted UI
sys.path.insert(0, str(HERE.parents[2]))  # the repository

from scripted import context  # noqa: E402

from tokenagent.errors import NoSlotMatched, VaultFormatError, VaultIntegrityError  # noqa: E402
from tokenagent.factors.keyfile import KeyFileFactor, keepass_key  # noqa: E402
from tokenagent.factors.password import PasswordFactor  # noqa: E402
from tokenagent.factors.recovery import RecoveryFactor  # noqa: E402
from tokenagent.vault import new_vault, operations, unlock  # noqa: E402
from tokenagent.vault.format import parse  # noqa: E402

PASSWORDS = ["crafted-pw-1", "crafted-pw-2"]
CANARY = b"CANARY-crafted-imported-secret-41d7"
KEYFILE_BYTES = b"crafted key file: any bytes hash to a key\n"
Doc = dict[str, Any]


class _Store:
    """Enough of a VaultStore for operations.add_slot, in memory."""

    def __init__(self, vault: Any) -> None:
        self.vault = vault

    def update(self, name: str, change: Callable[[Any], Any], check: Any = None) -> Any:
        self.vault = change(self.vault)
        return self.vault


def bases() -> tuple[dict[str, bytes], dict[str, Any]]:
    ctx = context([PASSWORDS[0].encode(), PASSWORDS[1].encode()])
    enrolled = [PasswordFactor.enroll(ctx, {}), RecoveryFactor.enroll(ctx, {}), PasswordFactor.enroll(ctx, {})]
    recovery = ctx.ui.shown[0]  # type: ignore[attr-defined]
    threshold, key_t = new_vault("crafted", enrolled, threshold=2)
    single, key_s = new_vault("crafted", [PasswordFactor.enroll(context([PASSWORDS[0].encode()]), {})], secret=CANARY)
    key = bytearray(keepass_key(KEYFILE_BYTES))
    from tokenagent.factors import keyfile as kf

    keyfile = KeyFileFactor("/media/usb/crafted.key", kf._check(key))
    kvault, key_k = new_vault("crafted", [(keyfile, key)])
    store = _Store(kvault)
    operations.add_slot(store, "crafted", key_k,  # type: ignore[arg-type]
                        [PasswordFactor.enroll(context([PASSWORDS[0].encode()]), {})])
    secrets = {"passwords": PASSWORDS, "recovery": recovery,
               "masterkeys": [bytes(key_t).hex(), bytes(key_s).hex(), bytes(key_k).hex()],
               "canary": CANARY.decode()}
    return {"threshold": threshold.to_bytes(), "single": single.to_bytes(),
            "keyfile": store.vault.to_bytes()}, secrets


def outcome(data: bytes, secrets: dict[str, Any]) -> tuple[str, str]:
    try:
        vault = parse(data, "crafted")
    except VaultFormatError as err:
        return "format", err.message
    ctx = context(None, password=[p.encode() for p in secrets["passwords"]], recovery=[secrets["recovery"].encode()])
    try:
        unlock(vault, ctx)
    except NoSlotMatched:
        return "auth", ""
    except VaultIntegrityError as err:
        return "integrity", err.message
    return "ok", ""


def flip(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every field of the document (objects' keys and lists' items), depth first."""
    out: list[tuple[tuple[Any, ...], Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append(((*path, key), value))
        out.extend(leaves(value, (*path, key)))
    return out


def edited(doc: Doc, path: tuple[Any, ...], value: Any) -> Doc:
    new = copy.deepcopy(doc)
    node = new
    for part in path[:-1]:
        node = node[part]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return new


DELETE = object()
B64_FIELDS = {"vault_id", "mac", "salt", "nonce", "wrapped", "sealed"}
UNBOUND = {"label", "created", "last_drill", "seq", "allow_raw", "fingerprint", "mac", "hint"}


def wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"0": value[0]} if value else {}
    if isinstance(value, dict):
        return [value]
    return True


def systematic(name: str, base: bytes, kinds: set[str]) -> dict[str, tuple[bytes, str | None]]:
    doc = json.loads(base)
    cases: dict[str, tuple[bytes, str | None]] = {}
    for path, value in leaves(doc):
        label = "-".join(str(p) for p in path).replace("_", "")
        inside_params = "params" in path and path[-1] != "params"
        key = path[-1]
        optional = key == "last_drill" and value is None
        if isinstance(key, str):
            cases[f"{name}-del-{label}"] = (json.dumps(edited(doc, path, DELETE)).encode(), "format")
        if not optional:
            cases[f"{name}-type-{label}"] = (json.dumps(edited(doc, path, wrong_type(value))).encode(),
                                             None if inside_params and key == "shares" else "format")
        if value is not None and not optional and key != "last_drill":
            cases[f"{name}-null-{label}"] = (json.dumps(edited(doc, path, None)).encode(), "format")
        if key in B64_FIELDS or (inside_params and key == "salt"):
            # auth, or integrity where another slot (or k other shares) still opens and the MAC then objects
            cases[f"{name}-flip-{label}"] = (json.dumps(edited(doc, path, flip(value))).encode(),
                                             "integrity" if key == "mac" else "refused")
            cases[f"{name}-short-{label}"] = (json.dumps(edited(doc, path, value[:-4])).encode(), "format")
            cases[f"{name}-alphabet-{label}"] = (json.dumps(edited(doc, path, "*" + value[1:])).encode(), "format")
    return {case: value for case, value in cases.items() if case.split("-")[1] in kinds}


SYSTEMATIC = {"threshold": {"del", "type", "null", "flip", "short", "alphabet"},
              "keyfile": {"del", "type", "flip", "short", "alphabet"}, "single": {"flip"}}


def by_hand(bases_: dict[str, bytes]) -> dict[str, tuple[bytes, str | None]]:
    t, s, k = bases_["threshold"], bases_["single"], bases_["keyfile"]
    doc_t, doc_s, doc_k = json.loads(t), json.loads(s), json.loads(k)

    assert doc_s.get("imported") is True, "the single vault holds an imported secret"

    def sets(doc: Doc, *pairs: tuple[tuple[Any, ...], Any]) -> bytes:
        for path, value in pairs:
            doc = edited(doc, path, value)
        return json.dumps(doc).encode()

    slot = ("slots", 0)
    pw = (*slot, "factors", 0, "params")
    hint = ("slots", 0, "factors", 0, "params", "hint")
    cases: dict[str, tuple[bytes, str | None]] = {
        "ok-threshold": (t, "ok"), "ok-single": (s, "ok"), "ok-keyfile": (k, "ok"),
        "ok-reserialized-compact": (json.dumps(doc_t, separators=(",", ":")).encode(), "ok"),
        "ok-reserialized-unsorted": (json.dumps(dict(reversed(list(doc_t.items())))).encode(), "ok"),
        "ok-leading-whitespace": (b" \n\t" + t, "ok"),
        "ok-unicode-escapes": (t.replace(b'"format"', b'"\\u0066ormat"'), "ok"),
        "empty": (b"", "format"), "null": (b"null", "format"), "array": (b"[]", "format"),
        "string": (b'"tokenagent-vault/1"', "format"), "number": (b"1", "format"),
        "bom": (b"\xef\xbb\xbf" + t, "format"), "utf16": (t.decode().encode("utf-16"), "format"),
        "not-utf8": (b"\xff\xfe" + t, "format"), "nul-bytes": (t + b"\0" * 16, "format"),
        "trailing-garbage": (t + b"x", "format"), "trailing-object": (t + b"{}", "format"),
        "two-documents": (t + t, "format"), "deep-nesting": (b"[" * 50000 + b"]" * 50000, "format"),
        "deep-nesting-in-label": (sets(doc_t, ((*slot, "label"), 0)).replace(b'"label": 0', b'"label": '
                                  + b"[" * 3000 + b"]" * 3000), "format"),
        "huge-file": (b" " * ((1 << 20) + 1), "format"),
        "nan": (t.replace(b'"seq": 1', b'"seq": NaN'), "format"),
        "infinity": (t.replace(b'"seq": 1', b'"seq": Infinity'), "format"),
        "float": (t.replace(b'"seq": 1', b'"seq": 1.0'), "format"),
        "exponent": (t.replace(b'"seq": 1', b'"seq": 1e0'), "format"),
        "huge-float": (t.replace(b'"seq": 1', b'"seq": 1e400'), "format"),
        "int-5000-digits": (t.replace(b'"seq": 1', b'"seq": ' + b"9" * 5000), "format"),
        "int-5000-digits-negative": (t.replace(b'"seq": 1', b'"seq": -' + b"9" * 5000), "format"),
        "int-21-digits": (t.replace(b'"seq": 1', b'"seq": ' + b"1" * 21), "format"),
        "seq-2-pow-53-plus-1": (sets(doc_t, (("seq",), 2**53 + 1)), "format"),
        "seq-negative": (sets(doc_t, (("seq",), -1)), "format"),
        "duplicate-key-top": (t.replace(b'"seq": 1,', b'"seq": 1, "seq": 2,'), "format"),
        "duplicate-key-slot": (t.replace(b'"label": ""', b'"label": "", "label": "x"'), "format"),
        "duplicate-key-params": (t.replace(b'"kdf": "argon2id"', b'"kdf": "argon2id", "kdf": "argon2id"'), "format"),
        "unknown-top-key": (sets(doc_t, (("extra",), 1)), "format"),
        "unknown-slot-key": (sets(doc_t, ((*slot, "extra"), 1)), "format"),
        "unknown-descriptor-key": (sets(doc_t, ((*slot, "factors", 0, "note"), "x")), "format"),
        "unknown-descriptor-key-unknown-type": (sets(doc_t, ((*slot, "factors", 0), {"type": "quantum",
                                                "params": {}, "x": 1})), "format"),
        "unknown-param": (sets(doc_t, ((*pw, "extra"), 1)), "format"),
        "share-extra-key": (sets(doc_t, ((*slot, "shares", 0, "x"), 1)), "format"),
        "lone-surrogate-label": (t.replace(b'"label": ""', b'"label": "\\udcff"'), "format"),
        "lone-surrogate-key": (t.replace(b'"label": ""', b'"label": "", "\\ud800": 1'), "format"),
        "lone-surrogate-hint": (k.replace(b'"hint": "/media', b'"hint": "\\udfff/media'), "format"),
        "paired-surrogates-label": (t.replace(b'"label": ""', b'"label": "\\ud83d\\ude00"'), "integrity"),
        "nul-in-hint": (sets(doc_k, (hint, "/media/\0usb")), "format"),
        "slots-65": (sets(doc_t, (("slots",), [dict(doc_t["slots"][0], id=str(i)) for i in range(1, 66)])),
                     "format"),
        "slots-64-same-slot": (sets(doc_t, (("slots",), [dict(doc_t["slots"][0], id=str(i))
                                                      for i in range(1, 65)])), "integrity"),
        "factors-17": (sets(doc_t, ((*slot, "factors"), doc_t["slots"][0]["factors"] * 6)), "format"),
        "slot-duplicate-id": (sets(doc_t, (("slots",), doc_t["slots"] * 2)), "format"),
        "slot-id-zero": (sets(doc_t, ((*slot, "id"), "0")), "format"),
        "slot-id-leading-zero": (sets(doc_t, ((*slot, "id"), "01")), "format"),
        "slot-id-7-digits": (sets(doc_t, ((*slot, "id"), "1000000")), "format"),
        "slot-id-newline": (sets(doc_t, ((*slot, "id"), "1\n")), "format"),
        "slot-id-space": (sets(doc_t, ((*slot, "id"), " 1")), "format"),
        "slot-id-arabic-digit": (sets(doc_t, ((*slot, "id"), "\u0661")), "format"),
        "slot-id-changed": (sets(doc_t, ((*slot, "id"), "7")), "auth"),
        "fingerprint-newline": (sets(doc_t, (("fingerprint",), doc_t["fingerprint"] + "\n")), "format"),
        "fingerprint-upper": (sets(doc_t, (("fingerprint",), doc_t["fingerprint"].upper())), "format"),
        "fingerprint-other": (sets(doc_t, (("fingerprint",), "0000:0000:0000:0000:0000:0000:0000:0000")),
                              "integrity"),
        "label-201": (sets(doc_t, ((*slot, "label"), "x" * 201)), "format"),
        "label-200": (sets(doc_t, ((*slot, "label"), "x" * 200)), "integrity"),
        "label-ansi": (sets(doc_t, ((*slot, "label"), "\x1b[2J\x1b]0;owned\x07")), "integrity"),
        "label-bidi": (sets(doc_t, ((*slot, "label"), "\u202etxt.exe")), "integrity"),
        "label-changed": (sets(doc_t, ((*slot, "label"), "evil")), "integrity"),
        "allow-raw-flipped": (sets(doc_t, (("allow_raw",), True)), "integrity"),
        "seq-changed": (sets(doc_t, (("seq",), 9)), "integrity"),
        "created-changed": (sets(doc_t, (("created",), 1)), "integrity"),
        "last-drill-changed": (sets(doc_t, ((*slot, "last_drill"), 5)), "integrity"),
        "secret-len-zero": (sets(doc_t, (("secret_len",), 0)), "format"),
        "secret-len-4097": (sets(doc_t, (("secret_len",), 4097)), "format"),
        "secret-len-mismatch": (sets(doc_t, (("secret_len",), 31)), "format"),
        "policy-unknown-kind": (sets(doc_t, ((*slot, "policy"), {"kind": "any"})), "format"),
        "policy-extra-key": (sets(doc_t, ((*slot, "policy", "x"), 1)), "format"),
        "policy-k-4": (sets(doc_t, ((*slot, "policy", "k"), 4)), "format"),
        "policy-k-0": (sets(doc_t, ((*slot, "policy", "k"), 0)), "format"),
        "policy-k-1": (sets(doc_t, ((*slot, "policy", "k"), 1)), "auth"),
        "policy-k-3": (sets(doc_t, ((*slot, "policy", "k"), 3)), "auth"),
        "policy-all-with-shares": (sets(doc_t, ((*slot, "policy"), {"kind": "all"})), "format"),
        "policy-threshold-without-shares": (sets(doc_s, (("slots", 0, "policy"), {"kind": "threshold", "k": 1})),
                                            "format"),
        "shares-short": (sets(doc_t, ((*slot, "shares"), doc_t["slots"][0]["shares"][:2])), "format"),
        "shares-long": (sets(doc_t, ((*slot, "shares"), doc_t["slots"][0]["shares"] * 2)), "format"),
        "shares-swapped": (sets(doc_t, ((*slot, "shares"), doc_t["slots"][0]["shares"][::-1])), "auth"),
        "factors-reordered": (sets(doc_t, ((*slot, "factors"), doc_t["slots"][0]["factors"][::-1])), "auth"),
        "factor-type-unknown": (sets(doc_t, ((*slot, "factors", 0, "type"), "quantum")), "auth"),
        "factor-type-empty": (sets(doc_t, ((*slot, "factors", 0, "type"), "")), "auth"),
        "factor-type-keyfile-params-password": (sets(doc_t, ((*slot, "factors", 0, "type"), "keyfile")), "format"),
        "password-kdf-scrypt": (sets(doc_t, ((*pw, "kdf"), "scrypt")), "format"),
        "password-kdf-argon2i": (sets(doc_t, ((*pw, "kdf"), "argon2i")), "format"),
        "password-t-zero": (sets(doc_t, ((*pw, "t"), 0)), "format"),
        "password-t-raised": (sets(doc_t, ((*pw, "t"), 2)), "auth"),
        "password-t-over-limit": (sets(doc_t, ((*pw, "t"), 65)), "format"),
        "password-t-65536": (sets(doc_t, ((*pw, "t"), 65536)), "format"),
        "password-m-4gib": (sets(doc_t, ((*pw, "m"), 1 << 22)), "format"),
        "password-m-over-limit": (sets(doc_t, ((*pw, "m"), (1 << 20) + 1)), "format"),
        "password-m-below-lanes": (sets(doc_t, ((*pw, "m"), 7)), "format"),
        "password-p-zero": (sets(doc_t, ((*pw, "p"), 0)), "format"),
        "password-p-17": (sets(doc_t, ((*pw, "p"), 17), ((*pw, "m"), 1024)), "format"),
        "password-p-64": (sets(doc_t, ((*pw, "p"), 64), ((*pw, "m"), 1024)), "format"),
        "password-total-work-over-limit": (sets(doc_t, *[((*slot, "factors", i, "params", f), v) for i in (0, 2)
                                                        for f, v in (("m", 1 << 20), ("t", 64))]), "format"),
        "password-salt-short": (sets(doc_t, ((*pw, "salt"), base64.b64encode(b"s").decode())), "format"),
        "recovery-check-upper": (sets(doc_t, ((*slot, "factors", 1, "params", "check"), "ABCDEF01")), "format"),
        "recovery-check-short": (sets(doc_t, ((*slot, "factors", 1, "params", "check"), "abc")), "format"),
        "recovery-shares-bad": (sets(doc_t, ((*slot, "factors", 1, "params", "shares"), [3, 2])), "format"),
        "recovery-shares-bool": (sets(doc_t, ((*slot, "factors", 1, "params", "shares"), [True, 2])), "format"),
        "recovery-shares-added": (sets(doc_t, ((*slot, "factors", 1, "params", "shares"), [2, 3])), "auth"),
        "vault-id-changed": (sets(doc_t, (("vault_id",), flip(doc_t["vault_id"]))), "auth"),
        "vault-id-url-alphabet": (sets(doc_t, (("vault_id",), doc_t["vault_id"].replace("+", "-").replace("/", "_")
                                               + ("" if "+" in doc_t["vault_id"] or "/" in doc_t["vault_id"]
                                                  else "!"))), "format"),
        "vault-id-unpadded": (sets(doc_t, (("vault_id",), doc_t["vault_id"].rstrip("="))), "format"),
        "vault-id-whitespace": (sets(doc_t, (("vault_id",), doc_t["vault_id"][:4] + " " + doc_t["vault_id"][4:])),
                                "format"),
        "single-allow-raw-off": (sets(doc_s, (("allow_raw",), False)), "integrity"),
        "single-secret-len-32": (sets(doc_s, (("secret_len",), 32)), "format"),
        "keyfile-hint-dev-zero": (sets(doc_k, (hint, "/dev/zero")), "integrity"),
        "keyfile-hint-dev-urandom": (sets(doc_k, (hint, "/dev/urandom")), "integrity"),
        "keyfile-hint-dev-tty": (sets(doc_k, (hint, "/dev/tty")), "integrity"),
        "keyfile-hint-dev-stdin": (sets(doc_k, (hint, "/dev/stdin")), "integrity"),
        "keyfile-hint-proc-fd": (sets(doc_k, (hint, "/proc/self/fd/0")), "integrity"),
        "keyfile-hint-root-dir": (sets(doc_k, (hint, "/")), "integrity"),
        "keyfile-hint-proc-kcore": (sets(doc_k, (hint, "/proc/kcore")), "integrity"),
        "keyfile-hint-relative": (sets(doc_k, (hint, "../../etc/passwd")), "integrity"),
        "keyfile-hint-empty": (sets(doc_k, (hint, "")), "integrity"),
        "keyfile-hint-ansi": (sets(doc_k, (hint, "/media/\x1b[31musb\x1b[0m/\x07key")), "integrity"),
        "keyfile-hint-4097": (sets(doc_k, (hint, "/" + "x" * 4096)), "format"),
        "keyfile-hint-long-name": (sets(doc_k, (hint, "/" + "x" * 4000)), "integrity"),
        "keyfile-check-changed": (sets(doc_k, (("slots", 0, "factors", 0, "params", "check"), "00000000")),
                                  "integrity"),
        "keyfile-slots-swapped": (sets(doc_k, (("slots",), doc_k["slots"][::-1])), "integrity"),
        "keyfile-slot-removed": (sets(doc_k, (("slots",), doc_k["slots"][1:])), "integrity"),
        "imported-false": (sets(doc_s, (("imported",), False)), "format"),
        "imported-string": (sets(doc_s, (("imported",), "true")), "format"),
        "imported-removed": (sets(doc_s, (("imported",), DELETE)), "integrity"),
        "imported-added": (sets(doc_t, (("imported",), True)), "integrity"),
        "format-newer-2": (sets(doc_t, (("format",), "tokenagent-vault/2")), "format"),
        "format-newer-10": (sets(doc_t, (("format",), "tokenagent-vault/10")), "format"),
    }
    for fmt in ("tokenagent-vault/", "tokenagent-vault/01", "tokenagent-vault/1.0", "tokenagent-vault/x",
                "tokenagent-vault/1 ", "tokenagent-vault/0", "tokenagent-vault/1\n", "tokenagent-vault/-1",
                "tokenagent-vault", "tokenagent-vault/1/2", "other-tool/1", ""):
        slug = fmt.replace("tokenagent-vault", "tv").replace("/", "_").replace(" ", "sp").replace("\n", "nl") or "empty"
        cases[f"format-{slug}".replace(".", "dot")] = (sets(doc_t, (("format",), fmt)), "format")
    for cut in (1, 2, 10, 100, 500, len(t) // 2, len(t) - 40, len(t) - 3, len(t) - 2):
        cases[f"truncated-{cut}"] = (t[:cut], "format")
    return cases


FRAGMENTS = {  # what the message must say, for the hand-picked cases that test a decision
    "int-5000-digits": "digits", "lone-surrogate-label": "lone surrogate", "unknown-descriptor-key": "'type' and",
    "slots-65": "1 to 64", "password-m-4gib": "TOKENAGENT_MAX_KDF_MEMORY_MIB",
    "password-total-work-over-limit": "TOKENAGENT_MAX_KDF_TOTAL_GIB", "format-newer-2": "upgrade",
    "format-tv_01": "malformed", "format-tv_1dot0": "malformed", "format-tv_x": "malformed", "format-tv_": "malformed",
    "format-tv_1sp": "malformed", "format-tv_0": "malformed", "format-tv_1nl": "malformed",
    "huge-file": "larger than", "deep-nesting": "nests too deeply", "nul-in-hint": "NUL",
}


def main() -> None:
    bases_, secrets = bases()
    cases = by_hand(bases_)
    for name, base in bases_.items():
        cases.update(systematic(name, base, SYSTEMATIC[name]))
    for old in HERE.glob("*.vault"):
        old.unlink()
    files: dict[str, Any] = {}
    disagreements = []
    for i, (name, (data, expected)) in enumerate(sorted(cases.items()), 1):
        actual, message = outcome(data, secrets)
        if expected is not None and actual != expected and not (expected == "refused" and actual != "ok"
                                                                and actual != "format"):
            disagreements.append(f"{name}: expected {expected}, the reader says {actual} ({message})")
            continue
        fragment = FRAGMENTS.get(name, "")
        if fragment and fragment not in message:
            disagreements.append(f"{name}: message {message!r} lacks {fragment!r}")
        file_name = f"c{i:03d}-{name}"[:60].rstrip("-.") + ".vault"
        (HERE / file_name).write_bytes(data)
        files[file_name] = {"expect": actual, **({"fragment": fragment} if fragment else {})}
    if disagreements:
        raise SystemExit("\n".join(disagreements))
    manifest = {"secrets": secrets, "files": files}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    counts: dict[str, int] = {}
    for entry in files.values():
        counts[entry["expect"]] = counts.get(entry["expect"], 0) + 1
    print(f"{len(files)} files: {counts}")


if __name__ == "__main__":
    main()
