"""Cryptomator vault format 8: read, verify and re-create its key files.

Theory of operation. A Cryptomator vault folder holds two small files:

* ``vault.cryptomator``: a JWT (``header.payload.signature``, base64url). The header names
  the MAC (``alg`` HS256/HS384/HS512) and where the key lives (``kid``
  ``masterkeyfile:masterkey.cryptomator``, a file name relative to the vault folder). The
  payload says ``format: 8``, the ``cipherCombo`` and a vault id (``jti``). The signature is
  an HMAC over ``header.payload`` keyed with the *raw masterkey*: the 32-byte encryption key
  followed by the 32-byte MAC key. A valid signature therefore proves that a 64-byte key is
  the key of this vault.
* ``masterkey.cryptomator``: JSON with scrypt parameters (``scryptSalt``, ``scryptCostParam``
  N, ``scryptBlockSize`` r, p = 1), the two keys each wrapped with AES key wrap (RFC 3394)
  under KEK = scrypt(password UTF-8, salt, N, r, 1, 32), a legacy ``version`` (999) and
  ``versionMac`` = HMAC-SHA256(MAC key, version as 4 bytes big-endian).

Anyone holding the cloud folder holds both files and needs only the password. tokenagent's
answer ("adopt") is to verify everything once, keep the raw 64 bytes as a tokenagent vault's
secret (behind tokens), and move ``masterkey.cryptomator`` out of the cloud folder. For the
official apps a fresh masterkey file under a new password can be written at any time
(``wrap_masterkey``), and tools that accept raw keys (pycryptomator ``--master-keys``) get
them in their encoding (``encode_keys``).

Nothing here touches the vault's encrypted content; only the two key files are read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import os
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .._files import FileTooLarge, read_regular
from ..errors import ForeignFormatError, UnsafePath, UsageError, WrongSecret
from ..factors.params import no_duplicates, strict_b64

CONFIG_NAME = "vault.cryptomator"
MASTERKEY_NAME = "masterkey.cryptomator"
KID_PREFIX = "masterkeyfile:"
VAULT_FORMAT = 8
CIPHER_COMBOS = ("SIV_GCM", "SIV_CTRMAC")
KEY_LEN = 32  # each of the encryption and MAC keys
RAW_LEN = 2 * KEY_LEN
MASTERKEY_VERSION = 999  # the legacy field every format-8 masterkey file carries
# Cryptolib's defaults for new files; reading accepts other values within MAX_SCRYPT_MEMORY.
DEFAULT_SCRYPT_COST = 1 << 15
DEFAULT_SCRYPT_BLOCK_SIZE = 8
MIN_WRITE_SCRYPT_COST = 1 << 14
SCRYPT_SALT_LEN = 8
MAX_SCRYPT_MEMORY = 1 << 30  # 128 * r * N bytes; a crafted file must not exhaust memory
MAX_FILE_BYTES = 64 * 1024
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "HS256": hashes.SHA256,
    "HS384": hashes.SHA384,
    "HS512": hashes.SHA512,
}
KEY_FORMATS = ("base64", "hex", "raw", "pycryptomator", "json")


# --- vault.cryptomator ----------------------------------------------------------------


@dataclass(frozen=True)
class VaultConfig:
    """The parsed ``vault.cryptomator`` (signature not yet checked: see ``verify_config``)."""

    signing_input: bytes
    signature: bytes
    alg: str
    kid: str
    claims: dict[str, Any]

    @property
    def masterkey_name(self) -> str:
        return self.kid[len(KID_PREFIX) :]

    @property
    def vault_id(self) -> str:
        return str(self.claims.get("jti", ""))

    @property
    def cipher_combo(self) -> str:
        return str(self.claims["cipherCombo"])


def parse_config(data: bytes) -> VaultConfig:
    """Parse a ``vault.cryptomator`` JWT; refuse anything but format 8 with an HMAC alg."""
    parts = data.strip().split(b".")
    if len(parts) != 3:
        raise ForeignFormatError(f"{CONFIG_NAME} is not a JWT (expected header.payload.signature)")
    header = _json_object(_b64_any(parts[0], "JWT header"), f"{CONFIG_NAME} header")
    claims = _json_object(_b64_any(parts[1], "JWT payload"), f"{CONFIG_NAME} payload")
    signature = _b64_any(parts[2], "JWT signature")
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in _HASHES:
        raise ForeignFormatError(f"{CONFIG_NAME}: signature algorithm {alg!r} is not HS256/HS384/HS512")
    if not isinstance(kid, str) or not kid.startswith(KID_PREFIX):
        raise ForeignFormatError(
            f"{CONFIG_NAME}: key id {kid!r} is not a masterkey file (vaults opened by Cryptomator Hub"
            " or other key loaders are not supported)"
        )
    name = kid[len(KID_PREFIX) :]
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ForeignFormatError(f"{CONFIG_NAME}: key id {kid!r} must name a file inside the vault folder")
    if claims.get("format") != VAULT_FORMAT or isinstance(claims.get("format"), bool):
        raise ForeignFormatError(
            f"{CONFIG_NAME}: vault format {claims.get('format')!r} is not supported (only format 8)"
        )
    if claims.get("cipherCombo") not in CIPHER_COMBOS:
        raise ForeignFormatError(f"{CONFIG_NAME}: cipher combo {claims.get('cipherCombo')!r} is unknown")
    return VaultConfig(parts[0] + b"." + parts[1], signature, alg, kid, claims)


def read_config(vault_dir: str | Path) -> VaultConfig:
    return parse_config(read_small(Path(vault_dir) / CONFIG_NAME, "the vault configuration"))


def verify_config(config: VaultConfig, keys: bytes | bytearray) -> None:
    """Check the JWT signature with the raw 64-byte key: proves ``keys`` belong to this vault."""
    _check_raw(keys)
    mac = crypto_hmac.HMAC(bytes(keys), _HASHES[config.alg]())
    mac.update(config.signing_input)
    if not hmac.compare_digest(mac.finalize(), config.signature):
        raise ForeignFormatError(
            f"{CONFIG_NAME} is not signed by this key: the file was changed, or the key belongs to another vault"
        )


# --- masterkey.cryptomator -------------------------------------------------------------


@dataclass(frozen=True)
class MasterkeyFile:
    version: int
    scrypt_salt: bytes
    scrypt_cost: int
    scrypt_block_size: int
    enc_wrapped: bytes
    mac_wrapped: bytes
    version_mac: bytes

    def to_json(self) -> bytes:
        """The file as cryptolib writes it (pretty-printed JSON, standard base64)."""
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        body = {
            "version": self.version,
            "scryptSalt": b64(self.scrypt_salt),
            "scryptCostParam": self.scrypt_cost,
            "scryptBlockSize": self.scrypt_block_size,
            "primaryMasterKey": b64(self.enc_wrapped),
            "hmacMasterKey": b64(self.mac_wrapped),
            "versionMac": b64(self.version_mac),
        }
        return (json.dumps(body, indent=2) + "\n").encode("ascii")


def parse_masterkey(data: bytes) -> MasterkeyFile:
    obj = _json_object(data, MASTERKEY_NAME)
    if PLACEHOLDER_KEY in obj:
        raise ForeignFormatError(f"{MASTERKEY_NAME} is tokenagent's placeholder: {obj[PLACEHOLDER_KEY]}")
    ints: dict[str, int] = {}
    for key in ("version", "scryptCostParam", "scryptBlockSize"):
        value = obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ForeignFormatError(f"{MASTERKEY_NAME}: {key} must be a positive integer")
        ints[key] = value
    n, r = ints["scryptCostParam"], ints["scryptBlockSize"]
    if n < 2 or n & (n - 1):
        raise ForeignFormatError(f"{MASTERKEY_NAME}: scryptCostParam {n} is not a power of 2")
    if 128 * r * n > MAX_SCRYPT_MEMORY:
        raise ForeignFormatError(
            f"{MASTERKEY_NAME}: scrypt parameters need more than 1 GiB of memory; refusing"
        )
    fields = {
        k: strict_b64(obj.get(k), f"{MASTERKEY_NAME}: {k}", error=ForeignFormatError)
        for k in ("scryptSalt", "primaryMasterKey", "hmacMasterKey", "versionMac")
    }
    for key in ("primaryMasterKey", "hmacMasterKey"):
        if len(fields[key]) != KEY_LEN + 8:
            raise ForeignFormatError(f"{MASTERKEY_NAME}: {key} is not a wrapped 256-bit key")
    return MasterkeyFile(
        version=ints["version"],
        scrypt_salt=fields["scryptSalt"],
        scrypt_cost=n,
        scrypt_block_size=r,
        enc_wrapped=fields["primaryMasterKey"],
        mac_wrapped=fields["hmacMasterKey"],
        version_mac=fields["versionMac"],
    )


def read_masterkey(path: str | Path) -> MasterkeyFile:
    return parse_masterkey(read_small(Path(path), "the masterkey file"))


def unwrap_masterkey(mk: MasterkeyFile, password: str) -> bytearray:
    """The raw 64 bytes (encryption key || MAC key); ``WrongSecret`` for a wrong password."""
    for candidate in _password_forms(password):
        kek = _kek(candidate, mk.scrypt_salt, mk.scrypt_cost, mk.scrypt_block_size)
        try:
            raw = bytearray(aes_key_unwrap(bytes(kek), mk.enc_wrapped))
            raw += aes_key_unwrap(bytes(kek), mk.mac_wrapped)
        except InvalidUnwrap:
            continue
        _check_version_mac(mk, raw)
        return raw
    raise WrongSecret("wrong Cryptomator password (the masterkey file did not unwrap)")


def wrap_masterkey(
    keys: bytes | bytearray, password: str, scrypt_cost: int = DEFAULT_SCRYPT_COST
) -> MasterkeyFile:
    """A fresh masterkey file for ``keys`` under ``password`` (new salt, cryptolib defaults)."""
    _check_raw(keys)
    if not password:
        raise UsageError("the new Cryptomator password must not be empty")
    if scrypt_cost < MIN_WRITE_SCRYPT_COST or scrypt_cost & (scrypt_cost - 1):
        raise UsageError(f"scrypt cost must be a power of 2 of at least {MIN_WRITE_SCRYPT_COST}")
    salt = secrets.token_bytes(SCRYPT_SALT_LEN)
    kek = bytes(_kek(unicodedata.normalize("NFC", password), salt, scrypt_cost, DEFAULT_SCRYPT_BLOCK_SIZE))
    enc, mac = bytes(keys[:KEY_LEN]), bytes(keys[KEY_LEN:])
    return MasterkeyFile(
        version=MASTERKEY_VERSION,
        scrypt_salt=salt,
        scrypt_cost=scrypt_cost,
        scrypt_block_size=DEFAULT_SCRYPT_BLOCK_SIZE,
        enc_wrapped=aes_key_wrap(kek, enc),
        mac_wrapped=aes_key_wrap(kek, mac),
        version_mac=_version_mac(mac, MASTERKEY_VERSION),
    )


# --- the vault folder as a whole ----------------------------------------------------------


def masterkey_path(vault_dir: str | Path, config: VaultConfig | None = None) -> Path:
    config = config or read_config(vault_dir)
    return Path(vault_dir) / config.masterkey_name


def open_vault(vault_dir: str | Path, password: str, masterkey: str | Path | None = None) -> bytearray:
    """Unwrap and fully verify a vault's key: scrypt + key unwrap, versionMac, JWT signature."""
    config = read_config(vault_dir)
    mk = read_masterkey(masterkey or masterkey_path(vault_dir, config))
    keys = unwrap_masterkey(mk, password)
    verify_config(config, keys)
    return keys


