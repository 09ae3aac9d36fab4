"""A schemathesis check shared by the CLI run (loaded through SCHEMATHESIS_HOOKS) and the Python-API run."""

from __future__ import annotations

import os
import re
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any

import schemathesis

#: Extra folders of this run that no response may name (os.pathsep-separated): the test sets it to
#: its temporary folders (SHIPYARD_HOME among them), which only it knows.
LEAK_PATHS_ENV = "SHIPYARD_TEST_LEAK_PATHS"

LEAKS = re.compile(r"Traceback \(most recent call last\)|File \"|site-packages|"
                   r"(?:/[\w.-]+){2,}\.py\b|/work/|/tmp/|/root/|/home/")


def machine_paths() -> list[str]:
    """Folders of this machine a response must not show: repo root, environment, site-packages, run folders."""
    found = {
        str(Path(__file__).resolve().parents[2]),  # the repository
        sys.prefix, sys.base_prefix, sys.exec_prefix,
        *site.getsitepackages(), site.getusersitepackages(),
        *(sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")),
        *(p for p in os.environ.get(LEAK_PATHS_ENV, "").split(os.pathsep)),
    }
    # a bare "/" or "/usr" would match any URL path; real roots are deeper than that
    return sorted((p.rstrip("/") for p in found if p and p.count("/") >= 2), key=len, reverse=True)


def leak_in(text: str) -> str | None:
    """What in ``text`` shows a traceback or a file path of this machine, if anything."""
    for path in machine_paths():  # read each time: the test sets LEAK_PATHS_ENV after importing this
        if path in text:
            return path
    found = LEAKS.search(text)
    return found.group(0) if found else None


@schemathesis.check
def no_traceback_or_path(ctx: Any, response: Any, case: Any) -> bool | None:
    """Neither body nor headers show a traceback or a server-side file path."""
    where = f"{case.method} {case.formatted_path}"
    text = response.content.decode("utf-8", "replace") if response.content else ""
    if found := leak_in(text):
        raise AssertionError(f"{where} leaks {found!r} in its body")
    for name, values in response.headers.items():
        for value in values if isinstance(values, list) else [values]:
            if found := leak_in(f"{name}: {value}"):
                raise AssertionError(f"{where} leaks {found!r} in its header {name}")
    return None
