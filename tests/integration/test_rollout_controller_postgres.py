"""Two rollout controllers on one PostgreSQL registry: only the lease holder acts, another resumes its step.

The same scenario as the SQLite unit test (``tests/unit/rollout/test_controller.py``), on the
production twin: each replica has its own ``Registry`` and connection pool, and the lease and
the policy writes go through ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.rollout.test_controller import Clock, register_two_versions, two_controllers_share_one_rollout

from shipyard.config import Settings
from shipyard.registry import Registry

pytestmark = pytest.mark.integration


def test_two_controllers_on_postgresql_one_acts_and_the_other_resumes_the_same_step(
        pg_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    settings = Settings(home=tmp_path / "home", registry_url=pg_database_url)
    registry_a = Registry.from_settings(settings)
    try:
        register_two_versions(registry_a)
        two_controllers_share_one_rollout(registry_a, Registry.from_settings(settings), clock)
    finally:
        registry_a.close()
