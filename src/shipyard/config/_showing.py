"""Showing settings: as YAML with secrets masked, and each field's docstring for ``--help``."""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from dataclasses import asdict
from typing import Any

import msgspec
import yaml

from shipyard.config._settings import Settings

# -- showing settings ------------------------------------------------------------------------------------


_SECRET_KEY = re.compile(r"(^|_)(password|passwd|secret|token|key|credentials?)($|_)", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s/]+)(?P<at>@)")
MASK = "***"


def masked(value: Any, key: str = "") -> Any:
    """``value`` (plain data) with secrets replaced by ``***``: values of keys named like password, secret,
    token or key, and the password of URLs (``postgresql://u:***@h/db``)."""
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        if value and _SECRET_KEY.search(key):
            return MASK
        return _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], value)
    return value


def render_yaml(settings: Settings) -> str:
    """The settings as a shipyard.yaml, secrets masked; unset reserved keys are left out."""
    data = msgspec.to_builtins(asdict(settings), enc_hook=str)
    for name in ("graph",):
        if data.get(name) is None:
            data.pop(name, None)
    for m in data.get("models", []):
        for name in ("traffic", "retraining"):
            if m.get(name) is None:
                m.pop(name, None)
    text: str = yaml.safe_dump(masked(data), sort_keys=False, default_flow_style=False)
    return text


@functools.cache
def _docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for stmt, after in zip(body, body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            out[stmt.target.id] = " ".join(after.value.value.split())
    return out


def field_doc(cls: type, name: str) -> str:
    """The one-line docstring of field ``name`` of config class ``cls`` (for ``--help``), or ''."""
    try:
        return _docs(cls).get(name, "")
    except (OSError, TypeError):  # no source (a frozen app): help without it
        return ""
