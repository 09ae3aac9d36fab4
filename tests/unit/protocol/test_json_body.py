"""The one JSON parser: orjson, a nesting limit of MAX_JSON_DEPTH, one InvalidInput."""

from __future__ import annotations

import pytest

from shipyard.errors import InvalidInput
from shipyard.protocol.json_body import MAX_JSON_DEPTH, depth_exceeds, parse_json


def nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def test_the_limit_itself_is_accepted_and_one_more_is_refused() -> None:
    assert parse_json(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(InvalidInput, match=f"more than {MAX_JSON_DEPTH} levels deep") as info:
        parse_json(nested(MAX_JSON_DEPTH + 1))
    assert info.value.field == "body"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 1025, 100_000])
def test_deep_documents_get_the_same_refusal_whatever_the_depth(depth: int) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_json(nested(depth))
    assert info.value.message == f"request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"


def test_objects_count_like_arrays_and_strings_do_not_count() -> None:
    deep_objects = b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidInput, match="levels deep"):
        parse_json(deep_objects)
    brackets_in_a_string = b'{"s": "' + b"[" * 5000 + b'"}'
    assert parse_json(brackets_in_a_string) == {"s": "[" * 5000}
    wide = b"[" + b",".join([b"[1]"] * 5000) + b"]"  # many brackets, depth 2
    assert len(parse_json(wide)) == 5000


def test_the_field_and_what_are_named() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_json(nested(500).decode(), "message", "value")
    assert info.value.field == "value" and info.value.message.startswith("message nests")
    with pytest.raises(InvalidInput, match="message is not valid JSON") as bad:
        parse_json(b"{", "message", "value")
    assert bad.value.field == "value"


def test_depth_walk_is_iterative() -> None:
    doc: list[object] = []
    for _ in range(50_000):  # far past the interpreter's recursion limit
        doc = [doc]
    assert depth_exceeds(doc, MAX_JSON_DEPTH)
    assert not depth_exceeds([[1], {"a": [2]}], 3) and depth_exceeds([[1], {"a": [[2]]}], 3)
