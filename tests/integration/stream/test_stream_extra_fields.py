"""`shipyard stream --extra-fields passthrough` as a real process on the embedded broker: ids ride along.

The policy is broker-independent (it is applied while scoring), so one broker is
enough here; tests/unit/jobs/test_stream_extra_fields.py covers the three policies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from tests.integration.stream.harness_local import LocalHarness

from shipyard.config import Settings
from shipyard.demo import FEATURES
from shipyard.registry import Registry

pytestmark = pytest.mark.integration


def test_stream_flag_copies_each_records_extra_fields_into_its_result(demo_home: Path, tmp_path: Path) -> None:
    broker = LocalHarness(tmp_path / "streams.db")
    rng = np.random.default_rng(3)
    rows = [dict(zip(FEATURES, map(float, r), strict=True)) for r in rng.uniform(1.0, 6.0, (40, 4)).round(2)]
    broker.produce("in", [(f"k{i}", orjson.dumps({"order_id": i, "shop": "north", **r})) for i, r in enumerate(rows)])
    log = tmp_path / "stream.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard", "--home", str(demo_home), "stream", "demo@champion",
             "--source", broker.url("in"), "--sink", broker.url("out"), "--group", "g",
             "--extra-fields", "passthrough"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ),
        )
    try:
        deadline = time.monotonic() + 90
        while len(broker.read_all("out")) < len(rows):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    results = {r["key"]: r for r in (orjson.loads(v) for _, v in broker.read_all("out"))}
    reg = Registry.from_settings(Settings(home=demo_home))
    try:
        model = reg.load("demo@champion")
        want = [int(x) for x in model.predict(rows)]
        model.close()
    finally:
        reg.close()
    assert [results[f"k{i}"]["prediction"] for i in range(len(rows))] == want
    assert [results[f"k{i}"]["passthrough"] for i in range(len(rows))] == [
        {"order_id": i, "shop": "north"} for i in range(len(rows))
    ]
    assert broker.read_all("in.dlq") == []