def check_keys(vault_dir: str | Path, keys: bytes | bytearray) -> VaultConfig:
    """Verify served keys against the vault folder (no masterkey file needed)."""
    config = read_config(vault_dir)
    verify_config(config, keys)
    return config


def encode_keys(keys: bytes | bytearray, fmt: str) -> bytes:
    """The raw key in an encoding other tools accept (see KEY_FORMATS and docs/integrations.md)."""
    _check_raw(keys)
    enc, mac = bytes(keys[:KEY_LEN]), bytes(keys[KEY_LEN:])
    if fmt == "raw":
        return bytes(keys)
    if fmt == "hex":
        return bytes(keys).hex().encode("ascii") + b"\n"
    if fmt == "base64":
        return base64.b64encode(bytes(keys)) + b"\n"
    if fmt == "pycryptomator":  # the two arguments of pycryptomator --master-keys
        # Standard base64, which its base64url decoder also reads: a base64url (or ASCII85) key can
        # begin with "-", and its argument parser would take that for an option.
        return base64.b64encode(enc) + b" " + base64.b64encode(mac) + b"\n"
    if fmt == "json":
        body = {"encKey": base64.b64encode(enc).decode(), "macKey": base64.b64encode(mac).decode()}
        return json.dumps(body).encode("ascii") + b"\n"
    raise UsageError(f"unknown key format {fmt!r}; choose one of {', '.join(KEY_FORMATS)}")


