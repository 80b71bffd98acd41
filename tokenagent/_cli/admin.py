"""Admin commands: init, enroll, slots, info, list, remove-slot, rotate, drill, open, keyfile generate.

Factor flags (``--password``, ``--keyfile PATH``, ``--recovery``, ``--fido2``, ``--piv``, ``--otp``,
``--pkcs11 URI``) may be repeated; all the factors of one command form one slot that needs
all of them, or any K with ``--threshold K``. Token options that pick a device or a setting
(``--serial``, ``--piv-cert``...) apply to the token factors in the order given.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._files import open_secret_stream
from ..errors import LastSlot, TokenNotPresent, UsageError, VaultExists, VaultFormatError
from ..factors.base import REGISTRY, Factor, FactorContext
from ..plugins import load_factor_types
from ..vault import VaultStore, check_name, new_vault, operations, unlock, verify, wipe
from ..vault.format import Vault, check_label
from ..vault.slots import open_slot
from .interaction import TerminalInteraction, make_context
from .util import SECONDS, emit, json_option, printable, refuse_terminal, wait_seconds

TOKEN_WAIT = 60.0  # seconds a person at a terminal has to plug in a token that is not there


def secret_file_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--password-file", metavar="FILE", help="Read passwords from FILE, one per line ('-' = stdin)."),
        click.option("--pin-file", metavar="FILE", help="Read token PINs from FILE, one per line ('-' = stdin)."),
        click.option("--recovery-file", metavar="FILE", help="Read recovery keys/shares from FILE ('-' = stdin)."),
        click.option("--force", is_flag=True, help="Allow spending a token's last PIN try."),
        click.option("--serial", "serials", multiple=True, type=int, help="Use the token with this serial."),
        click.option("--touch-timeout", type=SECONDS, default=30.0, show_default=True, help="Seconds to wait for touch."),
        click.option("--token-wait", type=wait_seconds, metavar="SECONDS",
                     help="If the vault's token is not plugged in, wait this long for it"
                          f" (default: {TOKEN_WAIT:.0f} s on a terminal, none without one)."),
        click.option("--no-wait", is_flag=True, help="Fail at once if the vault's token is not plugged in."),
        json_option,
    ]):
        f = decorator(f)
    return f


def factor_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--password", "n_password", count=True, help="A password factor."),
        click.option("--keyfile", "keyfiles", multiple=True, metavar="PATH", help="A key file factor (KeePass rules)."),
        click.option("--recovery", "n_recovery", count=True, help="A recovery key, shown once."),
        click.option("--recovery-shares", metavar="K/N", help="Print the recovery key as K-of-N SLIP-39 shares."),
        click.option("--fido2", "n_fido2", count=True, help="A FIDO2 key (hmac-secret)."),
        click.option("--piv", "n_piv", count=True, help="A PIV card key (on-card ECDH / RSA)."),
        click.option("--otp", "n_otp", count=True, help="A YubiKey OTP HMAC-SHA1 slot."),
        click.option("--pkcs11", "pkcs11_uris", multiple=True, metavar="URI", help="A PKCS#11 key (RFC 7512 URI)."),
        click.option("--threshold", type=int, metavar="K", help="Any K of the factors open the slot."),
        click.option("--label", default="", help="A note shown by 'tokenagent slots'."),
        click.option("--kdf-time", type=SECONDS, default=1.0, show_default=True, help="Password KDF target seconds."),
        click.option("--fido2-uv", is_flag=True, help="FIDO2: require the key's PIN (user verification)."),
        click.option("--fido2-rp", default="tokenagent", show_default=True, help="FIDO2: relying-party id."),
        click.option("--fido2-prf", is_flag=True,
                     help="FIDO2: map the salt as WebAuthn's prf extension does (the same secret for a web page)."),
        click.option("--piv-slot", default="9d", show_default=True, help="PIV: key slot (9d or 82-95)."),
        click.option("--piv-algorithm", default="p256", show_default=True, help="PIV: p256, p384 or rsa2048."),
        click.option("--piv-cert", "piv_certs", multiple=True, metavar="FILE",
                     help="PIV/PKCS#11: enrol offline from this certificate or public key."),
        click.option("--piv-existing", is_flag=True, help="PIV: use the key already in the slot."),
        click.option("--piv-management-key-file", metavar="FILE",
                     help="PIV: the card's management key (hex) for generating a key; default: the factory key."),
        click.option("--pin-policy", default="default", show_default=True,
                     help="PIV: PIN policy of a generated key (never, once, always)."),
        click.option("--touch-policy", default="default", show_default=True,
                     help="PIV: touch policy of a generated key (never, always, cached)."),
        click.option("--otp-slot", type=click.IntRange(1, 2), default=2, show_default=True, help="OTP: slot 1 or 2."),
        click.option("--otp-program", is_flag=True, help="OTP: program a fresh secret into the slot (asks first)."),
        click.option("--otp-secret-file", metavar="FILE",
                     help="OTP, with --otp-program: write this secret (40 hex digits, as ykman takes it; '-' = stdin)"
                          " instead of a random one, e.g. the one of the key this one backs up."),
        click.option("--otp-show-secret", is_flag=True,
                     help="OTP, with --otp-program: show the secret written, once, to program a backup key with it."),
        click.option("--otp-touch", is_flag=True, help="OTP, with --otp-program: the slot answers only when touched."),
        click.option("--otp-any-key", is_flag=True,
                     help="OTP: the slot's secret is on several keys (backups): any of them opens, not only this"
                          " serial. Implied by --otp-show-secret and --otp-secret-file."),
        click.option("--otp-rolling", is_flag=True, help="OTP: a new challenge after every unlock (a slot of its own)."),
    ]):
        f = decorator(f)
    return f


def _planned_factors(kw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The factors a command asks for, in a fixed order, each with its own options."""
    plan: list[tuple[str, dict[str, Any]]] = []
    if kw["n_password"]:
        from ..daemon.config import load_config

        policy = load_config().password_policy
        plan += [("password", {"kdf_time": kw["kdf_time"], "policy": policy}) for _ in range(kw["n_password"])]
    plan += [("keyfile", {"path": p}) for p in kw["keyfiles"]]
    plan += [("recovery", {"shares": kw["recovery_shares"]})] * kw["n_recovery"]
    if kw["recovery_shares"] and not kw["n_recovery"]:
        raise UsageError("--recovery-shares goes with --recovery")
    token_common = {k: kw[k] for k in ("fido2_uv", "fido2_rp", "fido2_prf", "piv_slot", "piv_algorithm",
                                       "piv_existing", "piv_management_key_file", "pin_policy", "touch_policy",
                                       "otp_slot", "otp_program", "otp_rolling", "touch_timeout",
                                       "otp_show_secret", "otp_touch", "otp_any_key")}
    token_common["otp_secret_given"] = bool(kw.get("otp_secret_file"))
    if not kw["otp_program"] and (kw.get("otp_secret_file") or kw["otp_show_secret"] or kw["otp_touch"]):
        raise UsageError("--otp-secret-file, --otp-show-secret and --otp-touch go with --otp-program")
    plan += [("fido2", dict(token_common)) for _ in range(kw["n_fido2"])]
    certs = list(kw["piv_certs"])
    for _ in range(kw["n_piv"]):
        plan.append(("piv", {**token_common, "cert": certs.pop(0) if certs else None}))
    plan += [("otp", dict(token_common)) for _ in range(kw["n_otp"])]
    for uri in kw["pkcs11_uris"]:
        plan.append(("pkcs11", {**token_common, "uri": uri, "cert": certs.pop(0) if certs else None}))
    serials = list(kw["serials"])
    for type_name, options in plan:
        if getattr(REGISTRY.get(type_name), "is_token", False):
            options["serial"] = serials.pop(0) if serials else None
    if not plan:
        raise UsageError("name at least one factor: --password, --keyfile PATH, --recovery, --fido2, --piv, --otp"
                         " or --pkcs11 URI")
    if kw["otp_rolling"] and [t for t, _ in plan] != ["otp"]:
        raise UsageError("--otp-rolling needs a slot of its own: enrol it with --otp alone (the slot is re-wrapped"
                         " after each unlock, which needs every factor's new secret)")
    return plan


