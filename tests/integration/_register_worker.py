"""One of several processes registering versions of the same model at the same moment.

Usage: python _register_worker.py WORKER COUNT

Reads SHIPYARD_* from the environment like any shipyard process. Trains its
COUNT models first, prints "ready", waits for a line on stdin (the start
signal, sent to every worker at once), then opens the registry (so the schema
creation races too) and registers the models one after another. Prints one
JSON object: {"worker": W, "versions": [[seq, version, digest], ...]}.
"""

from __future__ import annotations

import json
import sys

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.registry import Registry

NAME = "iris"


def regularisation(worker: int, seq: int, count: int) -> float:
    """A distinct C per (worker, seq), so every registered model predicts differently."""
    return 0.05 * (1 + worker * count + seq)


def main() -> None:
    worker, count = int(sys.argv[1]), int(sys.argv[2])
    X, y = load_iris(return_X_y=True, as_frame=True)
    models = [
        LogisticRegression(max_iter=2000, C=regularisation(worker, seq, count)).fit(X, y)
        for seq in range(count)
    ]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("no start signal")
    registry = Registry.from_settings(Settings.from_env())
    try:
        out = []
        for seq, model in enumerate(models):
            mv = registry.register(
                model,
                NAME,
                sample=X.head(5),
                tags={"worker": str(worker), "seq": str(seq)},
                methods=["predict", "predict_proba"],
            )
            out.append([seq, mv.version, mv.digest])
    finally:
        registry.close()
    print(json.dumps({"worker": worker, "versions": out}), flush=True)


if __name__ == "__main__":
    main()
