"""Key disks (docs/agent.md): key-file hints naming a filesystem by UUID, and which slots a mounted one opens.

The real mount and udev path runs in the desk tier (tests/desk/test_desk_keydisk.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenagent import discovery
from tokenagent.daemon.plug import plug_slots
from tokenagent.errors import NotMine, UsageError
from tokenagent.factors.base import FactorContext
from tokenagent.factors.keyfile import KeyFileFactor, generate_keyfile, parse_disk_hint
from tokenagent.vault.format import Policy, Slot

UUID = "3A8C1F2E-5B7D-4E09-9C61-0D2F4B6A8E17"


def test_hint_parsing() -> None:
    assert parse_disk_hint(f"UUID={UUID}:pwsafe.key") == (UUID.lower(), "/pwsafe.key")
    assert parse_disk_hint("UUID=ABCD-1234:/keys/a.keyx") == ("abcd-1234", "/keys/a.keyx")
    assert parse_disk_hint("/media/usb/a.keyx") is None
    assert parse_disk_hint("UUID=:/x") is None and parse_disk_hint("UUID=a b:/x") is None


def test_enrol_and_unlock_follow_the_filesystem_wherever_it_is_mounted(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "media1", tmp_path / "media2"
    first.mkdir()
    generate_keyfile(first / "pwsafe.key")
    mounted: dict[str, str | None] = {"at": str(first)}
    monkeypatch.setattr(discovery, "filesystem_mount", lambda uuid: mounted["at"] if uuid == UUID.lower() else None)
    ctx = FactorContext(ui=None, devices=None, options={})  # type: ignore[arg-type]
    factor, key = KeyFileFactor.enroll(ctx, {"path": f"UUID={UUID}:/pwsafe.key"})
    assert factor.params()["hint"] == f"UUID={UUID.lower()}:/pwsafe.key"
    assert factor.disk_uuid() == UUID.lower()  # type: ignore[attr-defined]
    first.rename(second)
    mounted["at"] = str(second)
    assert factor.unlock(ctx) == key
    mounted["at"] = None
    with pytest.raises(NotMine, match="not mounted"):
        factor.unlock(ctx)
    with pytest.raises(UsageError, match="not mounted"):
        KeyFileFactor.enroll(ctx, {"path": f"UUID={UUID}:/pwsafe.key"})


def test_a_mounted_key_disk_opens_only_slots_of_key_files_on_it() -> None:
    on_disk = KeyFileFactor(f"UUID={UUID.lower()}:/k", "00000000")
    elsewhere = KeyFileFactor("UUID=abcd-1234:/k", "00000000")
    plain = KeyFileFactor("/home/u/k", "00000000")
    slots = tuple(Slot(id=str(i), label="", created=0, last_drill=None, policy=Policy(), factors=(f,), salt=b"",
                       nonce=b"", wrapped=b"") for i, f in enumerate((on_disk, elsewhere, plain)))
    assert plug_slots(slots, reader=f"disk:{UUID.lower()}") == ["0"]
    assert plug_slots(slots, reader="hid:/dev/hidraw0") == []


def test_the_agent_learns_the_key_disks_without_loading_the_token_stack(tmp_path: Path) -> None:
    """``key_disks`` runs at the agent's start whenever a filesystem is mounted (every desk): it
    finds the UUIDs in the key-file hints of the vault files, and loads neither
    the factor types nor python-fido2 nor cryptography (the idle agent's memory, docs/performance.md).
    A vault made by the real CLI, in a fresh interpreter."""
    import json
    import os
    import subprocess
    import sys

    media = tmp_path / "media"
    media.mkdir()
    generate_keyfile(media / "pwsafe.key")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    script = f"""
import json, sys
from tokenagent import discovery
discovery.filesystem_mount = lambda uuid: {str(media)!r} if uuid == {UUID.lower()!r} else None
from tokenagent._cli.entry import main
code = main(["init", "disk", "--keyfile", "UUID={UUID}:/pwsafe.key"])
code |= main(["init", "plain", "--keyfile", {str(media / "pwsafe.key")!r}])
assert code == 0, code
"""
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    look = """
import json, sys
from tokenagent.daemon.resources import AgentStore
from tokenagent.daemon.watch import key_disks
found = key_disks(AgentStore())
heavy = sorted(m for m in ("cryptography", "fido2", "yubikit", "tokenagent.drivers.fido2") if m in sys.modules)
print(json.dumps({"found": sorted(found), "heavy": heavy}))
"""
    done = subprocess.run([sys.executable, "-c", look], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"found": [UUID.lower()], "heavy": []}