# --- helpers -------------------------------------------------------------------------------


def _kek(password: str, salt: bytes, n: int, r: int) -> bytearray:
    return bytearray(Scrypt(salt=salt, length=KEY_LEN, n=n, r=r, p=1).derive(password.encode("utf-8")))


def _password_forms(password: str) -> list[str]:
    # Cryptomator encodes the password as typed; apps on some platforms hand over NFC or NFD.
    forms = [password]
    for form in ("NFC", "NFD"):
        other = unicodedata.normalize(form, password)  # type: ignore[arg-type]
        if other not in forms:
            forms.append(other)
    return forms


def _version_mac(mac_key: bytes, version: int) -> bytes:
    mac = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(version.to_bytes(4, "big"))
    return mac.finalize()


def _check_version_mac(mk: MasterkeyFile, raw: bytearray) -> None:
    if not hmac.compare_digest(_version_mac(bytes(raw[KEY_LEN:]), mk.version), mk.version_mac):
        raise ForeignFormatError(f"{MASTERKEY_NAME}: versionMac does not match; the file was tampered with")


def _check_raw(keys: bytes | bytearray) -> None:
    if len(keys) != RAW_LEN:
        raise UsageError(f"a Cryptomator key is {RAW_LEN} bytes (encryption key + MAC key), not {len(keys)}")


