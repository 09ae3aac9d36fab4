"""What a serving process imports: only what its requests need.

A probe thread runs inside a real ``python -m shipyard serve`` process (the CLI run as
``__main__``, as the command runs it): it waits until a predict over HTTP answers, then
prints that answer and the process's ``sys.modules``. The ONNX path, once its graph is
cached, needs only the graph and the signature: scikit-learn, SciPy and pandas are never
imported. ``import shipyard`` stays cheap too, and neither it nor a scikit-learn or ONNX version
ever imports TensorFlow (only TensorFlow and TFLite versions do).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.demo import FEATURES
from shipyard.registry import Registry
from shipyard.testing import free_port, run_server

pytestmark = pytest.mark.integration

TENSORFLOW = {"tensorflow", "keras", "tf2onnx", "ai_edge_litert"}
"""Only TensorFlow and TFLite versions need these; nothing else may import them (a slow import)."""
NEVER_ON_THE_ONNX_PATH = {"sklearn", "scipy", "pandas", "pyarrow", "skops", "strawberry", "graphql", "alembic",
                          *TENSORFLOW}
"""The model's training stack, and what only other listeners, jobs or migrations use."""
NEVER_ON_IMPORT = NEVER_ON_THE_ONNX_PATH | {"httpx", "grpc", "opentelemetry", "uvicorn", "starlette", "onnxruntime"}

_PROBE = """
import json, os, runpy, sys, threading, time, urllib.request

port, model, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()


def probe():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{model}:predict", data=body,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
                break
        except OSError:
            time.sleep(0.05)
    else:
        answer = None
    print(json.dumps({"answer": answer, "modules": sorted(sys.modules)}), flush=True)
    os._exit(0)


threading.Thread(target=probe, daemon=True).start()
sys.argv = ["shipyard", "serve", model, "--host", "127.0.0.1", "--port", port, *sys.argv[4:]]
runpy.run_module("shipyard", run_name="__main__")
"""


def _serve_and_probe(home: Path, model: str, body: dict[str, object], *args: str) -> tuple[object, set[str]]:
    """Serve ``model`` in a fresh process, predict ``body`` over HTTP; the answer and the top-level modules."""
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(free_port()), model, json.dumps(body), *args],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["answer"], {name.partition(".")[0] for name in report["modules"]}


@pytest.fixture(scope="module")
def array_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogisticRegression, np.ndarray]:
    """A registry holding a LogisticRegression registered from a NumPy sample (no column names)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    home = tmp_path_factory.mktemp("lean") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(model, "lr", sample=X[:5])
    finally:
        reg.close()
    return home, model, X


def test_the_onnx_path_imports_no_training_stack(array_home: tuple[Path, LogisticRegression, np.ndarray]) -> None:
    home, model, X = array_home
    rows = X[:3]
    with run_server(home, ["lr"], args=["--runtime", "onnx", "--workers", "1"]):
        pass  # the first start compiles, checks and caches the graph (that one does import scikit-learn)

    answer, modules = _serve_and_probe(home, "lr", {"instances": rows.tolist()}, "--runtime", "onnx", "--workers", "1")

    assert answer is not None and answer["predictions"] == model.predict(rows).tolist()  # type: ignore[index]
    assert "onnxruntime" in modules
    assert modules.isdisjoint(NEVER_ON_THE_ONNX_PATH), sorted(modules & NEVER_ON_THE_ONNX_PATH)


def test_the_onnx_path_of_a_model_with_column_names_needs_no_pandas(demo_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)  # the session's home stays uncompiled for the other tests
    instance = dict.fromkeys(FEATURES, 1.0)
    with run_server(home, ["demo"], args=["--runtime", "onnx", "--workers", "1"]):
        pass  # compiled and cached

    answer, modules = _serve_and_probe(home, "demo", {"instances": [instance]},
                                       "--runtime", "onnx", "--workers", "1")

    assert answer is not None and len(answer["predictions"]) == 1  # type: ignore[index]
    assert modules.isdisjoint(NEVER_ON_THE_ONNX_PATH), sorted(modules & NEVER_ON_THE_ONNX_PATH)


def test_the_native_path_of_an_array_model_imports_neither_pandas_nor_what_other_listeners_use(
    array_home: tuple[Path, LogisticRegression, np.ndarray],
) -> None:
    home, model, X = array_home
    rows = X[:3]

    answer, modules = _serve_and_probe(home, "lr", {"instances": rows.tolist()}, "--workers", "1")

    assert answer is not None and answer["predictions"] == model.predict(rows).tolist()  # type: ignore[index]
    assert "sklearn" in modules
    unneeded = {"pandas", "pyarrow", "strawberry", "graphql", "alembic", *TENSORFLOW}
    assert modules.isdisjoint(unneeded), sorted(modules & unneeded)


def test_import_shipyard_stays_cheap() -> None:
    proc = subprocess.run([sys.executable, "-c", "import json, sys, shipyard; print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    modules = {name.partition(".")[0] for name in json.loads(proc.stdout)}
    assert modules.isdisjoint(NEVER_ON_IMPORT), sorted(modules & NEVER_ON_IMPORT)
