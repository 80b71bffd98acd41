"""Text that is safe to show on a terminal (no click here: the quick agent verbs use it too)."""

from __future__ import annotations

# What a vault file (a label, a key file's hint) or an error may hold but a terminal must never
# receive as is: C0/C1 controls (ANSI escapes start with ESC), DEL, line separators, bidi overrides.
# A translation table rather than a regular expression: ``re`` (and its ``enum``) would cost the
# quick agent verbs a third of their start-up.
_UNSAFE_RANGES = ((0x00, 0x08), (0x0B, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029), (0x202A, 0x202E), (0x2066, 0x2069))
# each as the unicode_escape codec spells it (which would import that codec's module)
_ESCAPES = {c: "\\r" if c == 0x0D else f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
            for lo, hi in _UNSAFE_RANGES for c in range(lo, hi + 1)}


def printable(text: str, keep_newlines: bool = True) -> str:
    """``text`` with every control character escaped (``\\x1b``), and lone surrogates as ``\\udcxx``."""
    if not keep_newlines:
        text = text.replace("\n", "\\n").replace("\t", "\\t")
    text = text.translate(_ESCAPES)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
