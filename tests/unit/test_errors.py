"""The error tree, its kinds, and the one status table every transport and the client derive from."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import grpc
import pytest

from shipyard import errors
from shipyard.client._errors import CLASS_BY_KIND, error_class, error_class_for_status, server_error
from shipyard.protocol.status import STATUSES, Status, kind_for_grpc, kind_for_http, status_of
from shipyard.serving.graphql.errors import code_for
from shipyard.serving.grpc.errors import status_for as grpc_status_for
from shipyard.serving.rest.errors import error_body
from shipyard.serving.rest.errors import status_for as http_status_for
from shipyard.streams.consumer import StreamOptions

#: Every error class shipyard.errors defines (subclasses elsewhere, e.g. in jobs/, inherit a kind).
CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if issubclass(c, errors.ShipyardError) and c.__module__ == errors.__name__]
LINE = re.compile(r"^(?P<indent>[│├└─ ]*)(?P<name>[A-Z]\w+)\s*(?:\[(?P<kind>\w+)\])?")


def drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """class name -> (parent drawn above it, kind drawn beside it) from the module docstring."""
    doc = errors.__doc__ or ""
    start = doc.index("    ShipyardError")
    drawn: dict[str, tuple[str | None, str | None]] = {}
    parents: list[str] = []
    for line in doc[start:].splitlines():
        if not line.strip():
            break
        match = LINE.match(line[4:])
        assert match is not None, line
        depth = len(match["indent"]) // 4
        parents[depth:] = [match["name"]]
        drawn[match["name"]] = (parents[depth - 1] if depth else None, match["kind"])
    return drawn


def test_the_docstring_tree_is_the_class_tree() -> None:
    drawn = drawn_tree()
    actual = {c.__name__: (None if c is errors.ShipyardError else c.__bases__[0].__name__) for c in CLASSES}
    assert {name: parent for name, (parent, _) in drawn.items()} == actual


def test_the_docstring_shows_each_kind_where_a_class_sets_it() -> None:
    for name, (_, kind) in drawn_tree().items():
        cls = getattr(errors, name)
        assert kind == cls.__dict__.get("kind"), name


def test_every_class_has_a_kind_from_the_fixed_set() -> None:
    assert {c.kind for c in CLASSES} == set(errors.KINDS)  # every kind is used by some class
    for cls in CLASSES:
        assert cls.kind in errors.KINDS, cls


@pytest.mark.parametrize("kind", sorted(errors.KINDS))
def test_every_kind_has_an_http_grpc_and_graphql_status(kind: str) -> None:
    status = STATUSES[kind]
    assert isinstance(status, Status) and 400 <= status.http < 600
    assert grpc.StatusCode[status.grpc] is not grpc.StatusCode.OK
    assert re.fullmatch(r"[A-Z_]+", status.graphql)
    assert kind_for_http(status.http) is not None and kind_for_grpc(status.grpc) is not None


def test_the_table_has_exactly_the_kinds() -> None:
    assert set(STATUSES) == errors.KINDS
    assert STATUSES["internal"] == Status(500, "INTERNAL", "INTERNAL_SERVER_ERROR")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_rest_grpc_and_graphql_answer_what_the_table_says(cls: type[errors.ShipyardError]) -> None:
    exc = cls.__new__(cls)  # the status depends on the class alone
    errors.ShipyardError.__init__(exc, "m")
    expected = STATUSES[cls.kind]
    assert status_of(exc) == expected
    assert http_status_for(exc) == expected.http
    assert grpc_status_for(exc) == grpc.StatusCode[expected.grpc]
    assert code_for(exc) == expected.graphql
    assert error_body(exc)["kind"] == cls.kind and error_body(exc)["type"] == cls.__name__


@pytest.mark.parametrize(
    ("error", "http", "grpc_code"),
    [
        (errors.InvalidInput("x"), 400, "INVALID_ARGUMENT"),
        (errors.UnsupportedMediaType("x"), 415, "INVALID_ARGUMENT"),
        (errors.PayloadTooLarge(10, 5), 413, "RESOURCE_EXHAUSTED"),
        (errors.ModelNotServed("m", []), 404, "NOT_FOUND"),
        (errors.JobNotFound("j"), 404, "NOT_FOUND"),
        (errors.IdenticalVersion("m", 1, "0" * 64), 409, "ALREADY_EXISTS"),
        (errors.Overloaded("m", 3), 503, "UNAVAILABLE"),
        (errors.BrokerError("down"), 503, "UNAVAILABLE"),
        (errors.RequestTimeout(1.0), 504, "DEADLINE_EXCEEDED"),
        (errors.Unauthenticated("who?"), 401, "UNAUTHENTICATED"),
        (errors.PermissionDenied("no"), 403, "PERMISSION_DENIED"),
        (errors.InferenceError("boom"), 500, "INTERNAL"),
        (errors.MissingDependency("onnxruntime", "onnx"), 500, "INTERNAL"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_the_statuses_users_see(error: errors.ShipyardError, http: int, grpc_code: str) -> None:
    assert (http_status_for(error), grpc_status_for(error).name) == (http, grpc_code)


def test_the_client_has_a_class_for_every_kind_and_it_is_of_that_kind() -> None:
    assert set(CLASS_BY_KIND) == errors.KINDS
    for kind, cls in CLASS_BY_KIND.items():
        assert cls.kind == kind


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_client_rebuilds_every_class_from_its_name_and_kind(cls: type[errors.ShipyardError]) -> None:
    assert error_class(cls.__name__, cls.kind) is cls
    rebuilt = server_error(error_class(cls.__name__, cls.kind), "the server's words", field="x1")
    assert type(rebuilt) is cls and str(rebuilt) == "the server's words"


def test_the_client_falls_back_to_the_kind_then_the_status() -> None:
    assert error_class("NoSuchErrorYet", "not_found") is errors.ModelNotFound
    assert error_class("ValueError", "invalid_input") is errors.InvalidInput  # not a shipyard class
    assert error_class(None, None) is None
    assert error_class_for_status(None, None, http=413) == (errors.PayloadTooLarge, False)
    assert error_class_for_status(None, None, http=418) == (errors.ShipyardError, False)
    assert error_class_for_status(None, None, grpc="UNAVAILABLE") == (errors.ModelNotReady, False)
    assert error_class_for_status(["odd"], 7, grpc="INTERNAL") == (errors.ShipyardError, False)
    assert error_class_for_status("JobNotFound", "not_found", http=404) == (errors.JobNotFound, True)


@pytest.mark.parametrize("path", ["protocol/status.py", "client/_errors.py", "client/_rest.py"])
def test_the_table_and_the_client_import_no_server_module_and_no_grpc(path: str) -> None:
    source = Path(errors.__file__).parent / path
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {m for m in imported if m.startswith(("shipyard.serving", "grpc"))}


@pytest.mark.parametrize(
    ("options", "option"),
    [({"batch_size": 0}, "batch_size"), ({"max_wait_ms": -1}, "max_wait_ms"), ({"max_in_flight": 0}, "max_in_flight")],
)
def test_bad_stream_options_are_invalid_options_naming_the_option(options: dict[str, float], option: str) -> None:
    with pytest.raises(errors.InvalidOption) as info:
        StreamOptions(**options)  # type: ignore[arg-type]
    assert info.value.option == option and info.value.kind == "invalid_input"
