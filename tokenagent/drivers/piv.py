"""The PIV factor: a key on a PIV card (YubiKey PIV, other PIV cards) decrypts, the card never lets it go.

Theory of operation. Enrolment needs only the public half of the card's key, taken from one of:

* a key generated now in ``--piv-slot`` (9d by default, or a retired slot 82-95) with
  ``--piv-algorithm`` p256, p384 or rsa2048 and the given PIN and touch policies (this needs
  the card's management key: ``--piv-management-key-file``, else the one ykman stored on the
  card under the PIN (``ykman piv access change-management-key --protect``; read after the PIN,
  with the PIN rules below), else the default one; a slot that already holds a key is
  overwritten only after a confirmation or ``--force``);
* the key already in the slot (``--piv-existing``), read from the slot's metadata or its
  certificate;
* **offline**, a certificate or public-key file (``--piv-cert FILE``): the backup card need
  not be present, and ``--serial`` records which card it is.

For an EC key a fresh ephemeral key pair is made, Z = ECDH(ephemeral, card key) is computed in
software, the ephemeral private key is thrown away and its public point kept in the vault;
unlock asks the card for the same Z (yubikit ``calculate_secret``). For an RSA key 32 random
bytes are OAEP-encrypted (SHA-256) to the card key and the ciphertext kept; unlock asks the card
to decrypt it. The factor's secret is HKDF-SHA256 of Z (or of the 32 bytes), info
"tokenagent/v1/piv". The vault records the slot, the algorithm, the card's serial (when it has
one) and the SHA-256 of the public key, so before any PIN is asked the card and the key in its
slot are checked: a card holding another key is "not mine" and costs no PIN try.

PIN rules (DESIGN §3): the retry counter is read first (metadata, or an empty VERIFY: neither
spends a try); a blocked PIN is refused with the way out (the PUK, which tokenagent never uses
by itself); the last try is spent only with ``--force``; a wrong PIN is reported and not sent
again. Keys with PIN policy "never" are used without a PIN; keys with touch policy "always" or
"cached" show "Touch your key" first.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .._files import read_small_file
from ..errors import (
    Cancelled,
    NotSupported,
    PinBlocked,
    PinInvalid,
    TokenAbsent,
    TokenAgentError,
    TokenError,
    TokenNotFound,
    UsageError,
    VaultFormatError,
)
from ..factors.base import Factor, FactorContext, JSONValue, SecretRequest, register
from ..factors.params import expect_b64, expect_keys
from ..vault.crypto import hkdf
from .keys import load_public_key, spki_sha256
from .pinrules import check_retries
from .smartcard import SmartCardDevice, opened_cards, pulled_out, wrong_application

INFO = b"tokenagent/v1/piv"
RSA_SECRET_LEN = 32
ALGORITHMS = {"p256": "ECCP256", "p384": "ECCP384", "rsa2048": "RSA2048"}
CURVES: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}
SLOTS = frozenset(["9d", *(f"{n:02x}" for n in range(0x82, 0x96))])
PIN_POLICIES = ("default", "never", "once", "always")
TOUCH_POLICIES = ("default", "never", "always", "cached")
OAEP = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
log = logging.getLogger(__name__)


def _secret(material: bytes) -> bytearray:
    return hkdf(material, None, INFO, 32)


def _algorithm_of(public: Any, where: str) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey):
        for name, curve in CURVES.items():
            if public.curve.name == curve.name:
                return name
        raise NotSupported(f"{where}: curve {public.curve.name} is not supported (use P-256 or P-384)")
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size != 2048:
            raise NotSupported(f"{where}: RSA-{public.key_size} is not supported (use RSA-2048, P-256 or P-384)")
        return "rsa2048"
    raise NotSupported(f"{where}: only EC (P-256, P-384) and RSA-2048 keys can decrypt for tokenagent")


def _slot(name: str) -> Any:
    from yubikit.piv import SLOT

    name = name.lower().removeprefix("0x")
    if name not in SLOTS:
        raise UsageError(f"PIV slot {name!r} is not for decryption keys: use 9d (key management) or a retired"
                         " slot 82-95")
    return SLOT(int(name, 16))


def _session(device: SmartCardDevice) -> Any | None:
    """A PivSession on the card, or None when the card has no PIV application (or went away)."""
    from yubikit.piv import PivSession

    try:
        return PivSession(device.connection)
    except Exception as err:  # noqa: BLE001 - no PIV application, not a card, card pulled out
        log.debug("no PIV session on %s: %s", device.name, err)
        return None


def _slot_public_key(session: Any, slot: Any) -> Any | None:
    """The public key in a slot: from its metadata (YubiKey 5.3+) or its certificate; None when empty."""
    from yubikit.core import NotSupportedError
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import BadResponseError

    try:
        return session.get_slot_metadata(slot).public_key
    except NotSupportedError:
        pass
    except ApduError as err:
        if wrong_application(err.sw):
            raise  # not an empty slot: another application answered
        return None
    try:
        return session.get_certificate(slot).public_key()
    except ApduError as err:
        if wrong_application(err.sw):
            raise
        return None
    except BadResponseError:
        return None


def _session_and_key(device: SmartCardDevice, slot: Any) -> tuple[Any | None, Any | None]:
    """A PIV session and the public key in ``slot``, before any PIN: if another program selected
    another application on the shared card meanwhile, the PIV application is selected once more."""
    from yubikit.core.smartcard import ApduError

    for attempt in (1, 2):
        session = _session(device)
        if session is None:
            return None, None
        try:
            return session, _slot_public_key(session, slot)
        except ApduError as err:
            if attempt == 2 or not wrong_application(err.sw):
                raise
    return None, None


def _key_policies(session: Any, slot: Any) -> tuple[bool, bool]:
    """(needs the PIN, needs a touch) for the key in ``slot``; unknown metadata: PIN yes, touch maybe."""
    from yubikit.core import NotSupportedError
    from yubikit.piv import PIN_POLICY, TOUCH_POLICY

    try:
        metadata = session.get_slot_metadata(slot)
    except NotSupportedError:
        return True, False
    return (metadata.pin_policy != PIN_POLICY.NEVER,
            metadata.touch_policy in (TOUCH_POLICY.ALWAYS, TOUCH_POLICY.CACHED))


def verify_pin(session: Any, ctx: FactorContext, name: str) -> None:
    """The PIN rules: read the counter (spends nothing), refuse blocked / last try, never resend."""
    from yubikit.piv import InvalidPinError

    retries = session.get_pin_attempts()
    check_retries(retries, ctx, name, "PIV PIN", "unblock it with the PUK ('ykman piv access unblock-pin');"
                  " tokenagent never uses the PUK by itself. Or open the vault with another slot")
    pin = ctx.ui.ask_secret(SecretRequest("pin", f"PIV PIN for {name}", retries=retries))
    try:
        session.verify_pin(pin.decode("utf-8"))
    except InvalidPinError as err:
        if err.attempts_remaining == 0:
            raise PinBlocked(f"wrong PIV PIN for {name}: the PIN is now blocked (unblock it with the PUK)") from None
        raise PinInvalid(f"wrong PIV PIN for {name} ({err.attempts_remaining} tries left); not retried",
                         retries=err.attempts_remaining) from None
    except (UnicodeDecodeError, ValueError):
        raise PinInvalid(f"that is not a valid PIV PIN for {name} (up to 8 characters); nothing was sent") from None
    finally:
        pin[:] = bytes(len(pin))


def _protected_management_key(session: Any, ctx: FactorContext, name: str) -> bytes | None:
    """The management key ykman keeps on the card under the PIN (``--protect``), read after the
    PIN (with its rules); None when the card has none."""
    from ykman.piv import get_pivman_data, get_pivman_protected_data

    pivman = get_pivman_data(session)  # no PIN needed to read the flags
    if pivman.has_derived_key:
        raise UsageError(f"{name} has a PIN-derived management key (an old ykman setting) that tokenagent does not"
                         " use: give the key with --piv-management-key-file FILE (hex), or run 'ykman piv access"
                         " change-management-key --protect' to store it on the card instead")
    if not pivman.has_stored_key:
        return None
    ctx.ui.notify("info", f"{name} keeps its management key under the PIV PIN")
    verify_pin(session, ctx, name)
    key = get_pivman_protected_data(session).key
    if key is None:
        raise UsageError(f"{name} says its management key is stored under the PIN, but it is not there: give it"
                         " with --piv-management-key-file FILE (hex)")
    return bytes(key)


def _removed_or_refused(device: SmartCardDevice, name: str, err: Exception) -> TokenError:
    from yubikit.core.smartcard import SW

    removed = pulled_out(device, name, err)
    if removed is not None:
        return removed
    kind = type(err).__name__
    sw = getattr(err, "sw", None)
    if wrong_application(sw):
        return TokenError(f"another program used {name} at the same moment (its PIV application was deselected);"
                          " nothing was changed: run the command again")
    if sw == SW.SECURITY_CONDITION_NOT_SATISFIED:  # no touch, or no PIN
        return TokenError(f"{name} refused to use the key (security status not satisfied): no touch within 15 s,"
                          " or the key needs its PIN")
    return TokenError(f"{name} refused the operation ({kind}{f', SW {sw:04X}' if sw else ''})")


@register
class PivFactor(Factor):
    type = "piv"
    is_token = True
    opens_on_plug = True

    def __init__(self, slot: str, algorithm: str, serial: int | None, key_hash: str, challenge: bytes) -> None:
        self.slot, self.algorithm, self.serial, self.key_hash, self.challenge = (
            slot, algorithm, serial, key_hash, challenge)

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"slot", "algorithm", "serial", "key", "challenge"}, "piv")
        slot, algorithm, serial, key_hash = params["slot"], params["algorithm"], params["serial"], params["key"]
        if slot not in SLOTS or algorithm not in ALGORITHMS:
            raise VaultFormatError("piv: slot must be 9d or 82-95 and algorithm p256, p384 or rsa2048")
        if serial is not None and (not isinstance(serial, int) or isinstance(serial, bool) or serial < 0):
            raise VaultFormatError("piv: serial must be a non-negative integer or null")
        if not isinstance(key_hash, str) or len(key_hash) != 64 or key_hash.strip("0123456789abcdef"):
            raise VaultFormatError("piv: key must be the SHA-256 (hex) of the card's public key")
        size = {"p256": 65, "p384": 97, "rsa2048": 256}[str(algorithm)]
        challenge = expect_b64(params, "challenge", size, "piv")
        if algorithm in CURVES:
            try:
                ec.EllipticCurvePublicKey.from_encoded_point(CURVES[str(algorithm)], challenge)
            except ValueError:
                raise VaultFormatError("piv: the ephemeral key is not a point on the curve") from None
        return cls(str(slot), str(algorithm), serial, key_hash, challenge)  # type: ignore[arg-type]

    def params(self) -> dict[str, JSONValue]:
        return {"slot": self.slot, "algorithm": self.algorithm, "serial": self.serial, "key": self.key_hash,
                "challenge": base64.b64encode(self.challenge).decode()}

    def needs_pin(self) -> bool:
        return True  # the card's PIN is verified before every use by tokenagent

    def describe(self) -> str:
        who = f"card {self.serial}" if self.serial else "a PIV card"
        return f"PIV key ({who}, slot {self.slot}, {self.algorithm})"

    # --- enrolment -----------------------------------------------------------------------

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        slot_name = str(options.get("piv_slot") or "9d").lower().removeprefix("0x")
        _slot(slot_name)
        serial = options.get("serial")
        if options.get("cert"):  # offline: the card need not be here
            public = load_public_key(str(options["cert"]))
            return cls._wrap(public, slot_name, serial, str(options["cert"]))
        with opened_cards(ctx, "piv", serial) as devices:
            sessions = [(d, s) for d in devices if (s := _session(d)) is not None]
            if not sessions:
                raise TokenNotFound("no PIV card found" + (f" with serial {serial}" if serial else "")
                                    + ": plug one in, or enrol offline from its certificate with --piv-cert FILE")
            if len(sessions) > 1:
                raise UsageError(f"{len(sessions)} PIV cards are present: name one with --serial")
            device, session = sessions[0]
            name = device.label()
            try:
                if options.get("piv_existing"):
                    public = _slot_public_key(session, _slot(slot_name))
                    if public is None:
                        raise UsageError(f"slot {slot_name} of {name} holds no key (or no certificate for it):"
                                         " generate one (drop --piv-existing) or choose another --piv-slot")
                else:
                    public = cls._generate(session, ctx, options, slot_name, name)
                return cls._wrap(public, slot_name, device.serial, name)
            except TokenAgentError:
                raise
            except Exception as err:  # noqa: BLE001 - transport failures, the card refusing
                raise _removed_or_refused(device, name, err) from None

    @classmethod
    def _wrap(cls, public: Any, slot: str, serial: int | None, where: str) -> tuple[Factor, bytearray]:
        algorithm = _algorithm_of(public, where)
        key_hash = spki_sha256(public)
        if algorithm in CURVES:
            ephemeral = ec.generate_private_key(CURVES[algorithm])
            material = ephemeral.exchange(ec.ECDH(), public)
            challenge = ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                            serialization.PublicFormat.UncompressedPoint)
        else:
            import secrets

            material = secrets.token_bytes(RSA_SECRET_LEN)
            challenge = public.encrypt(material, OAEP)
        return cls(slot, algorithm, serial, key_hash, challenge), _secret(material)

    @staticmethod
    def _generate(session: Any, ctx: FactorContext, options: Mapping[str, Any], slot_name: str, name: str) -> Any:
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, PIN_POLICY, TOUCH_POLICY, BadResponseError

        algorithm = str(options.get("piv_algorithm") or "p256").lower()
        pin_policy = str(options.get("pin_policy") or "default").lower()
        touch_policy = str(options.get("touch_policy") or "default").lower()
        if algorithm not in ALGORITHMS:
            raise UsageError(f"--piv-algorithm {algorithm!r}: use p256, p384 or rsa2048")
        if pin_policy not in PIN_POLICIES or touch_policy not in TOUCH_POLICIES:
            raise UsageError(f"--pin-policy is one of {', '.join(PIN_POLICIES)}; --touch-policy one of"
                             f" {', '.join(TOUCH_POLICIES)}")
        slot = _slot(slot_name)
        if _slot_public_key(session, slot) is not None:
            question = (f"Slot {slot_name} of {name} already holds a key. Replace it with a new one? Whatever"
                        " that key protects (certificates, other vaults) is lost for good.")
            if not (ctx.force or ctx.ui.confirm(question)):
                raise Cancelled(f"slot {slot_name} of {name} was not changed (use --piv-existing to enrol the key"
                                " that is there, or confirm / --force to replace it)")
        key_file = options.get("piv_management_key_file")
        if key_file:
            try:
                text = read_small_file(str(key_file), 4096, "the management key file").decode()
                management_key, which = bytes.fromhex(text.strip()), "given"
            except (UnicodeDecodeError, ValueError):
                raise UsageError(f"{key_file}: expected the management key in hex") from None
        else:
            stored = _protected_management_key(session, ctx, name)
            management_key, which = (stored, "PIN-protected") if stored is not None else (DEFAULT_MANAGEMENT_KEY,
                                                                                          "default")
        try:
            session.authenticate(management_key)
        except (ApduError, BadResponseError, ValueError):
            raise UsageError(f"{name} did not accept the {which} management key:"
                             " give the card's key with --piv-management-key-file FILE (hex), or make the key with"
                             " 'ykman piv keys generate' and enrol it with --piv-existing") from None
        ctx.ui.notify("info", f"generating a {algorithm} key in slot {slot_name} of {name}")
        if touch_policy in ("always", "cached"):
            ctx.ui.notify("touch", f"Touch {name} if it blinks")
        return session.generate_key(slot, KEY_TYPE[ALGORITHMS[algorithm]], PIN_POLICY[pin_policy.upper()],
                                    TOUCH_POLICY[touch_policy.upper()])

    # --- unlock --------------------------------------------------------------------------

    def unlock(self, ctx: FactorContext) -> bytearray:
        with opened_cards(ctx, "piv", self.serial) as devices:
            for device in devices:
                name = device.label()
                try:
                    session, public = _session_and_key(device, _slot(self.slot))
                    if session is None:
                        continue
                    if public is None or spki_sha256(public) != self.key_hash:
                        continue  # another card, or the key was replaced: no PIN is asked
                    return self._decrypt(session, ctx, name)
                except TokenAgentError:
                    raise
                except Exception as err:  # noqa: BLE001 - transport failures, the card refusing
                    raise _removed_or_refused(device, name, err) from None
            who = f"PIV card {self.serial}" if self.serial else "the PIV card of this slot"
            raise TokenAbsent(f"{who} is not plugged in (or its slot {self.slot} holds another key)")

    def _decrypt(self, session: Any, ctx: FactorContext, name: str) -> bytearray:
        slot = _slot(self.slot)
        needs_pin, needs_touch = _key_policies(session, slot)
        if needs_pin:
            verify_pin(session, ctx, name)
        if needs_touch:
            ctx.ui.notify("touch", f"Touch {name} (PIV slot {self.slot})")
        if self.algorithm in CURVES:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(CURVES[self.algorithm], self.challenge)
            material = session.calculate_secret(slot, peer)
        else:
            material = session.decrypt(slot, self.challenge, OAEP)
        return _secret(material)
