"""One error tree for all of tokenagent.

Foreign errors (``CtapError``, ``ApduError``, ``OSError``...) are translated where they
enter our code; ours are translated to wire codes by the daemon and to exit codes by the
CLI (see docs/exit-codes.md). Messages never contain secrets: they name the problem
and what to do about it.

Every class carries a stable ``code`` (used on the wire and in ``--json`` output) and
an ``exit_code`` for the CLI. Subclasses may add fields, but must keep ``str(err)`` a
one-line human message.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``tokenagent`` command (documented in docs/exit-codes.md)."""

    OK = 0
    FAILURE = 1  # generic / unexpected
    USAGE = 2  # bad command line (click uses 2 as well)
    VAULT = 3  # vault missing, damaged, format not understood
    AUTH = 4  # wrong password/PIN/recovery key, no slot matched
    TOKEN = 5  # token missing, PIN blocked, touch timeout, unsupported
    AGENT = 6  # agent not running / refused / protocol error
    LOCKED = 7  # the vault is locked in the agent
    DENIED = 8  # policy refused (peer rules, last slot, raw key not allowed)
    CANCELLED = 9  # the user cancelled (Ctrl-C, pinentry cancel, touch refused)
    TOKEN_ABSENT = 10  # the token needed is not plugged in (or left): plug it in and run again


class TokenAgentError(Exception):
    """Root of every error tokenagent raises on purpose."""

    code: str = "error"
    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


# --- usage / input -------------------------------------------------------------------


class UsageError(TokenAgentError):
    """The command or its input is not usable."""

    code = "usage"
    exit_code = ExitCode.USAGE


class Cancelled(TokenAgentError):
    """The operation was cancelled."""

    code = "cancelled"
    exit_code = ExitCode.CANCELLED


# --- vault file ----------------------------------------------------------------------


class VaultError(TokenAgentError):
    """A problem with a vault file."""

    code = "vault"
    exit_code = ExitCode.VAULT


class VaultNotFound(VaultError):
    """No such vault."""

    code = "vault-not-found"


