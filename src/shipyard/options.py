"""Declared options, and the one check of names that nothing takes.

Whatever a user names — a keyword of ``register()``, ``--option KEY=VALUE``, a
stream URL's ``?key=value``, a ``SHIPYARD_*`` variable, a key of a settings
file — is checked against the names that are valid there by ``check_names``
(or ``unknown`` for callers that only warn). A name not on the list is an
``UnknownOption`` naming the nearest valid one, else listing the valid ones.
"Nearest" is difflib's closest match (ratio >= 0.6, ignoring case and ``-``
versus ``_``), else the one valid name whose first word is the name given
(``trust`` -> ``trust_pickle``).

Runtimes declare what they take as ``Option`` values: name, type, a one-line
doc and the default. ``check_options`` refuses unknown names and values of the
wrong type (``InvalidOption`` naming the option, the type expected and what
arrived); ``parse_pairs`` does the same for ``KEY=VALUE`` text, converting each
value by its declared type. Types an option can declare: ``str``, ``int``,
``float``, ``bool``, ``Path``, ``Any``, ``list[T]`` of those, and unions of
them (``int | str``; text is read by the first member that can read it). A
list option also takes a single value, as a one-item list; from text, its
items are comma separated, and a repeated key adds items.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from shipyard.errors import InvalidOption, UnknownOption

__all__ = ["Option", "check_names", "check_options", "nearest", "parse_bool", "parse_pairs", "unknown"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


# -- names ----------------------------------------------------------------------------------------


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def nearest(name: str, candidates: Iterable[str] | Mapping[str, str]) -> str | None:
    """The candidate nearest to ``name``, or None when none is near.

    ``candidates`` is a list of names, or a mapping from names to the text to show
    for each (say ``{"trust_pickle": "--trust-pickle"}``); the shown text is returned.
    """
    shown = dict(candidates) if isinstance(candidates, Mapping) else {c: c for c in candidates}
    by_key = {_key(c): text for c, text in shown.items()}
    close = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.6)
    if close:
        return by_key[close[0]]
    # a valid name's first word ("trust" for trust_pickle) is near too, when only one has it
    first = [text for k, text in by_key.items() if k.split("_")[0] == _key(name)]
    return first[0] if len(first) == 1 else None


def unknown(
    name: str,
    valid: Iterable[str],
    *,
    owner: str,
    what: str = "option",
    also: Iterable[str] | Mapping[str, str] = (),
) -> UnknownOption:
    """The error for ``name``, which is not in ``valid``: it names the nearest of ``valid`` and
    ``also`` (names valid elsewhere the user may have meant), else lists ``valid``."""
    valid = sorted(dict.fromkeys(valid))
    candidates: dict[str, str] = {v: v for v in valid}
    extra = dict(also) if isinstance(also, Mapping) else {a: a for a in also}
    candidates.update({k: v for k, v in extra.items() if k not in candidates})
    return UnknownOption(name, owner=owner, valid=valid, suggestion=nearest(name, candidates), what=what)


def check_names(
    names: Iterable[str],
    valid: Iterable[str],
    *,
    owner: str,
    what: str = "option",
    also: Iterable[str] | Mapping[str, str] = (),
) -> None:
    """Raise ``UnknownOption`` for the first of ``names`` that is not in ``valid``."""
    allowed = set(valid)
    for name in names:
        if name not in allowed:
            raise unknown(name, allowed, owner=owner, what=what, also=also)


# -- declared options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option a runtime (or any other plug-in) takes."""

    name: str
    """The keyword, e.g. ``methods``; also the KEY of ``--option KEY=VALUE``."""
    type: Any
    """``str``, ``int``, ``float``, ``bool``, ``Path``, ``Any``, ``list[T]`` or a union of them."""
    doc: str
    """One line saying what it does, for ``--help`` and error messages."""
    default: Any = None
    """What applies when it is not given (documentation; the runtime applies it)."""
    applies_to: Literal["any", "object", "file"] = "any"
    """Whether it applies to in-memory models (``save``), model files (``import_path``) or both."""

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    def check(self, value: Any, *, owner: str) -> Any:
        """``value`` if it has the declared type (a single value for a list becomes a one-item list)."""
        ok, normal = _matches(value, self.type)
        if not ok:
            raise InvalidOption(
                f"option '{self.name}' for {owner} must be {_a(self.type_name)}, got {_describe(value)}",
                option=self.name, expected=self.type_name, got=value,
            )
        return normal

    def parse(self, text: str, *, owner: str) -> Any:
        """The value ``text`` means for this option's type."""
        try:
            return _parse(text, self.type)
        except ValueError:
            raise InvalidOption(
                f"option '{self.name}' for {owner} must be {_a(self.type_name)}, got {text!r}",
                option=self.name, expected=self.type_name, got=text,
            ) from None


