"""A version's reference profile: what its inputs and predictions looked like when it was registered.

Registration profiles the training data when it fits the signature (its label and
other extra columns are left out), else the sample: per-feature bins, category
counts, null rates, ranges, and the model's predictions on them
(``monitoring.drift.profile``); above ``PROFILE_ROWS`` rows, a seeded random
choice of that many is profiled. The profile is
written as ``profile.json`` into the version folder before it is hashed, so the
version's digest covers it and nobody can change a version's reference after the
fact. Versions are immutable: a new reference makes a new version
(``Registry.reprofile``, ``shipyard profile``).

Fewer than ``MIN_ROWS`` valid rows make no profile: a reference that small would
say nothing about drift, and the server then leaves the version unmonitored
(it logs so once; ``shipyard profile REF`` says so too).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.registry import checkset
from shipyard.signature import Signature, sample_to_arrays

if TYPE_CHECKING:
    from shipyard.monitoring.drift.profile import Profile
    from shipyard.runtime.base import Runtime

logger = logging.getLogger(__name__)

__all__ = ["MIN_ROWS", "PROFILE", "PROFILE_ROWS", "build", "read", "reference_rows", "write"]

PROFILE = "profile.json"
MIN_ROWS = 50
"""Fewest valid rows a reference profile is made from."""
PROFILE_ROWS = 100_000
"""Rows profiled at most (a seeded random choice above it): quantile bins are as good, and
the model predicts on every profiled row."""
_PREDICT_CHUNK = 10_000
_SEED = 0
_FORMAT = 1

Arrays = dict[str, np.ndarray[Any, Any]]


def reference_rows(signature: Signature, candidates: list[tuple[str, Any]]) -> tuple[Arrays, str] | None:
    """The first candidate ``(source, data)`` that gives at least ``MIN_ROWS`` rows valid for ``signature``.

    Columns the signature does not take (a training set's label) are left out;
    a candidate that does not fit is skipped with a log line naming why.
    """
    wanted = {s.name for s in signature.inputs}
    for source, data in candidates:
        if data is None:
            continue
        try:
            arrays, _ = sample_to_arrays(data)
            arrays = checkset.named(signature, arrays)
            if set(arrays) - wanted and wanted <= set(arrays):
                arrays = {k: v for k, v in arrays.items() if k in wanted}
            valid = signature.validate(arrays)
        except (InvalidInput, TypeError, ValueError) as exc:
            logger.info("no reference profile from the %s: %s", source.replace("_", " "), exc)
            continue
        rows = checkset.rows_of(valid)
        if rows >= MIN_ROWS:
            return valid, source
        logger.info("no reference profile from the %s: %d rows, fewer than %d", source.replace("_", " "), rows,
                    MIN_ROWS)
    return None


def build(runtime: Runtime, inputs: Arrays, source: str) -> dict[str, Any]:
    """The profile document of ``inputs`` (up to ``PROFILE_ROWS``) and ``runtime``'s predictions on them."""
    from shipyard.monitoring.drift.profile import profile_of

    rows = checkset.rows_of(inputs)
    if rows > PROFILE_ROWS:
        keep = np.sort(np.random.default_rng(_SEED).choice(rows, PROFILE_ROWS, replace=False))
        inputs = {k: v[keep] for k, v in inputs.items()}
    profiled = checkset.rows_of(inputs)
    parts = [runtime.predict({k: v[i:i + _PREDICT_CHUNK] for k, v in inputs.items()})
             for i in range(0, profiled, _PREDICT_CHUNK)]
    outputs = {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
    profile = profile_of(inputs, outputs, seed=_SEED)
    return {"format": _FORMAT, "source": source, "rows": rows, "profiled_rows": profiled,
            "profile": profile.to_dict()}


def write(folder: Path, document: dict[str, Any]) -> None:
    """Write the profile document into a version folder (before it is hashed); sorted keys, so it is stable."""
    (folder / PROFILE).write_text(json.dumps(document, sort_keys=True, allow_nan=False))


def read(folder: Path) -> tuple[Profile, dict[str, Any]] | None:
    """The profile in a version folder and its provenance (source, rows), or None without one."""
    from shipyard.monitoring.drift.profile import Profile

    path = folder / PROFILE
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    about = {k: v for k, v in document.items() if k != "profile"}
    return Profile.from_dict(document["profile"]), about
