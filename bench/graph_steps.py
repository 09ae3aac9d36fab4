"""The Python steps of bench/serve.py's graph rows (a module file: registration stores its source)."""

from __future__ import annotations

from typing import Any

import numpy as np

import shipyard


class Center(shipyard.Step):
    """A pre-processing step: the row as floats, shifted by nothing (the model's answer stays the same)."""

    def process(self, batch: Any) -> Any:
        return {"input": np.asarray(batch["input"], dtype=np.float64) - 0.0}


class Label(shipyard.Step):
    """A post-processing step: the class as a label (a threshold at 1 on a 0/1 class: the same value)."""

    def process(self, batch: Any) -> Any:
        return {"label": (np.asarray(batch["predict"]) >= 1).astype(np.int64)}
