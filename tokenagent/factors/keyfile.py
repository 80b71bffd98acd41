"""The key-file factor, with KeePass's key-file rules, so one file serves both tools.

A key file's key (32 bytes) is, as KeePass and KeePassXC compute it:
* XML version 2.0: ``<Data Hash="H">`` hex (whitespace ignored), checked against the first
  4 bytes of its SHA-256;
* XML version 1.0: ``<Data>`` base64 of the key;
* exactly 32 bytes: the bytes themselves;
* exactly 64 hex characters: their value;
* anything else: SHA-256 of the whole file.

The slot stores a path hint (where the file was at enrolment, e.g. on a USB stick) and a
4-byte check value. A hint ``UUID=<filesystem uuid>:<path inside it>`` names a key disk:
the file is looked for on that filesystem wherever it is mounted (``--keyfile
UUID=…:/pwsafe.key`` at enrolment; the agent unlocks such slots when the filesystem is
mounted and locks them when it goes, as with a token). The check value (HKDF of the key), so a wrong file is reported as "not this key file"
and the unlock moves on instead of failing the whole slot. Key files made by tokenagent
carry 256 random bits; for low-entropy "any file" keys the check value lowers the search
space by 32 bits, which docs/spec/vault.md states.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import NotMine, UsageError, VaultExists, VaultFormatError
from .base import Factor, FactorContext, JSONValue, register
from .params import expect_hex, expect_keys, expect_str

CHECK_LABEL = b"tokenagent/v1/keyfile-check"
MAX_XML_BYTES = 1 << 20
MAX_KEYFILE_BYTES = 64 << 20  # "any file" key files are hashed whole; larger ones are refused
_HEX64 = re.compile(rb"^[0-9A-Fa-f]{64}$")


class KeyFileError(UsageError):
    """A key file that looks like a KeePass XML key file but is broken."""

    code = "keyfile"


def keepass_key(data: bytes) -> bytes:
    """The 32-byte key KeePass derives from a key file's contents."""
    if len(data) <= MAX_XML_BYTES and data.lstrip()[:1] == b"<":
        key = _xml_key(data)
        if key is not None:
            return key
    if len(data) == 32:
        return data
    if len(data) == 64 and _HEX64.match(data):
        return bytes.fromhex(data.decode("ascii"))
    return hashlib.sha256(data).digest()


def _xml_key(data: bytes) -> bytes | None:
    from xml.etree import ElementTree  # here, not at the top: the agent loads this module at start

    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError:
        return None
    if root.tag != "KeyFile":
        return None
    version = (root.findtext("Meta/Version") or "").strip()
    element = root.find("Key/Data")
    if element is None or element.text is None:
        raise KeyFileError("the XML key file has no <Key><Data>; it is damaged")
    if version.startswith("1."):
        try:
            return base64.b64decode(element.text.strip(), validate=True)
        except binascii.Error:
            raise KeyFileError("the XML 1.0 key file's data is not base64; it is damaged") from None
    if version.startswith("2."):
        try:
            key = bytes.fromhex("".join(element.text.split()))
        except ValueError:
            raise KeyFileError("the XML 2.0 key file's data is not hex; it is damaged") from None
        expected = element.get("Hash", "")
        if expected and hashlib.sha256(key).digest()[:4].hex().upper() != expected.upper():
            raise KeyFileError("the XML 2.0 key file fails its hash check; it is damaged or mistyped")
        return key
    raise KeyFileError(f"unsupported KeePass key file version {version!r}")


def xml2_keyfile(key: bytes) -> bytes:
    """A KeePass XML 2.0 key file holding ``key`` (the format KeePassXC writes)."""
    hexkey = key.hex().upper()
    groups = [hexkey[i : i + 8] for i in range(0, len(hexkey), 8)]
    lines = "\n".join("\t\t\t" + " ".join(groups[i : i + 4]) for i in range(0, len(groups), 4))
    digest = hashlib.sha256(key).digest()[:4].hex().upper()
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<KeyFile>\n\t<Meta>\n\t\t<Version>2.0</Version>\n\t</Meta>\n'
        f'\t<Key>\n\t\t<Data Hash="{digest}">\n{lines}\n\t\t</Data>\n\t</Key>\n</KeyFile>\n'
    ).encode()


