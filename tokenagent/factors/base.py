"""Key sources: the interface every factor type implements.

Theory of operation (modelled on age's identities and stanzas). A slot stores, for
each of its factors, a *descriptor*: the factor type and its public parameters
(Argon2id costs, a FIDO2 credential id and salt, a PIV slot and ephemeral public
key...). Enrolment produces a descriptor and a secret; unlocking turns a descriptor
back into the same secret, or raises ``NotMine`` when the secret source at hand
(the token plugged in, the key file given) is not the one the slot was made with,
so the unlock loop can move on to the next slot without spending anything. Any
other error is a real failure and is reported.

The vault core never sees how a secret is obtained: it derives key-encryption keys
from the secrets and binds the canonical encoding of all descriptors into the AEAD
associated data, so a descriptor edited on disk (lower KDF costs, a flipped
``uv`` flag) makes the unwrap fail.

Factor types register themselves in ``REGISTRY``. Software factors live in
``tokenagent.factors``; token factors live in ``tokenagent.drivers`` and reach
devices only through the ``DeviceProvider`` passed in the context, never by
discovering them on their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..errors import NotMine, UsageError, VaultFormatError

JSONValue = Any  # str | int | bool | None | list | dict, as json.loads gives them


@dataclass(frozen=True)
class SecretRequest:
    """What a factor asks the user for."""

    kind: str  # "password", "pin", "recovery", "puk"...
    prompt: str  # one line, shown as is ("PIN for YubiKey 5 NFC (serial 1234)")
    confirm: bool = False  # ask twice (new passwords)
    retries: int | None = None  # attempts left, when known, shown to the user


class Interaction(ABC):
    """How factors talk to the person at the keyboard (terminal, pinentry, agent client)."""

    @abstractmethod
    def ask_secret(self, request: SecretRequest) -> bytearray:
        """Return the secret the user typed, as UTF-8 bytes; raise ``Cancelled`` if they gave up."""

    @abstractmethod
    def notify(self, event: str, message: str) -> None:
        """Show a notice: ``event`` is "touch", "info" or "warning"; message is one line, no secrets."""

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question; non-interactive implementations answer no."""
        return False

    def show_secret_once(self, title: str, text: str) -> None:
        """Display a freshly generated secret (a recovery key) exactly once."""
        self.notify("info", title)

    def working(self, what: str) -> AbstractContextManager[None]:
        """Around long work (a KDF calibration, a scrypt): a terminal shows that it goes on."""
        return nullcontext()


class Answers:
    """Secrets a person gave (PINs, passwords, recovery keys), kept so that one answer serves every
    slot or vault tried in one command or plug event. Held in bytearrays and handed out as copies
    (the factor wipes its own); ``forget`` drops a refused one at once, ``wipe`` clears them all
    when the command or plug event is over."""

    def __init__(self) -> None:
        self._kept: dict[Hashable, bytearray] = {}

    def get(self, key: Hashable) -> bytearray | None:
        kept = self._kept.get(key)
        return bytearray(kept) if kept is not None else None

    def keep(self, key: Hashable, secret: bytes | bytearray) -> None:
        self.forget(key)
        self._kept[key] = bytearray(secret)

    def forget(self, key: Hashable) -> None:
        old = self._kept.pop(key, None)
        if old is not None:
            old[:] = bytes(len(old))

    def wipe(self) -> None:
        for key in list(self._kept):
            self.forget(key)


class DeviceProvider(Protocol):
    """Hands token drivers open connections to the devices present (implemented by discovery)."""

    def connections(self, kind: str, serial: int | None = None) -> Iterator[Any]:
        """Yield open connections of ``kind`` ("fido2", "smartcard", "otp", "pkcs11")."""
        ...


@dataclass
class FactorContext:
    """Everything a factor needs besides its own descriptor, for enrolment and unlock."""

    ui: Interaction
    devices: DeviceProvider | None = None
    force: bool = False  # allow spending the last PIN try
    test_costs: bool = False  # use the minimum KDF costs (tests only; see docs/spec/vault.md)
    options: dict[str, Any] = field(default_factory=dict)  # per-invocation options (paths, serials, timeouts)


