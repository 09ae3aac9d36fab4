"""Where a version came from: training-data fingerprint, git commit, package versions."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

_ALWAYS = ("shipyard", "numpy")


def data_fingerprint(data: Any) -> str:
    """A sha256 over the values, column names and dtypes of a training set."""
    h = hashlib.sha256()
    mod = type(data).__module__
    if mod.startswith("pandas") and hasattr(data, "columns"):
        import pandas as pd

        h.update(repr(list(map(str, data.columns))).encode())
        h.update(repr([str(t) for t in data.dtypes]).encode())
        h.update(pd.util.hash_pandas_object(data, index=False).to_numpy().tobytes())
    else:
        arr = np.asarray(data)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        if arr.dtype.kind == "O":
            h.update(repr(arr.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(arr).tobytes())
    return "sha256:" + h.hexdigest()


def git_commit(cwd: Path | None = None) -> dict[str, Any] | None:
    """The current commit and whether the tree has uncommitted changes, if inside a git repo."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of shipyard, NumPy and the runtime's packages, plus Python."""
    out = {"python": platform.python_version()}
    for name in (*_ALWAYS, *names):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
