"""wirejson reads and writes JSON exactly as the json module does (it runs json's own C half)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenagent import wirejson

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@given(documents, st.booleans(), st.booleans())
def test_dumps_is_json_dumps(doc: object, compact: bool, sort_keys: bool) -> None:
    expected = json.dumps(doc, separators=(",", ":") if compact else None, sort_keys=sort_keys)
    assert wirejson.dumps(doc, compact=compact, sort_keys=sort_keys) == expected


@given(documents, st.booleans())
def test_loads_reads_what_json_reads(doc: object, compact: bool) -> None:
    text = json.dumps(doc, separators=(",", ":") if compact else None)
    for form in (text, f" \n{text}\t\r"):
        assert repr(wirejson.loads(form)) == repr(json.loads(form))


@given(st.text(max_size=12))
def test_loads_accepts_and_refuses_as_json(text: str) -> None:
    try:
        expected = repr(json.loads(text))
    except ValueError:
        with pytest.raises(ValueError):
            wirejson.loads(text)
        return
    assert repr(wirejson.loads(text)) == expected


def test_the_edges() -> None:
    for bad in ("", " ", "{", "[1,]", "1 2", "\ufeff1", '{"a":1}x', "[1]]"):
        with pytest.raises(ValueError):
            wirejson.loads(bad)
    with pytest.raises(ValueError, match="not allowed"):
        wirejson.loads("[NaN]", parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"{name} is not allowed")))
    assert math.isnan(wirejson.loads("[NaN]")[0])
    with pytest.raises(ValueError):
        wirejson.dumps({"a": float("inf")}, allow_nan=False)
    with pytest.raises(TypeError, match="not JSON serializable"):
        wirejson.dumps({"a": object()})
    with pytest.raises(RecursionError):
        wirejson.loads("[" * 100_000)
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        wirejson.dumps(loop)
    assert wirejson.dumps([1, 2]) == "[1, 2]"  # a fresh encoder after the failure above
