"""Loading settings in layers: defaults < shipyard.yaml < ``SHIPYARD_*`` < explicit values, with key-path errors."""

from __future__ import annotations

import functools
import os
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import msgspec
import yaml

from shipyard.config._sections import (
    _SERVICE_LINK,
    CONFIG_VARIABLE,
    ENV_PREFIX,
    OTHER_VARIABLES,
    logger,
)
from shipyard.config._settings import Settings, setting_names
from shipyard.errors import ConfigError, InvalidOption, UnknownOption
from shipyard.options import check_names, nearest, parse_bool

_warned: set[str] = set()
"""Unknown variables already warned about (once per process)."""

# -- loading ---------------------------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _config_class(tp: Any) -> type | None:
    """The dataclass ``tp`` is (or ``X | None`` wraps), else None."""
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        tp = members[0] if len(members) == 1 else None
    return tp if isinstance(tp, type) and is_dataclass(tp) else None


def _item_class(tp: Any) -> type | None:
    """The dataclass of the items of ``tuple[X, ...]``, else None."""
    if get_origin(tp) is tuple:
        return _config_class(get_args(tp)[0])
    return None


def _dotted(keys: tuple[str | int, ...]) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path} is not valid YAML: {problem}{where}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {_kind(content)}")
    return content


def _check_keys(data: Any, cls: type, keys: tuple[str | int, ...], *, owner: str) -> None:
    """Refuse a key that is no field of ``cls`` (recursively), naming the nearest valid key path."""
    if not isinstance(data, dict):
        return  # a wrong type: the conversion names it
    hints = _hints(cls)
    prefix = _dotted(keys) + "." if keys else ""
    for key, value in data.items():
        if not isinstance(key, str) or key not in hints:
            valid = {k: prefix + k for k in hints}
            raise UnknownOption(prefix + str(key), owner=owner, valid=sorted(valid.values()),
                                suggestion=nearest(str(key), valid), what="key")
        tp = hints[key]
        if (sub := _config_class(tp)) is not None:
            _check_keys(value, sub, (*keys, key), owner=owner)
        elif (item := _item_class(tp)) is not None and isinstance(value, list):
            for i, entry in enumerate(value):
                _check_keys(entry, item, (*keys, key, i), owner=owner)


def _variables(env: Mapping[str, str]) -> Iterator[tuple[str, tuple[str | int, ...], Any]]:
    """(variable, key path, value) of each non-empty ``SHIPYARD_*`` variable that names a setting."""
    for variable, raw in env.items():
        if not variable.startswith(ENV_PREFIX) or raw == "" or variable in OTHER_VARIABLES:
            continue
        found = _env_target(variable)
        if found is None:
            continue  # warned about by _warn_unknown_variables
        keys, tp = found
        yield variable, keys, _from_text(raw, tp)


def _env_target(variable: str) -> tuple[tuple[str | int, ...], Any] | None:
    """The key path and type ``variable`` sets, or None when it names no setting."""
    parts = variable[len(ENV_PREFIX):].lower().split("__")
    cls: type | None = Settings
    tp: Any = None
    keys: list[str | int] = []
    i = 0
    while i < len(parts):
        if cls is None:
            return None
        hints = _hints(cls)
        if parts[i] not in hints:
            return None
        keys.append(parts[i])
        tp = hints[parts[i]]
        cls = _config_class(tp)
        item = _item_class(tp)
        if item is not None and i + 1 < len(parts):
            if not parts[i + 1].isdigit():
                return None
            keys.append(int(parts[i + 1]))
            cls, i = item, i + 1
        i += 1
    return tuple(keys), tp


def _from_text(raw: str, tp: Any) -> Any:
    """Text shaped for ``msgspec.convert`` (non-strict mode reads numbers and true/false from text)."""
    if get_origin(tp) is tuple:
        return [t.strip() for t in raw.split(",") if t.strip()]
    if tp is bool or (get_origin(tp) in (Union, types.UnionType) and bool in get_args(tp)):
        try:
            return parse_bool(raw)  # also yes/no/on/off, as before
        except ValueError:
            return raw  # refused by the conversion, naming the variable
    return raw


def _put(data: dict[str, Any], keys: tuple[str | int, ...], value: Any, variable: str) -> None:
    node: Any = data
    for here, nxt in zip(keys, keys[1:], strict=False):
        fresh: Any = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            assert isinstance(here, int)
            if here > len(node):
                raise ConfigError(f"{variable}: models are numbered from 0 without gaps; there are {len(node)}")
            if here == len(node):
                node.append(fresh)
            if isinstance(node[here], str) and isinstance(nxt, str):
                node[here] = {"ref": node[here]}
            node = node[here]
        else:
            if not isinstance(node.get(here), (dict, list)):
                node[here] = fresh
            node = node[here]
    last = keys[-1]
    if isinstance(node, list):
        assert isinstance(last, int)
        if last > len(node):
            raise ConfigError(f"{variable}: models are numbered from 0 without gaps; there are {len(node)}")
        node[last:last + 1] = [value]
    else:
        node[last] = value


