"""Shared values: model references, data types and the protocol-neutral request/response.

Data types use the Open Inference Protocol names (``FP64``, ``INT64``, ``BYTES``...)
everywhere, in signatures as on the wire, so there is one vocabulary.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput

#: Open Inference Protocol datatype -> NumPy dtype. BYTES holds str/bytes objects.
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_NUMPY_KIND_TO_DATATYPE = {np.dtype(v).str: k for k, v in DATATYPE_TO_NUMPY.items() if k != "BYTES"}


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The protocol datatype name for a NumPy array (strings and objects are BYTES)."""
    dt = array.dtype
    if dt.kind in ("U", "S", "O"):
        return "BYTES"
    name = _NUMPY_KIND_TO_DATATYPE.get(dt.newbyteorder("<").str if dt.byteorder == ">" else dt.str)
    if name is None:
        raise InvalidInput(f"unsupported array dtype {dt}")
    return name


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The NumPy dtype for a protocol datatype name; InvalidInput if unknown."""
    try:
        return DATATYPE_TO_NUMPY[datatype.upper()]
    except KeyError:
        known = ", ".join(DATATYPE_TO_NUMPY)
        raise InvalidInput(
            f"unknown datatype '{datatype}'; expected one of {known}",
            field="datatype",
            expected=known,
            got=datatype,
        ) from None


#: Model and alias names (unanchored; the OpenAPI document's patterns are built from these).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
NAME_MAX_LENGTH = 128
#: Version numbers as written in references and URLs (ASCII digits only: int() takes others too).
VERSION_PATTERN = r"[0-9]+"
_NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(VERSION_PATTERN)


#: The largest version number (the registry stores versions as 64-bit integers).
MAX_VERSION = 2**63 - 1


def is_version_number(text: str) -> bool:
    """``text`` is a version as URLs write it: ASCII digits (``str.isdigit`` also takes '²'), at most
    ``MAX_VERSION`` (a larger one would overflow the registry's query instead of being not found)."""
    return _VERSION_RE.fullmatch(text) is not None and int(text) <= MAX_VERSION


def check_name(kind: str, value: str) -> str:
    """Model and alias names: letters, digits, '_', '.', '-'; up to 128 characters."""
    if not _NAME_RE.fullmatch(value):  # fullmatch: '$' would let a trailing newline through
        raise InvalidInput(
            f"invalid {kind} {value!r}: use letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit, at most 128 characters)",
            field=kind,
            got=value,
        )
    return value


EXTRA_FIELDS = ("refuse", "ignore", "passthrough")
"""What a record-taking surface (``/v1`` predict, GraphQL, streams) does with fields a model does not
take: refuse the record, drop the fields, or drop them and return them beside the record's prediction."""


def check_extra_fields(value: object, option: str = "extra_fields") -> str:
    """``value`` if it is one of ``EXTRA_FIELDS``; else InvalidInput naming ``option`` and the nearest value."""
    if isinstance(value, str) and value in EXTRA_FIELDS:
        return value
    near = difflib.get_close_matches(str(value), EXTRA_FIELDS, n=1)
    raise InvalidInput(
        f"{option} must be 'refuse', 'ignore' or 'passthrough', got {value!r}"
        + (f"; did you mean '{near[0]}'?" if near else ""),
        field=option,
        expected=list(EXTRA_FIELDS),
        got=value,
    )


@dataclass(frozen=True)
class ModelRef:
    """Which version a caller means: ``name`` (newest), ``name@alias`` or ``name:3``."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name``, ``name@alias`` or ``name:VERSION``."""
        text = text.strip()
        if "@" in text:
            name, alias = text.split("@", 1)
            check_name("model name", name)
            check_name("alias", alias)
            return cls(name=name, alias=alias)
        if ":" in text:
            name, ver = text.split(":", 1)
            check_name("model name", name)
            if not is_version_number(ver) or int(ver) < 1:
                raise InvalidInput(
                    f"invalid version '{ver}' in '{text}': versions are whole numbers from 1 to {MAX_VERSION}",
                    field="version",
                    got=ver,
                )
            return cls(name=name, version=int(ver))
        return cls(name=check_name("model name", text))

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return self.name


@dataclass
class Tensor:
    """One named input or output: a NumPy array plus its protocol datatype."""

    name: str
    data: np.ndarray[Any, Any]
    datatype: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.datatype:
            self.datatype = datatype_of(self.data)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass
class InferenceRequest:
    """A protocol-neutral prediction request, already decoded to NumPy."""

    inputs: list[Tensor]
    id: str | None = None
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    declared_datatypes: bool = False
    """The client declared each input's datatype (Open Inference Protocol), so the widening
    rule applies (``signature.check_declared_datatypes``); False when the datatypes were read
    off JSON values (simple API, GraphQL), whose numbers take the input's datatype when they fit."""


@dataclass
class InferenceResponse:
    """A protocol-neutral prediction result."""

    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