def vault_not_found(name: str, known: Sequence[str]) -> VaultNotFound:
    """``VaultNotFound`` for ``name``, naming the vaults whose names are close to it (a typo)."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    if close:
        return VaultNotFound(f"no vault named {name!r}; did you mean {' or '.join(repr(c) for c in close)}?")
    return VaultNotFound(f"no vault named {name!r} (see: tokenagent list)")


class VaultExists(VaultError):
    """A vault of that name exists already."""

    code = "vault-exists"


class VaultFormatError(VaultError):
    """The vault file is damaged or not in a format this version understands."""

    code = "vault-format"


class VaultIntegrityError(VaultError):
    """The vault file fails its integrity check (header MAC): it was changed without the masterkey."""

    code = "vault-integrity"


class VaultBusy(VaultError):
    """Another process changed the vault at the same time."""

    code = "vault-busy"


class UnsafePath(VaultError):
    """A file or directory has unsafe ownership, mode, or is a symlink."""

    code = "unsafe-path"


class VaultFull(VaultError):
    """The vault is at a limit of its format (64 slots); nothing was changed."""

    code = "vault-full"


class StorageError(VaultError):
    """A file could not be written (disk full, read-only file system, permissions); nothing was changed."""

    code = "storage"

    _HINTS = {
        "ENOSPC": "the disk is full: free some space and run the command again",
        "EDQUOT": "your disk quota is used up: free some space and run the command again",
        "EROFS": "the file system is read-only: remount it read-write or use another TOKENAGENT_HOME",
        "EACCES": "permission denied: check the directory's owner and mode",
        "EPERM": "operation not permitted: check the directory's owner, mode and attributes",
        "EIO": "an I/O error: check the disk",
    }

    @classmethod
    def from_os(cls, err: OSError, doing: str) -> StorageError:
        import errno as _errno

        name = _errno.errorcode.get(err.errno or 0, "")
        hint = cls._HINTS.get(name, "check the disk and the directory, then run the command again")
        return cls(f"{doing}: {err.strerror or name or type(err).__name__}; {hint} (nothing was changed)")


class SlotNotFound(VaultError):
    """No such slot in this vault."""

    code = "slot-not-found"


class PolicyError(TokenAgentError):
    """The operation is refused by policy."""

    code = "denied"
    exit_code = ExitCode.DENIED


class LastSlot(PolicyError):
    """Refusing to remove the last slot (or the last token slot without confirmation)."""

    code = "last-slot"


class ForeignFormatError(TokenAgentError):
    """A file of another tool (Cryptomator, KeePass...) is damaged or not in a format tokenagent understands."""

    code = "foreign-format"
    exit_code = ExitCode.VAULT


# --- factors / authentication ---------------------------------------------------------


class AuthError(TokenAgentError):
    """Authentication failed."""

    code = "auth"
    exit_code = ExitCode.AUTH


class NotMine(AuthError):
    """This factor cannot open this slot (age: 'no identity matched'); try the next one.

    Raised by a key source when the secret it holds or the token present is not the
    one a slot was enrolled with, without spending a PIN try or a touch. It is not
    a failure by itself: the unlock loop moves on to the next slot.
    """

    code = "not-mine"


class TokenAbsent(NotMine):
    """The token this factor needs is not plugged in: not a failure of the slot, but the unlock
    says so (``TokenNotPresent``) when no slot opened and no secret given was wrong."""

    code = "token-absent"


class WrongSecret(AuthError):
    """A password, key file, or recovery key did not open the slot."""

    code = "wrong-secret"


class NoSlotMatched(AuthError):
    """No slot could be opened with the factors given. ``reasons`` says why, per slot."""

    code = "no-slot-matched"

    def __init__(self, message: str | None = None, reasons: Sequence[tuple[str, str]] = ()) -> None:
        self.reasons = list(reasons)
        if message is None:
            detail = "; ".join(f"slot {slot}: {why}" for slot, why in self.reasons)
            message = "no slot could be opened" + (f" ({detail})" if detail else "")
        super().__init__(message)


class TokenNotPresent(NoSlotMatched):
    """No slot opened because the tokens they need are not plugged in (no secret given was wrong).
    ``absent`` names the slots whose token was missing (the ones worth trying again)."""

    code = "token-not-present"
    exit_code = ExitCode.TOKEN_ABSENT

    def __init__(self, message: str | None = None, reasons: Sequence[tuple[str, str]] = (),
                 absent: Sequence[str] = ()) -> None:
        self.absent = list(absent)
        super().__init__(message, reasons)


# --- tokens --------------------------------------------------------------------------


class TokenError(TokenAgentError):
    """A problem with a hardware (or virtual) token."""

    code = "token"
    exit_code = ExitCode.TOKEN


class TokenNotFound(TokenError):
    """No token that can open this slot is present. Insert it and try again."""

    code = "token-not-found"
    exit_code = ExitCode.TOKEN_ABSENT


class TokenRemoved(TokenError):
    """The token was removed during the operation. Nothing was changed; insert it and try again."""

    code = "token-removed"
    exit_code = ExitCode.TOKEN_ABSENT


class PinInvalid(TokenError):
    """The PIN was wrong."""

    code = "pin-invalid"

    def __init__(self, message: str | None = None, retries: int | None = None) -> None:
        self.retries = retries
        if message is None:
            message = "wrong PIN"
            if retries is not None:
                message += f", {retries} attempt{'s' if retries != 1 else ''} left"
        super().__init__(message)


class PinRequired(TokenError):
    """This token needs a PIN; give it at the prompt or with --pin-file."""

    code = "pin-required"


class PinLastTry(TokenError):
    """Only one PIN attempt is left; refusing to spend it without --force."""

    code = "pin-last-try"


class PinBlocked(TokenError):
    """The PIN is blocked. tokenagent never unblocks or resets a token by itself."""

    code = "pin-blocked"


class PinAuthBlocked(TokenError):
    """Too many wrong PINs in a row: remove and re-insert the key, then try again."""

    code = "pin-auth-blocked"


class TouchTimeout(TokenError):
    """No touch within the time allowed. Touch the key when it blinks, and try again."""

    code = "touch-timeout"


class NotSupported(TokenError):
    """The token does not support what this slot needs."""

    code = "not-supported"


# --- agent ---------------------------------------------------------------------------


class AgentError(TokenAgentError):
    """A problem talking to the agent."""

    code = "agent"
    exit_code = ExitCode.AGENT


class AgentNotRunning(AgentError):
    """The agent is not running. Start it with 'tokenagent agent' or the systemd user unit."""

    code = "agent-not-running"


class AgentBusy(AgentError):
    """The agent is serving as many connections, waits or event streams as it takes; try again."""

    code = "busy"


class ProtocolError(AgentError):
    """The peer broke the wire protocol."""

    code = "protocol"


class Unsupported(AgentError):
    """The agent does not know this request."""

    code = "unsupported"


class FrameError(ProtocolError):
    """A frame that cannot be used. ``fatal``: the framing itself is lost, close the connection."""

    def __init__(self, message: str | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class FrameTooLarge(FrameError):
    """A frame over the protocol's size limit."""

    code = "too-large"


class VaultLocked(TokenAgentError):
    """The vault is locked in the agent. Unlock it with 'tokenagent unlock VAULT' or plug its token in."""

    code = "locked"
    exit_code = ExitCode.LOCKED


class AccessDenied(PolicyError):
    """The agent refused this client."""

    code = "access-denied"


def _all_subclasses(cls: type[TokenAgentError]) -> list[type[TokenAgentError]]:
    out: list[type[TokenAgentError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_for_code(code: str) -> type[TokenAgentError]:
    """The class for a wire code (used by clients to re-raise the agent's errors)."""
    classes: list[type[TokenAgentError]] = [TokenAgentError, *_all_subclasses(TokenAgentError)]
    for cls in classes:
        if cls.code == code:
            return cls
    return TokenAgentError
