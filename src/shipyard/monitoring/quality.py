"""Realized metrics: how right the served predictions turned out, once labels came back.

``realized_metrics`` is pure, over arrays of predictions, labels and (optionally)
positive-class scores. What it computes depends on the values:

* **regressor** when every prediction is a float and every label a number: ``mae``, ``rmse``;
* **classifier** otherwise: ``accuracy``, ``precision``, ``recall``, ``f1``, and ``roc_auc``
  when scores exist for every row and both classes are among the labels.
  Binary (the classes seen are at most two and one of them is 1, or True): precision,
  recall and F1 of the positive label 1, ``average = "binary"``. Otherwise the
  unweighted mean over every class seen in predictions or labels (``average = "macro"``;
  a class never predicted has precision 0, as scikit-learn's ``zero_division=0``).
  Labels are compared with predictions as classes: 1, 1.0 and True are one class; a
  label of another type than the prediction is compared as text (``"1"`` names class 1).

Numbers come from ``sklearn.metrics`` when scikit-learn is installed, else from NumPy
(the same definitions; the tests pin them equal).

``quality`` reads the joined rows from the database: the kept predictions
(``shipyard_served``) of one model whose prediction time falls in ``[since, until)``,
each with its first non-late label (the earliest observed, should several sources send
one), grouped by version and arm. Besides the metrics each group reports its coverage
(labelled rows / served rows) and its label delay (seconds from prediction to the
label's observation: median and 90th percentile).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard.monitoring.feedback import same_label
from shipyard.monitoring.tables import feedback_t, served_t
from shipyard.registry.database import Database

__all__ = ["CLASSIFIER_METRICS", "REGRESSOR_METRICS", "quality", "realized_metrics"]

CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSOR_METRICS = ("mae", "rmse")
GROUPS = ("version", "arm")


def _is_float(v: Any) -> bool:
    return isinstance(v, float | np.floating)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _classes(predictions: Sequence[Any], labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, list[Any], int | None]:
    """Predictions and labels as class codes (0, 1, ...; 1 == 1.0 == True, other mismatches compared as text),
    each class's first value, and the code of the class that is 1 (None when no class is)."""
    codes: dict[Any, int] = {}
    reps: list[Any] = []

    def code(value: Any) -> int:
        for i, rep in enumerate(reps):  # few classes: a linear scan keeps same_label's rule exact
            if same_label(rep, value):
                return i
        reps.append(value)
        return len(reps) - 1

    p = np.empty(len(predictions), dtype=np.int64)
    y = np.empty(len(labels), dtype=np.int64)
    for i, v in enumerate(predictions):
        key = (type(v), v)
        p[i] = codes[key] if key in codes else codes.setdefault(key, code(v))
    for i, v in enumerate(labels):
        key = (type(v), v)
        y[i] = codes[key] if key in codes else codes.setdefault(key, code(v))
    # the positive class of a binary problem: the one that is 1 (or True)
    positive = next((i for i, rep in enumerate(reps) if same_label(rep, 1)), None)
    return p, y, reps, positive


def _sklearn() -> Any:
    try:
        from sklearn import metrics
    except ImportError:  # the NumPy definitions below give the same numbers
        return None
    return metrics


def _binary_counts(p: np.ndarray, y: np.ndarray, positive: int) -> tuple[int, int, int]:
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    return tp, fp, fn


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return precision, recall, f1


def _roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of binary ``y`` (0/1) against ``score``: the Mann-Whitney U, ties counted half."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n1 = int(y.sum())
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def realized_metrics(predictions: Sequence[Any] | np.ndarray, labels: Sequence[Any] | np.ndarray,
                     scores: Sequence[float | None] | np.ndarray | None = None, *,
                     use_sklearn: bool | None = None) -> dict[str, Any]:
    """The realized metrics of ``predictions`` against ``labels`` (one per row).

    Args:
        scores: each row's positive-class probability (None entries: no ROC AUC).
        use_sklearn: force scikit-learn (True) or NumPy (False); None: scikit-learn when installed.

    Returns:
        ``{"kind": "classifier" | "regressor", "n": rows, "metrics": {name: value}}``; a classifier's
        result also says ``average`` (``binary`` or ``macro``) and, when binary, ``positive_label``.
        No rows: ``kind`` None and no metrics.
    """
    pred = list(np.asarray(predictions, dtype=object).tolist()) if isinstance(predictions, np.ndarray) \
        else list(predictions)
    lab = list(np.asarray(labels, dtype=object).tolist()) if isinstance(labels, np.ndarray) else list(labels)
    if len(pred) != len(lab):
        raise ValueError(f"{len(pred)} predictions and {len(lab)} labels")
    n = len(pred)
    if n == 0:
        return {"kind": None, "n": 0, "metrics": {}}
    sk = _sklearn() if use_sklearn is None else (_sklearn() if use_sklearn else None)
    if use_sklearn and sk is None:
        raise ImportError("scikit-learn is not installed")
    if all(_is_float(v) for v in pred) and all(_is_number(v) for v in lab):
        p, y = np.asarray(pred, dtype=float), np.asarray(lab, dtype=float)
        if sk is not None:
            mae = float(sk.mean_absolute_error(y, p))
            rmse = float(math.sqrt(sk.mean_squared_error(y, p)))
        else:
            mae = float(np.mean(np.abs(y - p)))
            rmse = float(math.sqrt(np.mean((y - p) ** 2)))
        return {"kind": "regressor", "n": n, "metrics": {"mae": mae, "rmse": rmse}}

    pc, yc, reps, positive = _classes(pred, lab)
    binary = len(reps) <= 2 and positive is not None
    out: dict[str, Any] = {"kind": "classifier", "n": n, "average": "binary" if binary else "macro"}
    metrics: dict[str, float] = {}
    if sk is not None:
        metrics["accuracy"] = float(sk.accuracy_score(yc, pc))
        kw: dict[str, Any] = ({"average": "binary", "pos_label": positive} if binary
                              else {"average": "macro", "labels": list(range(len(reps)))})
        metrics["precision"] = float(sk.precision_score(yc, pc, zero_division=0, **kw))
        metrics["recall"] = float(sk.recall_score(yc, pc, zero_division=0, **kw))
        metrics["f1"] = float(sk.f1_score(yc, pc, zero_division=0, **kw))
    else:
        metrics["accuracy"] = float(np.mean(pc == yc))
        if binary:
            assert positive is not None
            metrics["precision"], metrics["recall"], metrics["f1"] = _prf(*_binary_counts(pc, yc, positive))
        else:
            per = np.array([_prf(*_binary_counts(pc, yc, c)) for c in range(len(reps))])
            metrics["precision"], metrics["recall"], metrics["f1"] = (float(v) for v in per.mean(axis=0))
    if binary:
        assert positive is not None
        out["positive_label"] = reps[positive]
        if scores is not None:
            s = [v for v in (scores.tolist() if isinstance(scores, np.ndarray) else scores)]
            truth = (yc == positive).astype(int)
            if len(s) == n and all(v is not None and math.isfinite(v) for v in s) and 0 < truth.sum() < n:
                score = np.asarray(s, dtype=float)
                metrics["roc_auc"] = float(sk.roc_auc_score(truth, score)) if sk is not None \
                    else _roc_auc(truth, score)
    out["metrics"] = metrics
    return out


