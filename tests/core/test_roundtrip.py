"""Round trips through every software factor, composite slots and k-of-n slots."""

from __future__ import annotations

import itertools
import stat
from pathlib import Path

import pytest
from scripted import context  # type: ignore[import-not-found]

from tokenagent.errors import LastSlot, NoSlotMatched, UsageError, VaultExists, VaultIntegrityError
from tokenagent.factors.keyfile import KeyFileFactor, generate_keyfile
from tokenagent.factors.password import PasswordFactor
from tokenagent.factors.recovery import RecoveryFactor, from_modhex, to_modhex
from tokenagent.vault import VaultStore, derive_subkey, fingerprint, new_vault, operations, unlock


def _keyfile(tmp_path: Path, name: str = "k.keyx") -> str:
    path = tmp_path / name
    generate_keyfile(path)
    return str(path)


def test_password_round_trip(store: VaultStore) -> None:
    enrolled = [PasswordFactor.enroll(context([b"correct horse"]), {})]
    vault, key = new_vault("pw", enrolled)
    store.create(vault)
    opened = unlock(store.load("pw"), context([b"correct horse"]))
    assert opened.masterkey == key and opened.slot_id == "1"
    with pytest.raises(NoSlotMatched) as err:
        unlock(store.load("pw"), context([b"battery staple"]))
    assert "slot 1" in str(err.value) and "correct horse" not in str(err.value)


def test_keyfile_round_trip_and_generated_file_mode(store: VaultStore, tmp_path: Path) -> None:
    path = _keyfile(tmp_path)
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o400
    with pytest.raises(VaultExists):
        generate_keyfile(Path(path))
    vault, key = new_vault("kf", [KeyFileFactor.enroll(context(), {"path": path})])
    store.create(vault)
    assert unlock(store.load("kf"), context(keyfiles=[path])).masterkey == key
    other = _keyfile(tmp_path, "other.keyx")
    with pytest.raises(NoSlotMatched, match="not the key file of this slot"):
        unlock(store.load("kf"), context(keyfiles=[other]))


def test_keyfile_hint_is_used_when_no_path_is_given(store: VaultStore, tmp_path: Path) -> None:
    path = _keyfile(tmp_path)
    vault, key = new_vault("kf", [KeyFileFactor.enroll(context(), {"path": path})])
    assert unlock(vault, context()).masterkey == key
    Path(path).unlink()
    with pytest.raises(NoSlotMatched, match="is not there"):
        unlock(vault, context())


def test_recovery_key_round_trip_any_case_with_or_without_dashes(store: VaultStore) -> None:
    ctx = context()
    enrolled = [RecoveryFactor.enroll(ctx, {})]
    shown = ctx.ui.shown[0]  # type: ignore[attr-defined]
    assert len(shown) == 64 + 7 and shown.count("-") == 7
    vault, key = new_vault("rk", enrolled)
    for typed in (shown, shown.upper(), shown.replace("-", ""), shown.replace("-", " ")):
        assert unlock(vault, context([typed.encode()])).masterkey == key
    typo = ("c" if shown[0] != "c" else "b") + shown[1:]
    with pytest.raises(NoSlotMatched, match="typos"):
        unlock(vault, context([typo.encode()]))


def test_modhex_round_trip() -> None:
    data = bytes(range(32))
    assert from_modhex(to_modhex(data)) == data
    assert from_modhex("not a key") is None


def test_recovery_shares_2_of_3(store: VaultStore) -> None:
    ctx = context()
    enrolled = [RecoveryFactor.enroll(ctx, {"shares": "2/3"})]
    shares = ctx.ui.shown  # type: ignore[attr-defined]
    assert len(shares) == 3
    vault, key = new_vault("sh", enrolled)
    for a, b in itertools.combinations(shares, 2):
        assert unlock(vault, context([a.encode(), b.encode()])).masterkey == key
    with pytest.raises(NoSlotMatched):
        unlock(vault, context([shares[0].encode()]))


def test_composite_password_and_keyfile_both_required(store: VaultStore, tmp_path: Path) -> None:
    path = _keyfile(tmp_path)
    enrolled = [PasswordFactor.enroll(context([b"pw"]), {}), KeyFileFactor.enroll(context(), {"path": path})]
    vault, key = new_vault("kp", enrolled)
    store.create(vault)
    assert unlock(store.load("kp"), context([b"pw"], [path])).masterkey == key
    with pytest.raises(NoSlotMatched):  # the key file alone
        unlock(store.load("kp"), context([], [path]))
    Path(path).chmod(0o600)
    Path(path).unlink()
    with pytest.raises(NoSlotMatched):  # the password alone
        unlock(store.load("kp"), context([b"pw"]))


