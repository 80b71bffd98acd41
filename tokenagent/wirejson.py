"""JSON as the ``json`` module reads and writes it, from its C accelerator ``_json`` alone.

Why not ``import json``: its pure-Python halves (json.decoder, json.encoder, json.scanner) import
``re``, which imports ``enum``: about 9 ms of every cold start of the verbs that only talk to the
agent (docs/performance.md), whose whole budget is about 40. The parsing and encoding are not
written here: ``_json.make_scanner`` and ``_json.make_encoder`` are the very functions
``json.loads`` and ``json.dumps`` run, given the settings ``json.JSONDecoder`` and
``json.JSONEncoder`` give them; only the few steps ``json`` takes around them are repeated
(whitespace around the document, the BOM check). Where ``_json`` is missing or its interface
differs (another interpreter), the ``json`` module does the work. ``tests/core/test_wirejson.py``
holds the results equal to ``json``'s.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing stays unimported (the agent verbs' start)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE


class _DecoderSettings:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``: its defaults, but ``parse_constant``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    def __init__(self, parse_constant: Callable[[str], Any]) -> None:
        self.parse_constant = parse_constant


def _constant(name: str) -> float:
    return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scanners: dict[object, Callable[[str, int], tuple[Any, int]]] = {}


def loads(text: str, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """``json.loads(text, parse_constant=...)`` for a ``str``; raises ValueError as it does."""
    constant = parse_constant or _constant
    scan = _scanners.get(constant)
    if scan is None:
        try:
            from _json import make_scanner

            # typeshed names the parameter with its own type; it reads the settings as attributes
            scan = _scanners[constant] = make_scanner(_DecoderSettings(constant))  # type: ignore[arg-type]
        except (ImportError, AttributeError, TypeError):  # not CPython's accelerator: json itself
            import json

            return json.loads(text, parse_constant=parse_constant)
    if text.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
    start = _skip_whitespace(text, 0)
    try:
        obj, end = scan(text, start)
    except StopIteration:
        raise ValueError(f"Expecting value: char {start}") from None
    end = _skip_whitespace(text, end)
    if end != len(text):
        raise ValueError(f"Extra data: char {end}")
    return obj


def _skip_whitespace(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WHITESPACE:
        i += 1
    return i


_c_works: list[bool] = []  # whether _json.make_encoder takes json.encoder's arguments (found once)


def dumps(obj: Any, compact: bool = False, sort_keys: bool = False, allow_nan: bool = True) -> str:
    """``json.dumps(obj, sort_keys=..., allow_nan=...)``, with ``separators=(",", ":")`` when ``compact``
    (ensure_ascii, as json's default: the output is ASCII)."""
    if not _c_works:
        _c_works.append(_c_encoder(False, False, True) is not None)
    encode = _c_encoder(compact, sort_keys, allow_nan) if _c_works[0] else None
    if encode is None:
        import json

        return json.dumps(obj, separators=(",", ":") if compact else None, sort_keys=sort_keys, allow_nan=allow_nan)
    if isinstance(obj, str):
        from _json import encode_basestring_ascii

        return str(encode_basestring_ascii(obj))
    return "".join(encode(obj, 0))


def _unserialisable(o: object) -> Any:  # json.JSONEncoder.default
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def _c_encoder(compact: bool, sort_keys: bool, allow_nan: bool) -> Callable[[Any, int], Any] | None:
    """``_json.make_encoder`` given what ``json.JSONEncoder.iterencode`` gives it (one per document, as
    there: its circular-reference markers start empty); None where it does not take that."""
    try:
        from _json import encode_basestring_ascii, make_encoder

        # markers (check_circular), default, encoder (ensure_ascii), indent, key_separator,
        # item_separator, sort_keys, skipkeys, allow_nan: json.encoder's call, argument for argument
        encode: Callable[[Any, int], Any] = make_encoder(
            {}, _unserialisable, encode_basestring_ascii, None, ":" if compact else ": ", "," if compact else ", ",
            sort_keys, False, allow_nan)
    except (ImportError, AttributeError, TypeError):
        return None
    return encode