def check_options(
    given: Mapping[str, Any],
    declared: Sequence[Option],
    *,
    owner: str,
    for_file: bool | None = None,
    also: Iterable[str] | Mapping[str, str] = (),
) -> dict[str, Any]:
    """``given`` checked against ``declared``: unknown names, values of the wrong type and options
    that do not apply (``for_file``: a model file rather than an in-memory model) are refused.

    Returns:
        The values, normalised (a single value for a list option becomes a one-item list).
    """
    by_name = {o.name: o for o in declared}
    check_names(given, by_name, owner=owner, also=also)
    out: dict[str, Any] = {}
    for name, value in given.items():
        option = by_name[name]
        _check_applies(option, for_file, owner)
        out[name] = option.check(value, owner=owner)
    return out


def parse_pairs(
    pairs: Iterable[str],
    declared: Sequence[Option],
    *,
    owner: str,
    flag: str = "--option",
    for_file: bool | None = None,
    also: Iterable[str] | Mapping[str, str] = (),
) -> dict[str, Any]:
    """``KEY=VALUE`` texts (``flag`` names where they came from) as typed values of ``declared``."""
    by_name = {o.name: o for o in declared}
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidOption(f"{flag} takes KEY=VALUE, got {pair!r}", option=pair, expected="KEY=VALUE", got=pair)
        key, _, text = pair.partition("=")
        key = key.strip()
        check_names([key], by_name, owner=owner, also=also)
        option = by_name[key]
        _check_applies(option, for_file, owner)
        value = option.parse(text, owner=owner)
        if key in out:
            if not isinstance(value, list):
                raise InvalidOption(f"{flag} {key} is given twice", option=key, got=text)
            value = out[key] + value
        out[key] = value
    return out


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); ValueError otherwise."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(text)


def type_name(tp: Any) -> str:
    """How a declared type reads in messages: ``int``, ``list of str``, ``int or str``."""
    if tp is Any:
        return "any value"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if tp is Path:
        return "path"
    return str(getattr(tp, "__name__", tp))


def _check_applies(option: Option, for_file: bool | None, owner: str) -> None:
    if for_file is None or option.applies_to == "any" or (option.applies_to == "file") == for_file:
        return
    where = "model files" if option.applies_to == "file" else "in-memory models"
    other = "a model file" if for_file else "an in-memory model"
    raise InvalidOption(
        f"option '{option.name}' for {owner} applies to {where} only, not to {other}",
        option=option.name, expected=where, got=other,
    )


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether ``value`` has type ``tp``, the value normalised)."""
    if type(value).__module__ == "numpy":
        value = value.tolist()  # NumPy scalars and arrays as Python values
    if tp is Any:
        return True, value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for member in get_args(tp):
            ok, normal = _matches(value, member)
            if ok:
                return True, normal
        return False, None
    if origin is list:
        (item,) = get_args(tp)
        if isinstance(value, (list, tuple)):
            items = []
            for x in value:
                ok, normal = _matches(x, item)
                if not ok:
                    return False, None
                items.append(normal)
            return True, items
        ok, normal = _matches(value, item)
        return (True, [normal]) if ok else (False, None)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if tp is Path:
        ok = isinstance(value, (str, os.PathLike))
        return ok, Path(value) if ok else None
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # a type this module cannot check: trust the runtime


def _parse(text: str, tp: Any) -> Any:
    if tp is Any or tp is str:
        return text
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for member in get_args(tp):
            try:
                return _parse(text, member)
            except ValueError:
                continue
        raise ValueError(text)
    if origin is list:
        (item,) = get_args(tp)
        return [_parse(t.strip(), item) for t in text.split(",") if t.strip()]
    if tp is bool:
        return parse_bool(text)
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is Path:
        if not text:
            raise ValueError(text)
        return Path(text)
    raise ValueError(f"{type_name(tp)} cannot be given as text")


def _a(name: str) -> str:
    if name == "any value":
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def _describe(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{type(value).__name__} {shown}"
