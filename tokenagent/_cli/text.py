"""Text that is safe to show on a terminal (no click here: the quick agent verbs use it too)."""

from __future__ import annotations

import re

# What a vault file (a label, a key file's hint) or an error may hold but a terminal must never
# receive as is: C0/C1 controls (ANSI escapes start with ESC), DEL, line separators, bidi overrides.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep_newlines: bool = True) -> str:
    """``text`` with every control character escaped (``\\x1b``), and lone surrogates as ``\\udcxx``."""
    if not keep_newlines:
        text = text.replace("\n", "\\n").replace("\t", "\\t")
    text = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