def _normalise_models(data: dict[str, Any]) -> None:
    """``models: [fraud@champion]`` is short for ``models: [{ref: fraud@champion}]``."""
    models = data.get("models")
    if isinstance(models, (list, tuple)):
        data["models"] = [{"ref": m} if isinstance(m, str) else m for m in models]


def _dec_hook(tp: Any, value: Any) -> Any:
    if tp is Path and isinstance(value, str) and value:
        return Path(value)
    raise NotImplementedError


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "array": "a list", "object": "a mapping", "null": "null", "Path": "a path"}
_MSGSPEC_ERROR = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[\.\.\.\]")


def _convert(data: dict[str, Any], origins: Mapping[tuple[str | int, ...], str]) -> Settings:
    try:
        return msgspec.convert(data, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), data, origins) from None
    except NotImplementedError:
        raise ConfigError("a path setting is empty or not text") from None


def _explain(error: str, data: Any, origins: Mapping[tuple[str | int, ...], str]) -> ConfigError:
    """A msgspec error as one line naming the key path (or the variable) and the value at fault."""
    m = _MSGSPEC_ERROR.match(error)
    assert m is not None
    message, path = m["message"], m["path"] or ""
    keys: tuple[str | int, ...] = tuple(
        p.group(1) if p.group(1) is not None else int(p.group(2)) for p in _PATH_PART.finditer(path)
        if p.group(0) != "[...]"
    )
    origin = next((origins[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in origins), "")
    where = origin if origin.startswith(ENV_PREFIX) else _dotted(keys)
    expected = re.match(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`", message)
    if expected:
        value = _value_at(data, keys)
        want = " or ".join(_TYPE_WORDS.get(w.strip(), w.strip()) for w in expected["want"].split("|"))
        shown = repr(value) if isinstance(value, (str, int, float, bool)) else _kind(value)
        message = f"expected {want}, got {shown}"
    else:
        missing = re.match(r"Object missing required field `(?P<key>[^`]+)`", message)
        if missing:
            message = f"the key '{missing['key']}' is missing"
    suffix = f" (in {origin})" if origin and not origin.startswith(ENV_PREFIX) else ""
    text = f"{where}: {message}{suffix}" if where else f"{message}{suffix}"
    return InvalidOption(text, option=where, got=_value_at(data, keys))


def _value_at(data: Any, keys: tuple[str | int, ...]) -> Any:
    for k in keys:
        try:
            data = data[k]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Log each ``SHIPYARD_*`` variable that is no setting (typos such as SHIPYARD_MAX_QEUE), once."""
    variables = {n: ENV_PREFIX + n.upper() for n in setting_names()}
    for key in env:
        if (not key.startswith(ENV_PREFIX) or key in OTHER_VARIABLES or key in _warned
                or _SERVICE_LINK.match(key) or _env_target(key) is not None):
            continue
        _warned.add(key)
        # matched without the prefix, which every name shares
        near = nearest(key[len(ENV_PREFIX):], variables)
        error = UnknownOption(key, owner="shipyard settings", valid=sorted(variables.values()), suggestion=near,
                              what="environment variable")
        logger.warning("%s (it is ignored)", error)


def load(file: str | Path | None, environ: Mapping[str, str] | None, overrides: Mapping[str, Any]) -> Settings:
    """``Settings.load``: defaults < ``file`` (or ``SHIPYARD_CONFIG``) < ``SHIPYARD_*`` < ``overrides``."""
    env = os.environ if environ is None else environ
    given = {k: v for k, v in overrides.items() if v is not None}
    check_names(given, setting_names(), owner="Settings", what="setting")
    _warn_unknown_variables(env)
    data: dict[str, Any] = {}
    origins: dict[tuple[str | int, ...], str] = {}
    path = file if file is not None else (env.get(CONFIG_VARIABLE) or None)
    if path is not None:
        shown = str(path)
        content = _read_file(Path(path))
        _check_keys(content, Settings, (), owner=shown)
        data.update(content)
        origins.update({(k,): shown for k in content})
    for variable, keys, value in _variables(env):
        _put(data, keys, value, variable)
        origins[keys] = variable
    plain = {name: msgspec.to_builtins(value, enc_hook=str) for name, value in given.items()}
    _check_keys(plain, Settings, (), owner="Settings")
    for name, value in plain.items():
        data[name] = value
        origins[(name,)] = ""
    _normalise_models(data)
    return _convert(data, origins)