def _enroll_all(ctx: FactorContext, plan: list[tuple[str, dict[str, Any]]]) -> list[tuple[Factor, bytearray]]:
    registry = load_factor_types()
    missing = sorted({t for t, _ in plan if t not in registry})
    if missing:
        raise UsageError(f"factor type {missing[0]!r} is not available in this installation")
    enrolled: list[tuple[Factor, bytearray]] = []
    try:
        for type_name, options in plan:
            enrolled.append(registry[type_name].enroll(ctx, options))
    except BaseException:
        for _, secret in enrolled:
            wipe(secret)
        raise
    return enrolled


def factor_context(kw: dict[str, Any], unlock_keyfiles: tuple[str, ...] = ()) -> tuple[FactorContext, TerminalInteraction]:
    load_factor_types()
    return make_context(
        password_file=kw.get("password_file"),
        pin_file=kw.get("pin_file"),
        recovery_file=kw.get("recovery_file"),
        otp_secret_file=kw.get("otp_secret_file"),
        force=kw.get("force", False),
        quiet=kw.get("as_json", False),
        options={"keyfiles": list(unlock_keyfiles), "serials": list(kw.get("serials", ())),
                 "touch_timeout": kw.get("touch_timeout"), "token_wait": _token_wait(kw)},
    )


