"""Plug-in unlock: what the agent does with a token that has just arrived. The one home of its policy.

Theory of operation. The watchers (daemon/watch.py) report a token by its reader, or by "hid:"
and its hidraw path; the server hands each arrival to ``unlock_on_plug``, which walks the locked
vaults configured for it (``unlock_on_plug``) and asks ``open_with_token`` for each, in a worker
thread. That tries only the slots that open with the plugged token alone (``plug_slots``: every
factor says so itself, ``Factor.opens_unattended``): a touch at most, a PIN too when pinentry is
configured. The FIDO2 factor's pre-flight (no touch) finds whether this token holds the credential;
only then is the person asked to touch it (the ``touch`` callback shows the desktop notice, and a
"touch" event goes to the event streams). A key disk ("disk:UUID", daemon/watch.py's
``KeyDiskWatcher``) opens the slots made only of key files on that filesystem. The answer is a
``PlugResult``:

* ``Opened``: the slot, the key and the vault file as this unlock parsed and MAC-checked it (after
  a rolling OTP challenge was renewed, the renewed file), so the session is made from it without
  reading the file again;
* ``NOT_OPENED``: final. A PIN refused, a touch not given, a cancel, a damaged vault, no plug slot:
  a second try would ask a person again or override a no (``FINAL``);
* ``RETRY``: a token that has just arrived may not answer yet (pcscd resets cards it powers up; a
  loaded machine is slow): no slot matched, pulled out, a transport error. Such vaults get one more
  round ``PLUG_RETRY`` seconds later, while the token is still there.

The PINs typed during one plug event are kept (``PlugPins``) so that several vaults on the same card
ask once; a PIN the token refused is forgotten at once, so it is never sent again. The PIN dialog is
the pinentry program's (daemon/pinentry.py), and the factors' PIN rules apply (retries read first,
the last one kept; a PIV card holding another key is passed over before any PIN is asked).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..discovery import ReaderDevices
from ..errors import (
    Cancelled,
    NotMine,
    PinAuthBlocked,
    PinBlocked,
    PinInvalid,
    PinLastTry,
    PinRequired,
    TokenAgentError,
    TouchTimeout,
    VaultError,
)
from ..factors.base import Answers, FactorContext, Interaction, SecretRequest
from ..vault import Vault, VaultStore, unlock
from ..vault.format import Slot
from ..vault.operations import roll_forward_or_keep
from .pinentry import Pinentry
from .resources import load_token_stack
from .watch import DISK_PREFIX

log = logging.getLogger(__name__)
# A just-plugged token is tried at once; one that is not ready yet (pcscd may power-cycle a card
# just inserted) fails with a transport error, and such vaults get a second round this much later.
PLUG_RETRY = 1.0
# Failures a second try cannot undo: it would ask a person again (PIN, touch) or override a no.
FINAL = (PinInvalid, PinBlocked, PinLastTry, PinRequired, PinAuthBlocked, TouchTimeout, Cancelled, VaultError)
_REFUSED_PIN = (PinInvalid, PinBlocked, PinAuthBlocked, PinLastTry)


@dataclass(frozen=True)
class Opened:
    """The token opened the vault: ``key`` (the caller's to keep or wipe) from ``slot``; ``vault`` is
    the file as verified with that key."""

    slot: str
    key: bytearray
    vault: Vault


class NotOpened(enum.Enum):
    FINAL = "not-opened"  # nothing to try again
    RETRY = "retry"  # may open once the token has settled


NOT_OPENED = NotOpened.FINAL
RETRY = NotOpened.RETRY
PlugResult = Opened | NotOpened


class PlugPins(Answers):
    """The PINs typed during one plug event, so that several vaults on the same card ask once.

    Keyed by the prompt, which names the token and its application (a FIDO2 PIN is not a PIV
    PIN). Held only while the agent works through the vaults of that plug event, then wiped;
    a PIN the token refused is forgotten at once, so it is never sent again."""


class AgentInteraction(Interaction):
    """The agent has no terminal: PINs come from pinentry (if configured); notices become events,
    and a touch request also goes to ``touch`` (the desktop notice) directly."""

    def __init__(self, emit: Callable[..., None], vault: str, reader: str, pinentry: Pinentry | None = None,
                 pins: PlugPins | None = None, touch: Callable[[str, str], None] | None = None) -> None:
        self.emit, self.vault, self.reader, self.pinentry, self.pins = emit, vault, reader, pinentry, pins
        self.touch = touch
        self.asked: list[str] = []  # the prompts answered in this unlock (forgotten if a PIN is refused)

    def ask_secret(self, request: SecretRequest) -> bytearray:
        if request.kind != "pin" or self.pinentry is None:
            raise NotMine(f"a {request.kind} is needed: run 'tokenagent unlock {self.vault}'")
        self.asked.append(request.prompt)
        kept = self.pins.get(request.prompt) if self.pins is not None else None
        if kept is not None:
            return kept  # typed for another vault of this card in this plug event
        self.emit("pin", vault=self.vault, reader=self.reader)
        tries = f" ({request.retries} tries left)" if request.retries is not None else ""
        pin = self.pinentry.ask(f"tokenagent: unlock vault '{self.vault}'\n{request.prompt}{tries}")
        if self.pins is not None:
            self.pins.keep(request.prompt, pin)
        return pin

    def forget_refused(self) -> None:
        if self.pins is not None:
            for prompt in self.asked:
                self.pins.forget(prompt)

    def notify(self, event: str, message: str) -> None:
        if event == "touch":
            if self.touch is not None:
                self.touch(self.vault, message)
            self.emit("touch", vault=self.vault, reader=self.reader, message=message)


def in_loop(loop: asyncio.AbstractEventLoop, call: Callable[..., None]) -> Callable[..., None]:
    """``call`` for a worker thread (``open_with_token``'s ``emit`` and ``touch``): it runs in ``loop``'s thread."""
    def threaded(*args: Any, **kwargs: Any) -> None:
        loop.call_soon_threadsafe(lambda: call(*args, **kwargs))
    return threaded


def plug_slots(slots: tuple[Slot, ...], with_pin: bool = False, reader: str = "") -> list[str]:
    """Slots that open with the plugged token alone (a touch at most; a PIN too when pinentry can
    ask for it): each factor type says whether it can (``Factor.opens_unattended``). For a key
    disk ("disk:UUID"): the slots made only of key files on that filesystem (``disk_uuid``)."""
    if reader.startswith(DISK_PREFIX):
        uuid = reader[len(DISK_PREFIX):]
        return [slot.id for slot in slots if slot.factors and all(
            getattr(f, "disk_uuid", lambda: None)() == uuid for f in slot.factors)]
    return [slot.id for slot in slots if slot.factors and all(f.opens_unattended(with_pin) for f in slot.factors)]


def open_with_token(store: VaultStore, vault_name: str, reader: str, emit: Callable[..., None],
                    touch_timeout: float = 30.0, pinentry: Pinentry | None = None,
                    pins: PlugPins | None = None, touch: Callable[[str, str], None] | None = None) -> PlugResult:
    """Try VAULT's plug slots with the token in ``reader`` (runs in a worker thread). ``pins``: the
    PINs already typed in this plug event; ``touch(vault, message)``: called from this thread when
    the token waits for a touch."""
    load_token_stack()  # before the vault is parsed, so its token factors are known
    ui = AgentInteraction(emit, vault_name, reader, pinentry, pins, touch)
    try:
        return _open_once(store, vault_name, reader, ui, touch_timeout, pinentry)
    except FINAL as err:
        if isinstance(err, _REFUSED_PIN):
            ui.forget_refused()  # never sent again, to this vault or another
        log.info("vault %s not opened with the token in %s: %s", vault_name, reader, err.message)
        return NOT_OPENED
    except Exception as err:  # noqa: BLE001 - not answering yet, pulled out mid-way, a PC/SC failure
        why = err.message if isinstance(err, TokenAgentError) else type(err).__name__
        log.info("vault %s not opened with the token in %s: %s", vault_name, reader, why)
        return RETRY


def _open_once(store: VaultStore, vault_name: str, reader: str, ui: AgentInteraction, touch_timeout: float,
               pinentry: Pinentry | None) -> PlugResult:
    vault = store.load(vault_name)
    slot_ids = plug_slots(vault.slots, with_pin=pinentry is not None, reader=reader)
    if not slot_ids:
        return NOT_OPENED
    ctx = FactorContext(ui=ui, devices=ReaderDevices(reader), options={"touch_timeout": touch_timeout})
    result = unlock(vault, ctx, slot_ids)  # the whole file is MAC-checked with the key it gives
    vault = roll_forward_or_keep(store, vault_name, vault, result,
                                 lambda why: log.warning("vault %s: rolling challenge not renewed: %s",
                                                         vault_name, why))
    return Opened(result.slot_id, result.masterkey, vault)


async def unlock_on_plug(vaults: Iterable[str], try_vault: Callable[[str], Awaitable[PlugResult | None]],
                         still_there: Callable[[], bool]) -> None:
    """Walk ``vaults`` for one plug event: each is tried once, and those answered RETRY once more
    ``PLUG_RETRY`` seconds later while the token is ``still_there``. ``try_vault`` skips (None) a
    vault that needs nothing (unlocked meanwhile, not configured for plug-in unlock)."""
    pending = list(vaults)
    for round_ in (1, 2):  # the second round: vaults the token may open once it has settled
        pending = [vault for vault in pending if await try_vault(vault) is RETRY]
        if not pending or not still_there():
            return
        if round_ == 1:
            await asyncio.sleep(PLUG_RETRY)
