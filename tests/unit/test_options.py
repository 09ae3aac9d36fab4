"""The shared option check: nearest valid names, declared types, KEY=VALUE text, status mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard import errors
from shipyard.options import Option, check_names, check_options, nearest, parse_pairs

DECLARED = (
    Option("methods", list[str], "outputs", default=["predict"]),
    Option("threads", int, "threads"),
    Option("scale", float, "a factor"),
    Option("strict", bool, "a switch"),
    Option("classes", list[int | str], "labels", applies_to="file"),
    Option("code_paths", list[Path], "files", applies_to="object"),
)


@pytest.mark.parametrize(
    ("name", "valid", "expected"),
    [
        ("trust", ["trust_pickle", "tags", "alias"], "trust_pickle"),  # difflib alone says 0.59
        ("method", ["methods", "metrics"], "methods"),
        ("MAX_QEUE", ["max_queue", "port"], "max_queue"),  # case and one swap
        ("trust-pickle", ["trust_pickle"], "trust_pickle"),  # '-' for '_'
        ("bogus_option", ["methods", "trust_pickle", "description"], None),
        ("max", ["max_body_bytes", "max_queue"], None),  # two share the first word: no guess
    ],
)
def test_the_nearest_name_is_close_or_shares_the_first_word(name: str, valid: list[str], expected: Any) -> None:
    assert nearest(name, valid) == expected


def test_nearest_returns_how_the_user_writes_the_name() -> None:
    assert nearest("trust", {"trust_pickle": "--trust-pickle"}) == "--trust-pickle"


def test_an_unknown_name_says_the_nearest_or_lists_the_valid_ones() -> None:
    with pytest.raises(errors.UnknownOption) as near:
        check_names(["trust"], ["methods"], owner="runtime sklearn", also=["trust_pickle", "sample"])
    assert str(near.value) == "unknown option 'trust' for runtime sklearn; did you mean 'trust_pickle'?"
    assert (near.value.option, near.value.suggestion, near.value.field) == ("trust", "trust_pickle", "trust")

    with pytest.raises(errors.UnknownOption) as far:
        check_names(["bogus_option"], ["threads", "methods"], owner="runtime sklearn")
    assert str(far.value) == "unknown option 'bogus_option' for runtime sklearn; valid options: methods, threads"

    with pytest.raises(errors.UnknownOption, match="^unknown option 'x' for runtime torch; it takes no options$"):
        check_names(["x"], [], owner="runtime torch")


def test_values_of_the_declared_type_pass_normalised() -> None:
    got = check_options(
        {"methods": "predict_proba", "threads": np.int64(2), "scale": 1, "strict": True, "code_paths": "a.py"},
        DECLARED, owner="runtime x", for_file=False,
    )
    # a single value for a list is a one-item list; NumPy scalars are Python values; ints are floats
    assert got == {"methods": ["predict_proba"], "threads": 2, "scale": 1.0, "strict": True,
                   "code_paths": [Path("a.py")]}
    assert type(got["threads"]) is int
    assert check_options({"classes": np.array(["ham", "spam"])}, DECLARED, owner="x", for_file=True) == {
        "classes": ["ham", "spam"]
    }


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"threads": "4"}, "option 'threads' for runtime x must be an int, got str '4'"),
        ({"threads": True}, "option 'threads' for runtime x must be an int, got bool True"),
        ({"methods": 3}, "option 'methods' for runtime x must be a list of str, got int 3"),
        ({"methods": ["predict", 1]}, "option 'methods' for runtime x must be a list of str, got list ['predict', 1]"),
        ({"methods": {"predict"}}, "option 'methods' for runtime x must be a list of str, got set {'predict'}"),
        ({"strict": 1}, "option 'strict' for runtime x must be a bool, got int 1"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_option_the_type_and_what_arrived(
    given: dict[str, Any], message: str
) -> None:
    with pytest.raises(errors.InvalidOption) as info:
        check_options(given, DECLARED, owner="runtime x", for_file=False)
    assert str(info.value) == message
    assert not isinstance(info.value, errors.UnknownOption)


def test_an_option_for_files_is_refused_for_an_object_and_the_other_way_round() -> None:
    with pytest.raises(errors.InvalidOption, match="'classes' for runtime x applies to model files only"):
        check_options({"classes": [0, 1]}, DECLARED, owner="runtime x", for_file=False)
    with pytest.raises(errors.InvalidOption, match="'code_paths' for runtime x applies to in-memory models only"):
        check_options({"code_paths": ["a.py"]}, DECLARED, owner="runtime x", for_file=True)


def test_key_value_text_is_converted_by_the_declared_type() -> None:
    got = parse_pairs(
        ["methods=predict,predict_proba", "threads=3", "scale=0.5", "strict=yes", "classes=0,1,spam"],
        DECLARED, owner="runtime x", for_file=True,
    )
    assert got == {"methods": ["predict", "predict_proba"], "threads": 3, "scale": 0.5, "strict": True,
                   "classes": [0, 1, "spam"]}
    # a repeated list key adds items
    assert parse_pairs(["methods=predict", "methods=predict_proba"], DECLARED, owner="x") == {
        "methods": ["predict", "predict_proba"]
    }


@pytest.mark.parametrize(
    ("pairs", "error", "message"),
    [
        (["threads=four"], errors.InvalidOption, "option 'threads' for runtime x must be an int, got 'four'"),
        (["strict=maybe"], errors.InvalidOption, "option 'strict' for runtime x must be a bool, got 'maybe'"),
        (["threads=1", "threads=2"], errors.InvalidOption, "--option threads is given twice"),
        (["threads"], errors.InvalidOption, "--option takes KEY=VALUE, got 'threads'"),
        (["thread=2"], errors.UnknownOption, "unknown option 'thread' for runtime x; did you mean 'threads'?"),
    ],
)
def test_bad_key_value_text_is_refused_with_its_reason(pairs: list[str], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        parse_pairs(pairs, DECLARED, owner="runtime x")
    assert str(info.value) == message


def test_option_errors_are_config_errors_answered_as_bad_requests() -> None:
    from shipyard.serving.grpc.errors import status_for as grpc_status
    from shipyard.serving.rest.errors import error_body
    from shipyard.serving.rest.errors import status_for as rest_status

    exc = errors.UnknownOption("trust", owner="runtime sklearn", valid=["methods"], suggestion="trust_pickle")
    assert isinstance(exc, errors.ConfigError)
    assert rest_status(exc) == 400
    assert grpc_status(exc).name == "INVALID_ARGUMENT"
    assert error_body(exc) == {"error": str(exc), "kind": "invalid_input", "type": "UnknownOption", "field": "trust"}
    assert rest_status(errors.InvalidOption("bad", option="threads")) == 400
