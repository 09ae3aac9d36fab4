"""Pruning: fewer weights for PyTorch models, fewer trees for tree ensembles.

PyTorch (``torch.nn.utils.prune``'s mask computations, applied to the weights
in place and made permanent):

* ``magnitude:F`` zeroes the fraction F of each weight matrix with the smallest
  absolute values (L1 unstructured);
* ``structured:F`` zeroes the fraction F of output neurons / channels with the
  smallest L2 norm in every layer but the output layer, with their biases, so a
  pruned neuron really is silent.

The ONNX file keeps the dense layout, so its size on disk does not shrink; the
zeros compress, which the bundle (a zip) and the ``compressed`` size show.

Tree ensembles (scikit-learn forests and gradient boosting, XGBoost, LightGBM):
``trees:K`` keeps the first K trees (boosting rounds). ``trees`` alone picks K
from the *accuracy curve*: the check rows scored with K = 1, 2, 5, 10, 20, 50, ...
trees against the truth (the user's target column, else the full model's own
labels), and the smallest K whose score is within the allowed drop of the full
model's. ``k_grid`` and ``choose_k`` are pure.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput, NotExportable
from shipyard.export.check import accuracy
from shipyard.export.onnx import Source

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "structured", "trees")
_FORESTS = ("RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor")
_BOOSTING = ("GradientBoostingClassifier", "GradientBoostingRegressor")


@dataclass(frozen=True)
class PruneSpec:
    """What ``--prune`` asked for."""

    method: str
    amount: float | None = None
    """magnitude/structured: the fraction of weights or neurons to zero."""
    trees: int | None = None
    """trees: how many to keep; None = choose from the accuracy curve."""

    @property
    def label(self) -> str:
        if self.method == "trees":
            return f"trees:{self.trees}" if self.trees else "trees:auto"
        return f"{self.method}:{self.amount:g}"


def parse_prune(text: str) -> PruneSpec:
    """``magnitude:0.5``, ``structured:0.3``, ``trees:20`` or ``trees`` (choose K from the curve)."""
    method, _, arg = text.strip().partition(":")
    if method not in METHODS:
        raise InvalidInput(
            f"--prune '{text}': use magnitude:FRACTION, structured:FRACTION, trees:K or trees", field="prune"
        )
    if method == "trees":
        if arg in ("", "auto"):
            return PruneSpec("trees")
        if not arg.isdigit() or int(arg) < 1:
            raise InvalidInput(f"--prune '{text}': K must be a whole number >= 1", field="prune")
        return PruneSpec("trees", trees=int(arg))
    try:
        amount = float(arg or "0.5")
    except ValueError:
        raise InvalidInput(f"--prune '{text}': the fraction must be a number", field="prune") from None
    if not 0.0 < amount < 1.0:
        raise InvalidInput(f"--prune '{text}': the fraction must be between 0 and 1", field="prune")
    return PruneSpec(method, amount=amount)


# -- PyTorch ---------------------------------------------------------------------------


def prune_torch(model: Any, spec: PruneSpec) -> float:
    """Zero weights of ``model`` (a torch ExportedProgram or ScriptModule) in place.

    Returns:
        The fraction of the pruned weight matrices that is now zero.
    """
    torch = require("torch", "torch")
    tp = require("torch.nn.utils.prune", "torch", "torch")
    if spec.method not in ("magnitude", "structured") or spec.amount is None:
        raise NotExportable(f"--prune {spec.label} is for tree ensembles; PyTorch models take magnitude or structured")
    params: dict[str, Any] = (
        dict(model.state_dict) if isinstance(model, torch.export.ExportedProgram) else dict(model.named_parameters())
    )
    weights = [n for n, t in params.items() if n.endswith("weight") and t.ndim >= 2]
    if not weights:
        raise NotExportable("the model has no weight matrices to prune")
    if spec.method == "structured":
        weights = weights[:-1]  # silencing output units would delete classes, not redundancy
        if not weights:
            raise NotExportable("structured pruning needs a hidden layer: the model has only its output layer")
    zeros = total = 0
    with torch.no_grad():
        for name in weights:
            w = params[name]
            ones = torch.ones_like(w)
            if spec.method == "magnitude":
                mask = tp.L1Unstructured(amount=spec.amount).compute_mask(w, default_mask=ones)
            else:
                mask = tp.LnStructured(amount=spec.amount, n=2, dim=0).compute_mask(w, default_mask=ones)
                bias = params.get(name[: -len("weight")] + "bias")
                if bias is not None:
                    bias.mul_(mask.reshape(mask.shape[0], -1).amax(dim=1))
            w.mul_(mask)
            zeros += int((w == 0).sum())
            total += w.numel()
    logger.info("pruned %s: %.1f%% of %d weights are zero", spec.label, 100.0 * zeros / max(total, 1), total)
    return zeros / max(total, 1)


# -- tree ensembles ----------------------------------------------------------------------


def tree_count(source: Source, model: Any = None) -> int:
    """How many trees (boosting rounds) the ensemble has."""
    obj = source.model if model is None else model
    if source.flavor == "xgboost":
        booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
        return int(booster.num_boosted_rounds())
    if source.flavor == "lightgbm":
        return int(obj.current_iteration())
    if source.flavor == "sklearn":
        return len(_final(obj).estimators_)
    raise NotExportable(f"--prune trees is for tree ensembles; this is a {source.flavor} model")


def truncate(source: Source, k: int) -> Any:
    """A copy of the ensemble that keeps its first ``k`` trees; the source is left untouched."""
    n = tree_count(source)
    if not 1 <= k <= n:
        raise InvalidInput(f"--prune trees:{k}: the model has {n} trees", field="prune")
    obj = source.model
    if source.flavor == "xgboost":
        xgb = require("xgboost", "xgboost")
        booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
        raw = booster[:k].save_raw("ubj")
        out = type(obj)() if isinstance(obj, xgb.XGBModel) else xgb.Booster()
        out.load_model(bytearray(raw))
        return out
    if source.flavor == "lightgbm":
        lgb = require("lightgbm", "lightgbm")
        return lgb.Booster(model_str=obj.model_to_string(num_iteration=k))
    final = _final(obj)
    kind = type(final).__name__
    if kind not in _FORESTS + _BOOSTING:
        raise NotExportable(
            f"--prune trees works on {', '.join(_FORESTS + _BOOSTING)}, XGBoost and LightGBM; this is {kind}"
        )
    cut = copy.copy(final)  # shallow: the kept trees are shared, read-only
    cut.estimators_ = final.estimators_[:k]
    cut.n_estimators = k
    if kind in _BOOSTING:
        cut.n_estimators_ = k
        if hasattr(final, "train_score_"):
            cut.train_score_ = final.train_score_[:k]
    if obj is final:
        return cut
    pipe = copy.copy(obj)
    pipe.steps = [*obj.steps[:-1], (obj.steps[-1][0], cut)]
    return pipe


def _final(model: Any) -> Any:
    return model.steps[-1][1] if hasattr(model, "steps") else model


def k_grid(n: int) -> list[int]:
    """Tree counts to score: 1, 2, 5, 10, 20, 50, 100, ... below ``n``, and ``n`` itself."""
    if n < 1:
        return []
    ks: list[int] = []
    step = 1
    while step < n:
        for m in (1, 2, 5):
            if step * m < n:
                ks.append(step * m)
        step *= 10
    return sorted(set(ks)) + [n]


def choose_k(curve: Sequence[tuple[int, float]], max_drop: float) -> int:
    """The smallest K whose score is at most ``max_drop`` below the full ensemble's.

    Args:
        curve: (K, score) pairs; the largest K is the full ensemble.
        max_drop: how much score may be given up (0.01 = one point of accuracy).
    """
    if not curve:
        raise InvalidInput("an empty accuracy curve", field="prune")
    ordered = sorted(curve)
    full = ordered[-1][1]
    for k, score in ordered:
        if score >= full - max_drop - 1e-12:
            return k
    return ordered[-1][0]  # pragma: no cover - the full model always qualifies


def accuracy_curve(
    source: Source,
    predict: Callable[[Any], np.ndarray[Any, Any]],
    truth: np.ndarray[Any, Any],
    ks: Sequence[int],
) -> list[tuple[int, float]]:
    """Score the first K trees for each K.

    Args:
        source: the ensemble.
        predict: labels of a framework model on the check rows.
        truth: what the labels should be (target column, or the full model's labels).
        ks: tree counts to try.
    """
    return [(k, accuracy(np.asarray(predict(truncate(source, k))), truth)) for k in ks]
