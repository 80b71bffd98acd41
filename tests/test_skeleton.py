from __future__ import annotations

import subprocess
import sys

from tokenagent import errors


def test_error_codes_are_unique() -> None:
    # Each class that names a wire code names its own; a subclass that only refines its parent
    # inside tokenagent (FrameError, a lost connection) keeps the parent's code on the wire.
    classes = [errors.TokenAgentError, *errors._all_subclasses(errors.TokenAgentError)]
    owners = [cls for cls in classes if "code" in vars(cls)]
    codes = [cls.code for cls in owners]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    for cls in owners:
        assert errors.error_for_code(cls.code) is cls, cls
    assert errors.error_for_code("pin-blocked") is errors.PinBlocked
    assert errors.error_for_code("no-such-code") is errors.TokenAgentError


def test_cli_version_runs_as_a_process() -> None:
    out = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "tokenagent" in out.stdout