def generate_keyfile(path: Path) -> None:
    """Write a new XML 2.0 key file with 256 random bits, mode 0400; never overwrite.

    A failed write (a full disk) removes the partial file: nothing half-written is left to be
    mistaken for a key file later."""
    from ..errors import StorageError

    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    except FileExistsError:
        raise VaultExists(f"{path} exists already; tokenagent never overwrites a key file") from None
    except FileNotFoundError:
        raise UsageError(f"cannot write {path}: the directory {Path(path).parent} does not exist") from None
    except OSError as err:
        raise StorageError.from_os(err, f"cannot write the key file {path}") from None
    try:
        data = memoryview(xml2_keyfile(key))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as err:
        os.close(fd)
        os.unlink(path)
        raise StorageError.from_os(err, f"cannot write the key file {path}") from None
    os.close(fd)


DISK_PREFIX = "UUID="


def parse_disk_hint(hint: str) -> tuple[str, str] | None:
    """``UUID=<uuid>:<path inside the filesystem>`` as (uuid, path), else None."""
    if not hint.startswith(DISK_PREFIX) or ":" not in hint:
        return None
    uuid, _, inside = hint[len(DISK_PREFIX):].partition(":")
    if not uuid or not re.fullmatch(r"[0-9A-Za-z-]{4,64}", uuid):
        return None
    return uuid.lower(), "/" + inside.lstrip("/")


def resolve_hint(hint: str) -> str:
    """Where the key file of ``hint`` is now: the path itself, or its place on the named key
    disk; raises NotMine when that filesystem is not mounted."""
    disk = parse_disk_hint(hint)
    if disk is None:
        return hint
    from ..discovery import filesystem_mount

    mount = filesystem_mount(disk[0])
    if mount is None:
        raise NotMine(f"the key disk with filesystem {disk[0]} is not mounted (insert and mount it)")
    return str(Path(mount) / disk[1].lstrip("/"))


def read_keyfile(path: str | Path) -> bytearray:
    """The KeePass key of the key file at ``path``: a regular file (never a FIFO or a device) of at
    most MAX_KEYFILE_BYTES, so a path planted in a vault file cannot make the reader hang."""
    from .._files import read_small_file

    return bytearray(keepass_key(read_small_file(path, MAX_KEYFILE_BYTES, "key file")))


def _check(key: bytes | bytearray) -> str:
    from ..vault.crypto import hkdf

    return bytes(hkdf(key, None, CHECK_LABEL, 4)).hex()


@register
class KeyFileFactor(Factor):
    type = "keyfile"

    def __init__(self, hint: str, check: str) -> None:
        self.hint, self.check = hint, check

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"hint", "check"}, "keyfile")
        expect_hex(params, "check", 4, "keyfile")
        hint = expect_str(params, "hint", "keyfile")
        if "\x00" in hint:
            raise VaultFormatError("keyfile: hint must not contain a NUL character")
        return cls(hint, str(params["check"]))

    def params(self) -> dict[str, JSONValue]:
        return {"hint": self.hint, "check": self.check}

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        path = options.get("path")
        if not path:
            raise UsageError("--keyfile needs the path of the key file")
        disk = parse_disk_hint(str(path))
        if disk is not None:
            try:
                key = read_keyfile(resolve_hint(str(path)))
            except NotMine as err:
                raise UsageError(err.message) from None
            return cls(f"{DISK_PREFIX}{disk[0]}:{disk[1]}", _check(key)), key
        key = read_keyfile(path)
        return cls(str(Path(path).resolve()), _check(key)), key

    def unlock(self, ctx: FactorContext) -> bytearray:
        offered = [str(p) for p in ctx.options.get("keyfiles", ())]
        problems = []
        hinted = []
        if self.hint and not offered:
            try:
                hinted = [resolve_hint(self.hint)]
            except NotMine as err:
                problems.append(err.message)
        candidates = offered or hinted  # paths given win over the hint
        for path in candidates:
            if not offered and not os.path.exists(path):
                problems.append(f"{path} is not there (insert the medium or pass --keyfile PATH)")
                continue
            try:
                key = read_keyfile(path)
            except UsageError as err:
                problems.append(err.message)
                continue
            if secrets.compare_digest(_check(key), self.check):
                return key
            key[:] = bytes(len(key))
            problems.append(f"{path} is not the key file of this slot")
        raise NotMine("; ".join(problems) or "no key file given (pass --keyfile PATH)")

    def disk_uuid(self) -> str | None:
        """The filesystem UUID of the key disk this factor's file lives on (None: a plain path)."""
        disk = parse_disk_hint(self.hint)
        return disk[0] if disk else None

    def describe(self) -> str:
        disk = parse_disk_hint(self.hint)
        if disk is not None:
            return f"key file {disk[1]} on the key disk {disk[0]}"
        return f"key file ({self.hint})" if self.hint else "key file"
