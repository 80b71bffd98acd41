from __future__ import annotations

import subprocess
import sys

from tokenagent import errors


def test_error_codes_are_unique() -> None:
    classes = [errors.TokenAgentError, *errors._all_subclasses(errors.TokenAgentError)]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), codes
    assert errors.error_for_code("pin-blocked") is errors.PinBlocked
    assert errors.error_for_code("no-such-code") is errors.TokenAgentError


def test_cli_version_runs_as_a_process() -> None:
    out = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "tokenagent" in out.stdout