def _token_wait(kw: dict[str, Any]) -> float:
    """Seconds an unlock waits for a token that is not plugged in: --token-wait, else a minute
    for a person at a terminal and none for a script (which gets exit 10 at once)."""
    if kw.get("no_wait"):
        return 0.0
    if kw.get("token_wait") is not None:
        return float(kw["token_wait"])
    return TOKEN_WAIT if sys.stdin.isatty() and sys.stderr.isatty() else 0.0


def unlock_waiting(vault: Vault, ctx: FactorContext, ui: TerminalInteraction,
                   slot_ids: list[str] | None = None) -> Any:
    """``unlock``; when no slot opened only because its token is absent, say "plug in your key"
    and try those slots again every second until the token comes or the wait is over."""
    try:
        return unlock(vault, ctx, slot_ids)
    except TokenNotPresent as err:
        wait = float(ctx.options.get("token_wait") or 0)
        if wait <= 0 or not err.absent:
            raise
        absent = err.absent
    needs = "; ".join(f"slot {s}: {vault.slot(s).describe()}" for s in absent)
    ui.notify("plug", f"plug in your key to open vault {vault.name!r} ({needs}); waiting up to {wait:.0f} s"
                      " (Ctrl-C to stop)")
    deadline = time.monotonic() + wait
    while True:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        try:
            return unlock(vault, ctx, absent)
        except TokenNotPresent as again:
            if time.monotonic() >= deadline:
                raise TokenNotPresent(f"the token of vault {vault.name!r} was not plugged in within {wait:.0f} s"
                                      f" ({needs})", again.reasons, again.absent) from None


def refuse_damaged(vault: Vault) -> None:
    """Before a change is prepared (a token touched, a password typed): a vault read from its backup is not changed."""
    if vault.from_backup:
        raise VaultFormatError(
            f"vault {vault.name!r}: the main file is damaged ({vault.damage}); nothing was changed."
            f" Run 'tokenagent repair {vault.name}' to restore the backup copy (the damaged file is kept aside)"
        )


def _slot_rows(vault: Vault) -> list[dict[str, Any]]:
    return [
        {"id": s.id, "factors": [f.descriptor()["type"] for f in s.factors], "describe": s.describe(),
         "policy": s.policy.to_json(), "label": s.label, "created": s.created, "last_drill": s.last_drill}
        for s in vault.slots
    ]


def open_vault(store: VaultStore, name: str, ctx: FactorContext, ui: TerminalInteraction, slot_ids: list[str] | None = None):
    vault = store.load(name)
    result = unlock_waiting(vault, ctx, ui, slot_ids)
    vault = operations.roll_forward_or_keep(store, name, vault, result, lambda why: ui.notify(
        "warning", f"slot {result.slot_id} was opened but its rolling challenge was not renewed: {why}"))
    return vault, result


@click.command()
@click.argument("vault")
@factor_options
@secret_file_options
@click.option("--import-secret", metavar="FILE", help="Keep this existing secret (1-4096 bytes; '-' = stdin).")
@click.option("--allow-raw/--no-allow-raw", default=None,
              help="May the agent hand out the secret itself (default: only for imported secrets)?")
def init(vault: str, import_secret: str | None, allow_raw: bool | None, **kw: Any) -> None:
    """Create VAULT with one slot made of the FACTORS given."""
    secret = _read_import(import_secret) if import_secret else None
    try:
        new, ui = create_vault(vault, kw, secret, allow_raw)
    finally:
        if secret is not None:
            wipe(secret)
    emit(kw["as_json"], {"vault": vault, "fingerprint": new.fingerprint, "slot": "1", "shown": ui.shown,
                         "path": str(VaultStore().path(vault))},
         f"vault {vault!r} created; fingerprint {new.fingerprint}; slot 1: {new.slots[0].describe()}")


