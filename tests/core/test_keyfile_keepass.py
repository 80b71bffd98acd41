"""Key files give the same 32-byte key that KeePass computes, cross-checked with pykeepass."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from pykeepass.kdbx_parsing.common import compute_key_composite

from tokenagent.factors.keyfile import KeyFileError, generate_keyfile, keepass_key, xml2_keyfile


def _pykeepass_key(path: Path) -> bytes:
    # Without a password, pykeepass's composite key is SHA-256(key file key).
    return compute_key_composite(password=None, keyfile=str(path))


def _forms(tmp_path: Path) -> dict[str, Path]:
    key = os.urandom(32)
    forms = {
        "xml2": xml2_keyfile(key),
        "xml1": (
            b'<?xml version="1.0" encoding="utf-8"?>\n<KeyFile><Meta><Version>1.00</Version></Meta>'
            b"<Key><Data>" + base64.b64encode(key) + b"</Data></Key></KeyFile>\n"
        ),
        "raw32": os.urandom(32),
        "hex64": os.urandom(32).hex().encode(),
        "HEX64": os.urandom(32).hex().upper().encode(),
        "other-text": b"just some notes, not a key file\n",
        "other-binary": os.urandom(1000),
        "empty": b"",
        "33-bytes": os.urandom(33),
        "63-hex": os.urandom(32).hex()[:63].encode(),
        "xml-not-keyfile": b"<html><body>hello</body></html>",
    }
    out = {}
    for name, data in forms.items():
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = path
    return out


def test_every_keepass_form_matches_pykeepass(tmp_path: Path) -> None:
    forms = _forms(tmp_path)
    for name, path in forms.items():
        ours = keepass_key(path.read_bytes())
        assert len(ours) == 32, name
        assert hashlib.sha256(ours).digest() == _pykeepass_key(path), name


def test_generated_keyfile_matches_pykeepass(tmp_path: Path) -> None:
    path = tmp_path / "gen.keyx"
    generate_keyfile(path)
    assert b"<Version>2.0</Version>" in path.read_bytes()
    assert hashlib.sha256(keepass_key(path.read_bytes())).digest() == _pykeepass_key(path)


def test_xml2_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    data = xml2_keyfile(os.urandom(32))
    start = data.index(b'Hash="') + 6
    flipped = data[:start] + (b"0" if data[start:start + 1] != b"0" else b"1") + data[start + 1 :]
    with pytest.raises(KeyFileError, match="hash check"):
        keepass_key(flipped)