# -- over the database ---------------------------------------------------------------------------


def _delays(delays: np.ndarray) -> dict[str, float | None]:
    if len(delays) == 0:
        return {"median": None, "p90": None}
    return {"median": float(np.median(delays)), "p90": float(np.percentile(delays, 90))}


def quality(
    database: Database,
    model: str,
    *,
    version: int | None = None,
    arm: str | None = None,
    since: float | None = None,
    until: float | None = None,
    by: Sequence[str] = GROUPS,
    flush: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The realized metrics of ``model``'s predictions made in ``[since, until)``, grouped ``by`` version and arm.

    Args:
        version, arm: only this version / arm.
        since, until: prediction times (epoch seconds); None: unbounded.
        by: the grouping columns, a subset of ``("version", "arm")``.
        flush: called first (the server writes its buffered predictions so they count as served).

    Returns:
        ``{"model", "since", "until", "groups": [{"version", "arm", "served", "labelled", "coverage",
        "label_delay_seconds": {"median", "p90"}, "kind", "n", "metrics", ["average", "positive_label"]}]}``,
        groups sorted; a grouping column left out of ``by`` is absent from the groups.
    """
    if not set(by) <= set(GROUPS):
        raise ValueError(f"by must be a subset of {GROUPS}, got {by!r}")
    if flush is not None:
        flush()
    s, f = served_t, feedback_t
    where: list[Any] = [s.c.model == model]
    if version is not None:
        where.append(s.c.version == version)
    if arm is not None:
        where.append(s.c.arm == arm)
    if since is not None:
        where.append(s.c.at >= since)
    if until is not None:
        where.append(s.c.at < until)
    keys = [s.c[k] for k in by]
    with database.connect() as conn:
        served = {tuple(r[:-1]): int(r[-1]) for r in conn.execute(
            sa.select(*keys, sa.func.count()).where(*where).group_by(*keys))}
        joined = conn.execute(
            sa.select(*keys, s.c.prediction_id, s.c.row, s.c.prediction, s.c.score, s.c.at, f.c.label, f.c.at,
                      f.c.source)
            .join_from(s, f, sa.and_(f.c.prediction_id == s.c.prediction_id, f.c.row == s.c.row))
            .where(*where, f.c.late == sa.false())
        ).all()
    # one label per row: the earliest observed (then by source), whatever other sources said
    first: dict[tuple[str, int], tuple[Any, ...]] = {}
    k = len(keys)
    for row in joined:
        r = tuple(row)
        label = r[k + 5]
        if label is None:  # a reward without a label
            continue
        key = (r[k], r[k + 1])
        if key not in first or (r[k + 6], r[k + 7]) < (first[key][k + 6], first[key][k + 7]):
            first[key] = r
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {g: [] for g in served}
    for r in first.values():
        groups.setdefault(tuple(r[:k]), []).append(r)
    out = []
    for g in sorted(groups, key=lambda t: tuple(str(x) for x in t)):
        rows = groups[g]
        n_served = served.get(g, 0)
        predictions = [r[k + 2] for r in rows]
        labels = [r[k + 5] for r in rows]
        scores = [r[k + 3] for r in rows]
        delays = np.maximum(np.asarray([r[k + 6] - r[k + 4] for r in rows], dtype=float), 0.0)
        ok = [i for i, p in enumerate(predictions) if p is not None]  # a NaN prediction joins no metric
        realized = realized_metrics([predictions[i] for i in ok], [labels[i] for i in ok], [scores[i] for i in ok])
        out.append({
            **dict(zip(by, g, strict=True)),
            "served": n_served,
            "labelled": len(rows),
            "coverage": len(rows) / n_served if n_served else None,
            "label_delay_seconds": _delays(delays),
            **realized,
        })
    return {"model": model, "since": since, "until": until, "groups": out}
