"""Several OS processes registering the same model name at the same moment.

Every registration must get its own version number, numbers must run 1..N
without gaps, and every version must load the very model that was registered
under it (no version pointing at another process's files, none corrupt).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("_register_worker.py")


def _worker_module() -> ModuleType:
    """The worker script as a module, for its constants (without touching sys.path)."""
    spec = importlib.util.spec_from_file_location("_register_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_worker = _worker_module()
NAME: str = _worker.NAME
regularisation = _worker.regularisation
WORKERS = 4
PER_WORKER = 5


def run_workers(tmp_path: Path, env_settings: dict[str, str]) -> list[dict[str, Any]]:
    """Start WORKERS processes, release them together, return what each registered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(env_settings)
    procs: list[subprocess.Popen[str]] = []
    logs: list[Path] = []
    try:
        for i in range(WORKERS):
            log = tmp_path / f"worker-{i}.stderr"
            logs.append(log)
            with open(log, "w") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER), str(i), str(PER_WORKER)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=env,
                    )
                )
        # barrier: every worker has imported and trained before any starts registering
        for i, p in enumerate(procs):
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line == "ready\n", f"worker {i} did not get ready:\n{logs[i].read_text()}"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for i, p in enumerate(procs):
            out, _ = p.communicate(timeout=240)
            assert p.returncode == 0, f"worker {i} failed ({p.returncode}):\n{logs[i].read_text()}"
            results.append(json.loads(out))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def check_registry(registry: Registry, results: list[dict[str, Any]]) -> None:
    total = WORKERS * PER_WORKER
    claimed = {
        version: (r["worker"], seq, digest) for r in results for seq, version, digest in r["versions"]
    }
    reported = [version for r in results for _, version, _ in r["versions"]]
    assert len(reported) == total
    assert sorted(reported) == list(range(1, total + 1)), "version numbers must be distinct and gap-free"

    stored = registry.versions(NAME)
    assert [mv.version for mv in stored] == list(range(1, total + 1))
    assert len({mv.digest for mv in stored}) == total

    X, y = load_iris(return_X_y=True, as_frame=True)
    for mv in stored:
        worker, seq, digest = claimed[mv.version]
        assert (mv.tags, mv.digest) == ({"worker": str(worker), "seq": str(seq)}, digest), mv.ref
        expected = LogisticRegression(max_iter=2000, C=regularisation(worker, seq, PER_WORKER)).fit(X, y)
        loaded = registry.load(mv)
        try:
            out = loaded.predict(X)
        finally:
            loaded.close()
        np.testing.assert_array_equal(out["predict"].to_numpy(), expected.predict(X), err_msg=mv.ref)
        np.testing.assert_allclose(
            np.stack(out["predict_proba"].to_list()), expected.predict_proba(X), err_msg=mv.ref
        )


def test_concurrent_registrations_on_the_default_sqlite_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    results = run_workers(tmp_path, {"SHIPYARD_HOME": str(home)})

    registry = Registry.from_settings(Settings(home=home))
    try:
        assert registry.store.dialect == "sqlite"
        check_registry(registry, results)
    finally:
        registry.close()


def test_concurrent_registrations_on_postgres(tmp_path: Path, pg_database_url: str) -> None:
    settings = {
        "SHIPYARD_HOME": str(tmp_path / "home"),
        "SHIPYARD_REGISTRY_URL": pg_database_url,
        "SHIPYARD_ARTIFACTS": str(tmp_path / "artifacts"),
    }
    results = run_workers(tmp_path, settings)

    registry = Registry.from_settings(
        Settings(home=tmp_path / "home", registry_url=pg_database_url, artifacts=str(tmp_path / "artifacts"))
    )
    try:
        assert registry.store.dialect == "postgresql"
        check_registry(registry, results)
    finally:
        registry.close()