def test_two_of_three_slot(store: VaultStore, tmp_path: Path) -> None:
    path = _keyfile(tmp_path)
    ctx = context([b"pw"])
    enrolled = [
        PasswordFactor.enroll(ctx, {}),
        KeyFileFactor.enroll(ctx, {"path": path}),
        RecoveryFactor.enroll(ctx, {}),
    ]
    recovery = ctx.ui.shown[0].encode()  # type: ignore[attr-defined]
    vault, key = new_vault("k2", enrolled, threshold=2)
    assert vault.slots[0].policy.k == 2
    hidden = tmp_path / "elsewhere"
    hidden.mkdir()
    moved = hidden / "k.keyx"
    Path(path).rename(moved)
    with_keyfile = [str(moved)]
    # any two of the three open it
    assert unlock(vault, context(None, with_keyfile, password=[b"pw"], recovery=[])).masterkey == key
    assert unlock(vault, context(None, [], password=[b"pw"], recovery=[recovery])).masterkey == key
    assert unlock(vault, context(None, with_keyfile, password=[], recovery=[recovery])).masterkey == key
    # one alone does not
    for password, recovery_given, files in (([b"pw"], [], []), ([], [recovery], []), ([], [], with_keyfile)):
        with pytest.raises(NoSlotMatched):
            unlock(vault, context(None, files, password=password, recovery=recovery_given))
    # a wrong password plus one right factor is still one short
    with pytest.raises(NoSlotMatched):
        unlock(vault, context(None, with_keyfile, password=[b"wrong"], recovery=[]))


def test_several_slots_are_alternatives_and_last_slot_is_kept(store: VaultStore) -> None:
    vault, key = new_vault("alt", [PasswordFactor.enroll(context([b"one"]), {})])
    store.create(vault)
    operations.add_slot(store, "alt", key, [PasswordFactor.enroll(context([b"two"]), {})])
    assert unlock(store.load("alt"), context([b"two"])).slot_id == "2"
    assert unlock(store.load("alt"), context([b"one"])).slot_id == "1"
    operations.remove_slot(store, "alt", key, "1")
    with pytest.raises(LastSlot):
        operations.remove_slot(store, "alt", key, "2")
    assert [s.id for s in store.load("alt").slots] == ["2"]


def test_imported_secret_and_subkeys(store: VaultStore) -> None:
    secret = b"restic repository passphrase"
    vault, key = new_vault("imp", [PasswordFactor.enroll(context([b"pw"]), {})], secret=secret)
    assert bytes(key) == secret and vault.allow_raw and vault.secret_len == len(secret)
    assert unlock(vault, context([b"pw"])).masterkey == secret
    assert vault.fingerprint == fingerprint(secret)
    assert derive_subkey(secret, "restic:a") != derive_subkey(secret, "restic:b")
    generated, _ = new_vault("gen", [PasswordFactor.enroll(context([b"pw"]), {})])
    assert not generated.allow_raw
    with pytest.raises(UsageError):
        new_vault("big", [PasswordFactor.enroll(context([b"pw"]), {})], secret=b"x" * 4097)


def test_slot_added_without_the_key_is_detected(store: VaultStore) -> None:
    vault, key = new_vault("mac", [PasswordFactor.enroll(context([b"pw"]), {})])
    store.create(vault)
    # Someone without the key builds a slot around a key of their own and splices it in.
    intruder, _ = new_vault("mac", [PasswordFactor.enroll(context([b"evil"]), {})])
    forged = vault.with_changes(slots=(*vault.slots, intruder.slots[0].__class__(
        **{**intruder.slots[0].__dict__, "id": "2"})))
    store.path("mac").write_bytes(forged.to_bytes())
    with pytest.raises(VaultIntegrityError):
        unlock(store.load("mac"), context([b"pw"]))


def test_recovery_modhex_alphabet_is_yubikits() -> None:
    """The recovery factor names the modhex alphabet itself (yubikit is imported only when a key is shown
    or typed); it must be yubikit's."""
    from yubikit.core.otp import MODHEX_ALPHABET

    from tokenagent.factors import recovery

    assert recovery.MODHEX == MODHEX_ALPHABET
    key = bytes(range(32))
    assert recovery.from_modhex(recovery.to_modhex(key)) == key
