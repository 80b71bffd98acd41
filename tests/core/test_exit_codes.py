"""docs/exit-codes.md and tokenagent.errors agree: every code in the doc's table is an error class
with that exit code, every error a user can see is in the table, and the exit codes are the enum."""

from __future__ import annotations

import re
from pathlib import Path

from tokenagent.errors import ExitCode, TokenAgentError, _all_subclasses
from tokenagent.factors.keyfile import KeyFileError  # noqa: F401 - registers the subclass

DOC = Path(__file__).resolve().parents[2] / "docs" / "exit-codes.md"
INTERNAL = {"not-mine", "token-absent"}  # "try the next slot": never the outcome of a command


def doc_table() -> dict[int, set[str]]:
    rows: dict[int, set[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| (\d+) \| [^|]+ \| (.+) \|$", line)
        if m:
            rows[int(m.group(1))] = set(re.findall(r"`([a-z0-9-]+)`", m.group(2)))
    return rows


def test_the_doc_table_is_the_code() -> None:
    table = doc_table()
    assert sorted(table) == sorted(int(c) for c in ExitCode if c != ExitCode.OK)
    classes = {cls.code: cls for cls in [TokenAgentError, *_all_subclasses(TokenAgentError)]}
    documented = {code: exit_code for exit_code, codes in table.items() for code in codes}
    for code, exit_code in documented.items():
        assert code in classes, f"docs/exit-codes.md lists {code!r}, which no error class has"
        assert int(classes[code].exit_code) == exit_code, f"{code}: doc says {exit_code}"
    missing = set(classes) - set(documented) - INTERNAL
    assert not missing, f"error codes missing from docs/exit-codes.md: {sorted(missing)}"


def test_a_token_not_present_is_not_a_wrong_password() -> None:
    from tokenagent.errors import NoSlotMatched, TokenNotFound, TokenNotPresent

    assert TokenNotPresent.exit_code == TokenNotFound.exit_code == ExitCode.TOKEN_ABSENT
    assert NoSlotMatched.exit_code == ExitCode.AUTH != ExitCode.TOKEN_ABSENT
