"""The password policy ([passwords] in config.toml) and the hint for weak passwords, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenagent.errors import UsageError
from tokenagent.factors.quality import PasswordPolicy, estimate_bits, hint, length, rating

STRONG = "correct horse battery staple orbit"


def run(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=env, capture_output=True,
                          text=True, timeout=60, input=stdin)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / "config").mkdir(parents=True, mode=0o700)
    os.chmod(h, 0o700)
    return h


def test_estimates_follow_the_known_cases() -> None:
    assert estimate_bits(b"password") < 5  # the most common password of all
    assert rating(estimate_bits(b"Tr0ub4dor&3")) == "poor"
    assert estimate_bits(STRONG.encode()) > 75
    assert estimate_bits(("x7Q!" * 40).encode()) > 0  # past the estimator's length limit: no error
    assert length("pässwörd".encode()) == 8


def test_policy_refuses_short_and_weak_passwords_naming_the_rule() -> None:
    policy = PasswordPolicy(min_length=12, min_bits=60)
    with pytest.raises(UsageError, match="at least 12"):
        policy.check(b"short")
    with pytest.raises(UsageError, match="at least 60 bits"):
        policy.check(b"passwordpassword")
    assert policy.check(STRONG.encode()) >= 60
    assert hint(10.0) is not None and hint(80.0) is None


def test_cli_enforces_the_policy_and_creates_nothing(home: Path) -> None:
    (home / "config" / "config.toml").write_text("[passwords]\nmin_length = 12\nmin_bits = 60\n")
    r = run(home, "init", "docs", "--password", "--password-file", "-", stdin="passwordpassword\n")
    assert r.returncode == 2, r.stderr
    assert "password policy asks for at least 60 bits" in r.stderr and "Traceback" not in r.stderr
    assert "passwordpassword" not in r.stdout + r.stderr
    assert json.loads(run(home, "list", "--json").stdout)["vaults"] == []
    r = run(home, "init", "docs", "--password", "--password-file", "-", stdin="tiny\n")
    assert r.returncode == 2 and "at least 12" in r.stderr
    r = run(home, "init", "docs", "--password", "--password-file", "-", stdin=STRONG + "\n")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    r = run(home, "enroll", "docs", "--password", "--password-file", "-", stdin=STRONG + "\nqwertyuiop12\n")
    assert r.returncode == 2 and "policy" in r.stderr
    assert len(json.loads(run(home, "slots", "docs", "--json").stdout)["slots"]) == 1


def test_weak_password_gets_a_hint_without_a_policy(home: Path) -> None:
    r = run(home, "init", "docs", "--password", "--password-file", "-", stdin="Tr0ub4dor&3\n")
    assert r.returncode == 0, r.stderr
    assert "warning: this password's estimated quality is" in r.stderr and "(poor)" in r.stderr
    assert "Tr0ub4dor" not in r.stderr


def test_bad_policy_values_are_refused(home: Path) -> None:
    (home / "config" / "config.toml").write_text("[passwords]\nmin_length = -1\n")
    r = run(home, "init", "docs", "--password", "--password-file", "-", stdin=STRONG + "\n")
    assert r.returncode == 2 and "[passwords]" in r.stderr
    (home / "config" / "config.toml").write_text("[passwords]\nmin_lenght = 3\n")
    r = run(home, "init", "docs", "--password", "--password-file", "-", stdin=STRONG + "\n")
    assert r.returncode == 2 and "min_lenght" in r.stderr
