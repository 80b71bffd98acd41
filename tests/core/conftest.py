"""Fixtures for the vault-core tests (helpers live in scripted.py: test modules import them from there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenagent.vault import VaultStore


@pytest.fixture
def store(tmp_path: Path) -> VaultStore:
    directory = tmp_path / "vaults"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    return VaultStore(directory)