class Factor(ABC):
    """One factor of a slot: a type name plus public parameters.

    What the rest of tokenagent needs to know about a factor type is said here, by the type
    itself, so adding a type touches its own module and the registry only:
    ``is_token`` (opening it needs a device the user plugs in), ``opens_on_plug`` (the agent
    may open it when that device appears, with a touch at most, or a PIN where ``needs_pin``
    says so and pinentry can ask) and ``needs_pin()``.
    """

    type: ClassVar[str]
    is_token: ClassVar[bool] = False
    opens_on_plug: ClassVar[bool] = False

    def needs_pin(self) -> bool:
        """Does opening this factor ask for a PIN (of the token), as stored in its parameters?"""
        return False

    def opens_unattended(self, pin_can_be_asked: bool) -> bool:
        """Can the agent open this factor when its token is plugged in, with nobody at a terminal?"""
        return self.opens_on_plug and (pin_can_be_asked or not self.needs_pin())

    @classmethod
    @abstractmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        """Build from stored public parameters; raise ``VaultFormatError`` for bad or too-weak ones."""

    @abstractmethod
    def params(self) -> dict[str, JSONValue]:
        """The public parameters to store (JSON values only; no secrets)."""

    @classmethod
    @abstractmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        """Create a new factor; return it with its secret."""

    @abstractmethod
    def unlock(self, ctx: FactorContext) -> bytearray:
        """Return this factor's secret, raise ``NotMine`` when the source at hand is not this factor's."""

    def describe(self) -> str:
        """A one-line description for ``tokenagent slots`` (no secrets)."""
        return self.type

    def kdf_work(self) -> int:
        """The memory-hard work (KiB x passes) unlocking this factor costs here; bounded per file
        by ``factors.limits`` before anything is computed."""
        return 0

    def rotate(self, ctx: FactorContext) -> tuple[Factor, bytearray, bytearray]:
        """Optional: a renewed factor with (old secret, new secret), from one use of the source.

        Factors that cannot renew their secret raise ``NotSupported`` (``tokenagent rotate``).
        """
        from ..errors import NotSupported

        raise NotSupported(f"{self.describe()} cannot be rotated")

    def renewal(self) -> tuple[Factor, bytearray] | None:
        """Optional: a renewed factor and its secret, prepared during the last ``unlock``.

        Factors with a rolling secret (OTP with ``--otp-rolling``) answer a fresh challenge
        in the same use of the token; the caller re-wraps the slot with it
        (``vault.operations.roll_forward``). Taking the renewal clears it.
        """
        return None

    def descriptor(self) -> dict[str, JSONValue]:
        return {"type": self.type, "params": self.params()}


class UnknownFactor(Factor):
    """A factor of a type this installation does not know: kept as is so the vault still loads."""

    type = "unknown"
    is_token = True  # it may need a device; nothing is promised about it

    def __init__(self, type_name: str, params: Mapping[str, JSONValue]) -> None:
        self.type_name = type_name
        self._params = dict(params)

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:  # pragma: no cover - not registered
        raise VaultFormatError("unknown factor type")

    def params(self) -> dict[str, JSONValue]:
        return dict(self._params)

    def descriptor(self) -> dict[str, JSONValue]:
        return {"type": self.type_name, "params": self.params()}

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        raise UsageError("cannot enrol a factor of an unknown type")

    def unlock(self, ctx: FactorContext) -> bytearray:
        # NotMine, not a hard failure: the vault's other slots may still open it here.
        raise NotMine(f"factor type {self.type_name!r} is not supported by this tokenagent (upgrade it)")

    def describe(self) -> str:
        return f"{self.type_name} (not supported here)"


REGISTRY: dict[str, type[Factor]] = {}


def register(cls: type[Factor]) -> type[Factor]:
    """Class decorator: make a factor type known by its ``type`` name."""
    if cls.type in REGISTRY and REGISTRY[cls.type] is not cls:
        raise RuntimeError(f"factor type {cls.type!r} registered twice")
    REGISTRY[cls.type] = cls
    return cls


def factor_from_descriptor(descriptor: Mapping[str, JSONValue]) -> Factor:
    """Parse one stored descriptor; unknown types load as ``UnknownFactor``."""
    if set(descriptor) != {"type", "params"}:
        unknown = sorted(set(descriptor) - {"type", "params"})
        raise VaultFormatError(f"a factor descriptor has exactly 'type' and 'params' (unknown: {unknown})")
    type_name = descriptor.get("type")
    params = descriptor.get("params")
    if not isinstance(type_name, str) or not isinstance(params, dict):
        raise VaultFormatError("a factor descriptor needs a string 'type' and an object 'params'")
    cls = REGISTRY.get(type_name)
    if cls is None:
        from ..plugins import load_factor_types  # the token drivers, imported when a vault first names one

        cls = load_factor_types().get(type_name)
    if cls is None:
        return UnknownFactor(type_name, params)
    return cls.from_params(params)