def read_small(path: Path, what: str) -> bytes:
    """A Cryptomator file: a regular file (a FIFO or a device is refused, not waited on) of at most
    ``MAX_FILE_BYTES``."""
    try:
        return read_regular(path, MAX_FILE_BYTES, what=what)
    except FileNotFoundError:
        raise UsageError(f"{path} not found: is this a Cryptomator vault folder ({what})?") from None
    except PermissionError:
        raise UsageError(f"{path} cannot be read (permission denied)") from None
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror or err}") from None
    except UnsafePath as err:
        raise UsageError(err.message) from None
    except FileTooLarge:
        raise ForeignFormatError(f"{path} is too large to be {what}") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates(ForeignFormatError))
    except ForeignFormatError as err:
        raise ForeignFormatError(f"{what}: {err.message}") from None
    except (UnicodeDecodeError, ValueError):
        raise ForeignFormatError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ForeignFormatError(f"{what} is not a JSON object")
    return obj


def _b64_any(part: bytes, what: str) -> bytes:
    # JWTs use unpadded base64url; some writers (pycryptomator) use padded standard base64.
    text = part.replace(b"-", b"+").replace(b"_", b"/").rstrip(b"=")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ForeignFormatError(f"{CONFIG_NAME}: the {what} is not base64") from None


PLACEHOLDER_KEY = "tokenagent"


def placeholder(name: str) -> bytes:
    """What ``adopt`` leaves in place of masterkey.cryptomator: JSON without any key material.

    The official apps refuse it (no scryptSalt, no wrapped keys), which is the point: the
    cloud folder no longer holds what a password would unlock. Tools given the raw keys
    (pycryptomator ``--master-keys``) still open the file, and find it there.
    """
    body = {PLACEHOLDER_KEY: f"the keys of this vault are kept by tokenagent (vault {name!r}); to use the"
                             f" official apps run: tokenagent cryptomator export-masterkey {name} FILE"}
    return json.dumps(body, indent=2).encode() + b"\n"


def replace_with_placeholder(path: str | Path, name: str) -> None:
    """Atomically put the placeholder where the masterkey file is (temp file, fsync, rename)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tokenagent-tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    write_new_file(temp, placeholder(name), 0o644)
    os.replace(temp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_new_file(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` exclusively (never overwrite), write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
