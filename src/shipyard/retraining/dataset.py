"""The training set of a run, assembled from what the model served and the labels it got back.

    prediction log (inputs, over ``last``)  ──join (prediction id, row)──  shipyard_feedback (labels)
        -> dedup by prediction id -> leave out: too recent (``label_delay``), unlabelled,
           failing the signature (counted, with the first reasons) -> newest ``holdout_share``
           kept out -> per-class sample -> mixed with the registered holdout (``reference_share``)
        -> train.parquet, holdout.parquet, manifest.json

The manifest holds the window, every count, the sha256 of both Parquet files and the
settings used, so the run can be repeated on the same files (and ``--dry-run`` shows it
without training). Samples are drawn with ``RetrainSpec.seed``.

Only successful, non-shadow predictions are used; a prediction's label is the first one
received for that row (or the first from ``label_source``). Inputs are checked against the
signature of the version the alias points at now: a row the current model would refuse is
no row to train its successor on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from shipyard.errors import InvalidInput
from shipyard.monitoring.predlog import read_predictions
from shipyard.monitoring.tables import feedback_t
from shipyard.retraining.spec import RetrainSpec

if TYPE_CHECKING:
    import pyarrow as pa

    from shipyard.config import Settings
    from shipyard.registry import ModelVersion, Registry
    from shipyard.signature import Signature

__all__ = ["LABEL", "MANIFEST", "Assembly", "assemble", "read_table", "to_arrays"]

logger = logging.getLogger(__name__)

LABEL = "label"
"""The label column's name in the Parquet files (``shipyard_label`` when an input is called ``label``)."""
MANIFEST = "manifest.json"
_READ_LIMIT = 10_000_000  # records read from the prediction log per run
_CHUNK = 500
_REASONS = 5  # signature failures quoted in the manifest