def create_vault(vault: str, kw: dict[str, Any], secret: bytes | bytearray | None,
                 allow_raw: bool | None) -> tuple[Vault, TerminalInteraction]:
    """Create VAULT from the factor flags in ``kw`` (the options of ``init``); the caller wipes ``secret``."""
    check_name(vault)
    check_label(kw["label"])
    store = VaultStore()
    if store.exists(vault):
        raise VaultExists(f"a vault named {vault!r} exists already; use 'tokenagent enroll {vault}' to add a slot")
    plan = _planned_factors(kw)
    operations.check_slot_shape(len(plan), kw["threshold"])
    ctx, ui = factor_context(kw)
    ui.defer_secrets = True  # a recovery key is shown once the vault holding it is written
    enrolled = _enroll_all(ctx, plan)
    try:
        new, masterkey = new_vault(vault, enrolled, kw["threshold"], secret, allow_raw, kw["label"])
        try:
            store.create(new, check=lambda written: verify(written, masterkey))
        finally:
            wipe(masterkey)
    finally:
        for _, s in enrolled:
            wipe(s)
    ui.reveal_deferred()
    return new, ui


def _read_import(path: str) -> bytearray:
    try:  # at most one byte more than a secret can be: /dev/zero or a huge file is refused, not read for ever
        if path == "-":
            data = bytearray(sys.stdin.buffer.read(4098))
        else:  # a FIFO with no writer is not waited on: it reads as empty
            with open_secret_stream(path) as f:
                data = bytearray(f.read(4098))
    except OSError as err:
        raise UsageError(f"--import-secret {path}: {err.strerror}") from None
    if path == "-" and data.endswith(b"\n"):
        del data[-1:]
    if not 1 <= len(data) <= 4096:
        size = "more than 4096" if len(data) > 4096 else "0"
        raise UsageError(f"--import-secret: the secret must be 1 to 4096 bytes, not {size}")
    return data


@click.command()
@click.argument("vault")
@factor_options
@secret_file_options
@click.option("--unlock-slot", "unlock_slots", multiple=True, metavar="SLOT", help="Unlock with this slot first.")
@click.option("--unlock-keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file for the unlock.")
def enroll(vault: str, unlock_slots: tuple[str, ...], unlock_keyfiles: tuple[str, ...], **kw: Any) -> None:
    """Add a slot to VAULT: unlock with an existing slot, then enrol the FACTORS given."""
    store = VaultStore()
    plan = _planned_factors(kw)
    check_label(kw["label"])
    operations.check_slot_shape(len(plan), kw["threshold"])
    current = store.load(vault)
    refuse_damaged(current)
    operations.check_room(current)  # before any token is touched or anything promised
    ctx, ui = factor_context(kw, unlock_keyfiles)
    ui.notify("info", f"unlocking vault {vault!r} with an existing slot")
    loaded, opened = open_vault(store, vault, ctx, ui, list(unlock_slots) or None)
    # token factors skip (and refuse) tokens already enrolled in this vault: a backup is another key
    ctx.options["enrolled_factors"] = [f.descriptor() for s in loaded.slots for f in s.factors]
    try:
        ui.notify("info", f"opened with slot {opened.slot_id}; now enrolling the new factors")
        ui.defer_secrets = True  # a recovery key is shown once the slot holding it is written
        enrolled = _enroll_all(ctx, plan)
        try:
            _, slot = operations.add_slot(store, vault, opened.masterkey, enrolled, kw["threshold"], kw["label"])
        finally:
            for _, s in enrolled:
                wipe(s)
    finally:
        wipe(opened.masterkey)
    ui.reveal_deferred()
    emit(kw["as_json"], {"vault": vault, "slot": slot.id, "unlocked_with": opened.slot_id, "shown": ui.shown},
         f"slot {slot.id} added to vault {vault!r}: {slot.describe()}")


@click.command()
@click.argument("vault")
@json_option
def slots(vault: str, as_json: bool) -> None:
    """List the slots of VAULT."""
    load_factor_types()
    v = VaultStore().load(vault)
    rows = _slot_rows(v)

    def text() -> None:
        for r in rows:
            drill = _when(r["last_drill"]) if r["last_drill"] else "never"
            label = f"  [{r['label']}]" if r["label"] else ""
            click.echo(printable(f"slot {r['id']}: {r['describe']}{label}  (last drill: {drill})", False))

    emit(as_json, {"vault": vault, "slots": rows}, text)


