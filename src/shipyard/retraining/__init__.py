"""Closed-loop retraining: from the prediction log and feedback labels to a gated, canaried new version.

* ``spec``     the ``retraining:`` block of a ``models:`` entry (``RetrainSpec``)
* ``dataset``  the run's dataset: predictions joined with labels, checked, split, written as Parquet
* ``store``    runs in the registry database: states, one in flight per model, one per trigger
* ``runner``   a run from queued to promoted, rejected or failed (training in its own process)
* ``service``  the server's scheduler: cron schedules and alert incidents, under a lease
"""

from __future__ import annotations

from shipyard.retraining.spec import RetrainSpec
from shipyard.retraining.store import FINAL, STATES, Run, RunStore

__all__ = ["FINAL", "STATES", "RetrainSpec", "Run", "RunStore"]