@dataclass(frozen=True)
class Assembly:
    """A run's dataset: where its files are and what the manifest says."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def train_path(self) -> Path:
        return self.folder / "train.parquet"

    @property
    def holdout_path(self) -> Path:
        return self.folder / "holdout.parquet"


def label_column(signature: Signature) -> str:
    return "shipyard_label" if LABEL in signature.input_names else LABEL


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _labels(registry: Registry, model: str, ids: Sequence[str], source: str | None) -> dict[tuple[str, int], Any]:
    """(prediction id, row) -> its label: the first received (from ``source`` when given)."""
    t = feedback_t
    found: dict[tuple[str, int], tuple[float, Any]] = {}
    with registry.database.connect() as conn:
        for i in range(0, len(ids), _CHUNK):
            query = sa.select(t.c.prediction_id, t.c.row, t.c.label, t.c.received_at).where(
                t.c.model == model, t.c.prediction_id.in_(ids[i:i + _CHUNK]), t.c.label.is_not(None))
            if source is not None:
                query = query.where(t.c.source == source)
            for pid, row, label, received in conn.execute(query):
                key = (pid, row)
                if label is not None and (key not in found or received < found[key][0]):
                    found[key] = (received, label)
    return {k: v[1] for k, v in found.items()}


def assemble(registry: Registry, settings: Settings, model: str, spec: RetrainSpec, folder: Path, *,
             now: float, current: ModelVersion) -> Assembly:
    """Assemble the training and holdout sets of ``model`` into ``folder`` and return the manifest.

    Args:
        current: the version the alias points at (its signature checks the rows; its holdout set
            is the reference ``reference_share`` draws from).
        now: the end of the window (epoch seconds).

    Raises:
        InvalidInput: fewer labelled rows than ``min_rows`` (the manifest says where they went).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = now - spec.last
    cutoff = now - spec.label_delay
    records = read_predictions(settings, model, since=start, limit=_READ_LIMIT)
    counts = {"records": len(records), "duplicates": 0, "not_ok": 0, "shadow": 0, "too_recent": 0,
              "rows": 0, "unlabelled": 0, "invalid": 0}
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    for r in records:
        pid = r.get("prediction_id")
        if not pid or pid in seen:
            counts["duplicates"] += 1
            continue
        seen.add(pid)
        if r.get("shadow"):
            counts["shadow"] += 1
        elif r.get("outcome") != "ok" or not r.get("inputs"):
            counts["not_ok"] += 1
        elif _epoch(r["time"]) > cutoff:
            counts["too_recent"] += int(r.get("rows") or 1)
        else:
            kept.append(r)
    labels = _labels(registry, model, [r["prediction_id"] for r in kept], spec.label_source)
    signature = current.signature
    names = list(signature.input_names)
    label_name = label_column(signature)
    columns: dict[str, list[Any]] = {n: [] for n in names}
    ys: list[Any] = []
    times: list[float] = []
    reasons: list[str] = []
    for r in kept:
        rows = int(r.get("rows") or 0)
        counts["rows"] += rows
        inputs = r["inputs"]
        try:
            checked = signature.validate({k: np.asarray(v) for k, v in inputs.items()})
        except (InvalidInput, ValueError, TypeError) as exc:
            counts["invalid"] += rows
            if len(reasons) < _REASONS:
                reasons.append(f"{r['prediction_id']}: {exc}")
            continue
        at = _epoch(r["time"])
        for i in range(rows):
            label = labels.get((r["prediction_id"], i))
            if label is None:
                counts["unlabelled"] += 1
                continue
            for n in names:
                value = checked[n][i]
                columns[n].append(value.tolist() if isinstance(value, np.ndarray) else value.item()
                                  if isinstance(value, np.generic) else value)
            ys.append(label)
            times.append(at)
    labelled = len(ys)
    counts["labelled"] = labelled
    manifest: dict[str, Any] = {
        "model": model, "parent": current.ref, "window": {"start": start, "end": now, "last_seconds": spec.last,
                                                          "label_delay_seconds": spec.label_delay},
        "counts": counts, "signature_failures": reasons, "label": label_name, "features": names,
        "settings": spec.to_dict(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    if labelled < spec.min_rows:
        _write_manifest(folder, manifest)
        raise InvalidInput(f"{model}: {labelled} labelled rows in the last {_span(spec.last)} (min_rows is "
                           f"{spec.min_rows}); of {counts['rows']} predicted rows, {counts['unlabelled']} have no "
                           f"label, {counts['invalid']} fail the signature, {counts['too_recent']} are within "
                           f"label_delay", field="min_rows", expected=f">= {spec.min_rows} labelled rows",
                           got=str(labelled))
    order = np.argsort(np.asarray(times), kind="stable")
    n_holdout = max(1, math.ceil(labelled * spec.holdout_share))
    holdout_idx, train_idx = order[labelled - n_holdout:], order[:labelled - n_holdout]
    rng = np.random.default_rng(spec.seed)
    train_idx = _per_class(train_idx, ys, spec.per_class, rng)
    train_cols = {n: [columns[n][i] for i in train_idx] for n in names}
    train_y = [ys[i] for i in train_idx]
    reference = _reference(registry, current, names, spec, len(train_idx), rng)
    counts["reference"] = 0 if reference is None else len(reference[1])
    if reference is not None:
        for n in names:
            train_cols[n].extend(reference[0][n])
        train_y.extend(reference[1])
    counts["train"], counts["holdout"] = len(train_y), len(holdout_idx)
    train = pa.table({**train_cols, label_name: train_y})
    holdout = pa.table({**{n: [columns[n][i] for i in holdout_idx] for n in names},
                        label_name: [ys[i] for i in holdout_idx]})
    assembly = Assembly(folder, manifest)
    pq.write_table(train, assembly.train_path)
    pq.write_table(holdout, assembly.holdout_path)
    manifest["files"] = {p.name: {"sha256": _sha256(p), "rows": rows}
                         for p, rows in ((assembly.train_path, train.num_rows),
                                         (assembly.holdout_path, holdout.num_rows))}
    manifest["fingerprint"] = "sha256:" + hashlib.sha256(
        (manifest["files"]["train.parquet"]["sha256"] + manifest["files"]["holdout.parquet"]["sha256"]).encode()
    ).hexdigest()
    manifest["classes"] = _class_counts(train_y)
    _write_manifest(folder, manifest)
    return assembly


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _per_class(idx: np.ndarray[Any, Any], ys: Sequence[Any], per_class: int | None,
               rng: np.random.Generator) -> np.ndarray[Any, Any]:
    if per_class is None:
        return idx
    groups: dict[str, list[int]] = {}
    for i in idx:
        groups.setdefault(json.dumps(ys[i], sort_keys=True, default=str), []).append(int(i))
    chosen: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        if len(members) > per_class:
            members = sorted(rng.choice(members, size=per_class, replace=False).tolist())
        chosen.extend(members)
    return np.asarray(sorted(chosen), dtype=np.int64)


def _reference(registry: Registry, current: ModelVersion, names: Sequence[str], spec: RetrainSpec, n_train: int,
               rng: np.random.Generator) -> tuple[dict[str, list[Any]], list[Any]] | None:
    """Rows of the current version's registered holdout set, so they make ``reference_share`` of training."""
    if spec.reference_share <= 0:
        return None
    stored = registry.holdout(current)
    if stored is None:
        logger.warning("%s: reference_share is set but %s was registered without a holdout set; no reference rows",
                       current.name, current.ref)
        return None
    inputs, labels = stored
    wanted = round(spec.reference_share / (1.0 - spec.reference_share) * n_train)
    take = np.sort(rng.choice(len(labels), size=min(wanted, len(labels)), replace=False))
    cols = {n: [_plain(v) for v in np.asarray(inputs[n])[take]] for n in names}
    return cols, [_plain(v) for v in np.asarray(labels)[take]]


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _class_counts(ys: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for y in ys:
        if isinstance(y, str | int | bool):
            key = str(y)
            out[key] = out.get(key, 0) + 1
        else:
            return {}  # a regression target: no classes to count
    return dict(sorted(out.items()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


def read_table(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def to_arrays(table: pa.Table, names: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    """The named columns of ``table`` as arrays (a list column becomes a 2-D or deeper array)."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for n in names:
        values = table.column(n).to_pylist()
        out[n] = np.asarray(values)
    return out