def _when(ts: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@click.command()
@click.argument("vault")
@json_option
def info(vault: str, as_json: bool) -> None:
    """Show VAULT's fingerprint, settings and slots."""
    load_factor_types()
    store = VaultStore()
    v = store.load(vault)
    slots = _slot_rows(v)
    data = {"vault": vault, "fingerprint": v.fingerprint, "format": "tokenagent-vault/1", "seq": v.seq,
            "created": v.created, "secret_len": v.secret_len, "allow_raw": v.allow_raw,
            "path": str(store.path(vault)), "from_backup": v.from_backup, "slots": slots}

    def text() -> None:
        click.echo(f"vault:       {vault}\nfingerprint: {v.fingerprint}\nfile:        {data['path']}")
        click.echo(f"created:     {_when(v.created)}\nsecret:      {v.secret_len} bytes"
                   f" ({'released raw' if v.allow_raw else 'subkeys only'})")
        for r in slots:
            click.echo(printable(f"slot {r['id']}:      {r['describe']}", False))

    emit(as_json, data, text)


@click.command(name="list")
@json_option
def list_(as_json: bool) -> None:
    """List the vaults."""
    names = VaultStore().list()
    emit(as_json, {"vaults": names}, "\n".join(names))


@click.command(name="remove-slot")
@click.argument("vault")
@click.argument("slot")
@secret_file_options
@click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file for the unlock.")
@click.option("--unlock-slot", "unlock_slots", multiple=True, metavar="SLOT", help="Unlock with this slot.")
@click.option("--last-token", is_flag=True, help="Confirm removing the last token-backed slot.")
def remove_slot(vault: str, slot: str, unlock_keyfiles: tuple[str, ...], unlock_slots: tuple[str, ...],
                last_token: bool, **kw: Any) -> None:
    """Remove SLOT from VAULT (unlocks with any slot first; refuses the last slot)."""
    store = VaultStore()
    v = store.load(vault)
    refuse_damaged(v)
    v.slot(slot)
    if len(v.slots) == 1:
        raise LastSlot(f"slot {slot} is the last slot of vault {vault!r}; enrol another slot first")
    ctx, ui = factor_context(kw, unlock_keyfiles)
    _, opened = open_vault(store, vault, ctx, ui, list(unlock_slots) or None)
    try:
        operations.remove_slot(store, vault, opened.masterkey, slot, last_token)
    finally:
        wipe(opened.masterkey)
    emit(kw["as_json"], {"vault": vault, "removed": slot}, f"slot {slot} removed from vault {vault!r}")


@click.command()
@click.argument("vault")
@click.argument("slot")
@secret_file_options
def rotate(vault: str, slot: str, **kw: Any) -> None:
    """Renew SLOT's token secrets: one use per key (FIDO2: a new salt; OTP: a new challenge); the slot keeps its id and label."""
    store = VaultStore()
    loaded = store.load(vault)
    refuse_damaged(loaded)
    target = loaded.slot(slot)
    ctx, ui = factor_context(kw)
    results: list[tuple[Factor, bytearray, bytearray]] = []
    try:
        for factor in target.factors:
            results.append(factor.rotate(ctx))  # old and new secret from one use of the token
        masterkey = open_slot(loaded, target, ctx, given=[old for _, old, _ in results])
        try:
            _, renewed = operations.replace_slot(store, vault, masterkey, slot, [(f, new) for f, _, new in results])
        finally:
            wipe(masterkey)
    finally:
        for _, old, new in results:
            wipe(old)
            wipe(new)
    emit(kw["as_json"], {"vault": vault, "slot": renewed.id},
         f"slot {renewed.id} of vault {vault!r} rotated: {renewed.describe()}")


@click.command()
@click.argument("vault")
@click.argument("slot_ids", nargs=-1, metavar="[SLOT]...")
@secret_file_options
@click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file to offer.")
def drill(vault: str, slot_ids: tuple[str, ...], unlock_keyfiles: tuple[str, ...], **kw: Any) -> None:
    """Test that each slot (or the SLOTs named) still opens VAULT; remember the last success."""
    store = VaultStore()
    ctx, ui = factor_context(kw, unlock_keyfiles)
    v = store.load(vault)
    results = []
    for slot_id in slot_ids or [s.id for s in v.slots]:
        v.slot(slot_id)
        ui.notify("info", f"drilling slot {slot_id}: {v.slot(slot_id).describe()}")
        try:
            opened = unlock(v, ctx, [slot_id])
        except (LastSlot, UsageError):
            raise
        except Exception as err:  # noqa: BLE001 - reported per slot, secrets never in messages
            message = getattr(err, "message", None) or type(err).__name__
            results.append({"slot": slot_id, "ok": False, "error": message})
            continue
        if v.from_backup:  # a drill of the backup copy is reported, never written over the damaged file
            wipe(opened.masterkey)
            results.append({"slot": slot_id, "ok": True, "recorded": False})
            continue
        try:
            rolled = operations.roll_forward(store, vault, v, opened)  # a rolled slot counts as drilled
            v = rolled if rolled is not None else operations.record_drill(store, vault, opened.masterkey, slot_id)
        finally:
            wipe(opened.masterkey)
        results.append({"slot": slot_id, "ok": True})
    failed = [r for r in results if not r["ok"]]

    def text() -> None:
        for r in results:
            ok = "ok" if r.get("recorded", True) else "ok (backup copy; not recorded)"
            click.echo(printable(f"slot {r['slot']}: " + (ok if r["ok"] else f"FAILED ({r['error']})"), False))

    emit(kw["as_json"], {"vault": vault, "results": results, "from_backup": v.from_backup}, text)
    if v.from_backup:
        raise VaultFormatError(f"vault {vault!r}: drilled the backup copy (its slots: {len(v.slots)}); nothing was"
                               f" recorded because the main file is damaged. Run 'tokenagent repair {vault}'")
    if failed:
        sys.exit(4)


@click.command(name="open")
@click.argument("vault")
@secret_file_options
@click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file to offer.")
@click.option("--slot", "unlock_slots", multiple=True, metavar="SLOT", help="Try only this slot.")
@click.option("--reveal", is_flag=True, help="Print the secret (offline recovery).")
@click.option("--context", "context_label", metavar="LABEL", help="Print the subkey for LABEL instead.")
@click.option("--format", "fmt", type=click.Choice(["hex", "base64", "raw"]), default="hex", show_default=True)
def open_(vault: str, unlock_keyfiles: tuple[str, ...], unlock_slots: tuple[str, ...], reveal: bool,
          context_label: str | None, fmt: str, **kw: Any) -> None:
    """Open VAULT offline (no agent): check that it opens; with --reveal, print the key."""
    from ..vault import derive_subkey

    store = VaultStore()
    ctx, ui = factor_context(kw, unlock_keyfiles)
    v, opened = open_vault(store, vault, ctx, ui, list(unlock_slots) or None)
    try:
        if not reveal:
            emit(kw["as_json"], {"vault": vault, "slot": opened.slot_id, "fingerprint": v.fingerprint},
                 f"vault {vault!r} opens with slot {opened.slot_id}; fingerprint {v.fingerprint}"
                 " (add --reveal to print the key)")
            return
        if context_label is not None:
            key = derive_subkey(opened.masterkey, context_label)  # "" is refused, never the raw key
        else:
            key = bytearray(opened.masterkey)
        try:
            if fmt == "raw" and not kw["as_json"]:
                refuse_terminal("the raw key", "--format hex")
                sys.stdout.buffer.write(bytes(key))
                sys.stdout.buffer.flush()
                return
            text = base64.b64encode(bytes(key)).decode() if fmt == "base64" else key.hex()
            emit(kw["as_json"], {"vault": vault, "slot": opened.slot_id, "key": text, "format": fmt}, text)
        finally:
            wipe(key)
    finally:
        wipe(opened.masterkey)


@click.group()
def keyfile() -> None:
    """KeePass-compatible key files."""


@keyfile.command(name="generate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def keyfile_generate(path: Path, as_json: bool) -> None:
    """Write a new KeePass XML 2.0 key file (256 random bits, mode 0400) to PATH."""
    from ..factors.keyfile import generate_keyfile

    try:
        generate_keyfile(path)
    except FileNotFoundError:
        raise UsageError(f"cannot write {path}: the directory {path.parent} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"cannot write {path}: it is a directory") from None
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    emit(as_json, {"path": str(path)}, f"key file written to {path} (mode 0400); keep a copy somewhere safe")


def register(cli: click.Group) -> None:
    for command in (init, enroll, slots, info, list_, remove_slot, rotate, drill, open_, keyfile):
        cli.add_command(command)

