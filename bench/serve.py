"""Serving throughput, latency, cold start and memory against the thinnest correct endpoint, in one run.

    .venv/bin/python bench/serve.py [--duration 3] [--rounds 3] [--concurrency 1,8,32,64]
                                    [--models lr,rf] [--configs default|all|b,c,...] [--json PATH] [--check]

Everything runs on 127.0.0.1, each server in its own process group in a throwaway SHIPYARD_HOME,
stopped at the end even on Ctrl-C or an error. Needs `wrk` (Debian package `wrk`), which loads
each point with one thread for --duration seconds (`--timeout 10s`).

Two models, both registered from NumPy samples (an array signature, 20 FP64 features), trained on
``make_classification(n_samples=2000, n_features=20, random_state=0)``:

  lr  LogisticRegression(max_iter=1000): a predict costs ~0.1 ms, the server's own work dominates
  rf  RandomForestClassifier(n_estimators=100, random_state=0): a few ms, the model dominates

Every request is the same single row, ``{"instances": [[20 floats]]}``, to shipyard's
``/v1/models/M:predict`` and to the bare endpoint's ``/predict``. The configs (letters are stable;
the README refers to them):

  default set (--configs default):
  (a) raw predict          the model's predict called in this process, one NumPy row at a time
  (b) bare endpoint        bench/bare_app.py, one uvicorn process: orjson, numpy.asarray, predict,
                           orjson (the thinnest correct endpoint; every "vs (b)" ratio is against it)
  (o) bare, 2 workers      the same app under ``uvicorn --workers 2``
  (c) shipyard defaults    ``shipyard serve M --workers 1``
  (g) shipyard, 2 workers  ``--workers 2``
  (f) onnx+batching        ``--runtime onnx --batching --workers 1``
  (p) onnx+batching, 2 w.  ``--runtime onnx --batching --workers 2``

  also with --configs all (or by letter), each ``--workers 1``:
  (d) batching             ``--batching``
  (e) onnx                 ``--runtime onnx``
  (h) metrics off          SHIPYARD_MONITORING__METRICS__ENABLED=false
  (i) metrics + pred. log  SHIPYARD_MONITORING__PREDICTION_LOG__ENABLED=true (embedded SQLite)
  (j) 50/50 split          a traffic policy over versions 1 and 2 (the same model twice)
  (k) sticky 50/50 split   as (j), sticky by a header wrk sends
  (l) drift off            SHIPYARD_MONITORING__DRIFT__ENABLED=false (both models have a profile)
  (m) feedback on          SHIPYARD_MONITORING__FEEDBACK__ENABLED=true
  (n) API keys on          SHIPYARD_SECURITY__AUTH__ENABLED=true, every request carries a key

Each round starts every chosen config once and runs every concurrency level against it; every
other round goes through the configs in reverse order (a server started right after another one
stopped runs slower, and a fixed order would charge that to the same configs every time). Per
point it prints the medians over rounds of req/s, p50 and p99, the non-2xx count (summed), the
ratio to (b) at the same concurrency, for 2-worker configs the ratio to the matching 1-worker
config ((o)/(b), (g)/(c), (p)/(f)) and to (o), and the CPU share of wrk and of the server's
process tree over the run, and what every other process on the machine took meanwhile (from
/proc/stat; 100% = one core: other engineers' benchmarks show there). Per config: cold start
(process start to first good answer; before its first ONNX config, each model is compiled by one
start that is not counted, so every ONNX start measured loads the cached graph, as a deployment's
would) and idle RSS (0.5 s after the first answer): the largest and the mean process of the
server's tree, and the whole tree. Then one line per config on how throughput follows concurrency
(each level's req/s over the level before's). /proc/loadavg is printed before and after each
model's block, and `nproc` once.

--graphs adds issue 18's graph rows for each model (``--configs none --graphs`` runs only them), each
round on two ``shipyard serve --workers 1`` servers, every point with wrk as above:

  (G1) graph of one model  ``M-graph`` (a graph whose one step is M:1) beside M itself on one server:
                           req/s of the graph over the model's at each concurrency (target >= 0.95 at c=32)
  (G3) three-step graph    ``M-pipe``: a Python pre-processing step (``center``), M:1, a Python
                           post-processing step (``label``; bench/graph_steps.py), beside each of the three
                           served alone on one server: the graph's time per request (1/req/s) over the sum
                           of the steps' (target <= 1.10)

--json PATH writes every raw point and start (and the check results) for tables made elsewhere.
--check prints, after the tables, issue 17's targets with PASS/FAIL/n/a and the measured value; it
is a report and never changes the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: servers started by start() and not yet stopped; main() stops whatever is left on the way out
_LIVE: set[subprocess.Popen[bytes]] = set()


@dataclass
class Point:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    """Non-2xx/3xx responses."""
    socket_errors: int = 0
    """Connect, read, write errors and timeouts, as wrk counts them."""
    wrk_cpu: float = float("nan")
    """wrk's own CPU time over the run's wall time (1.0 = one core)."""
    server_cpu: float = float("nan")
    """CPU time of the server's process tree over the run's wall time (1.0 = one core)."""
    other_cpu: float = float("nan")
    """CPU time of every other process on the machine over the run's wall time (1.0 = one core)."""


@dataclass
class Start:
    cold_s: float
    rss_mb: list[float]
    """Idle RSS of each process of the server's tree."""
    answer_ok: bool = True


@dataclass
class Result:
    points: dict[int, list[Point]] = field(default_factory=dict)
    starts: list[Start] = field(default_factory=list)


# ---------------------------------------------------------------- processes, /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def tree_rss(pid: int) -> list[float]:
    """RSS (MB) of each live process of ``pid``'s tree."""
    sizes = []
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return sizes


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """RSS of a process and its descendants (MB) and how many processes that is."""
    sizes = tree_rss(pid)
    return sum(sizes), len(sizes)


def tree_cpu_s(pid: int) -> float:
    """User plus system CPU seconds spent so far by the live processes of ``pid``'s tree."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


# ---------------------------------------------------------------- wrk


def lua_string(text: str) -> str:
    """``text`` as a Lua long string whose closing bracket cannot occur in it (a nested list ends ``]]``)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def parse_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(url: str, body: bytes, concurrency: int, duration: float, tmp: Path,
        headers: dict[str, str] | None = None, server_pid: int | None = None) -> Point:
    """One wrk run (one thread, ``duration`` whole seconds); ``server_pid``'s tree CPU is measured over it."""
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {lua_string(body.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        # spaces inside the index: ``t[[[k]]]`` would read as a call of t with a long string
        + "".join(f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}\n" for k, v in (headers or {}).items())
    )
    seconds = max(1, round(duration))
    server_before = tree_cpu_s(server_pid) if server_pid else 0.0
    busy_before = machine_busy_s()
    # only wrk is waited for in this window, so the children's rusage delta is wrk's own CPU
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "--timeout", "10s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = (machine_busy_s() - busy_before) / wall
    server_cpu = (tree_cpu_s(server_pid) - server_before) / wall if server_pid else float("nan")
    wrk_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    # this script sleeps in wait() meanwhile; the rest is other processes (never below 0: tick rounding)
    other_cpu = max(0.0, busy - wrk_cpu - (server_cpu if server_pid else 0.0))
    m_rps, m_p50, m_p99 = (re.search(pattern, out) for pattern in
                           (r"Requests/sec:\s+([\d.]+)", r"\s50%\s+(\S+)", r"\s99%\s+(\S+)"))
    if m_rps is None or m_p50 is None or m_p99 is None:
        raise RuntimeError(f"wrk gave no figures for {url} at c={concurrency}:\n{out}")
    rps, p50, p99 = float(m_rps.group(1)), parse_ms(m_p50.group(1)), parse_ms(m_p99.group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Point(rps, p50, p99, int(errors.group(1)) if errors else 0,
                 sum(int(g) for g in sock.groups()) if sock else 0, wrk_cpu, server_cpu, other_cpu)


# ---------------------------------------------------------------- servers


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    return post_json(url, body, headers)[0]


def post_json(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:  # an error answer is an answer: its status and body
        return int(exc.code), orjson.loads(exc.read() or b"null")


def start(cmd: list[str], env: dict[str, str], url: str, body: bytes,
          headers: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server in its own process group; return it and its cold start (process start to first 200)."""
    t0 = time.perf_counter()
    # its own session: a Ctrl-C in the terminal reaches this script, which then stops the server cleanly
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            start_new_session=True)
    _LIVE.add(proc)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {' '.join(cmd)}")
            try:
                if post(url, body, headers) == 200:
                    return proc, time.perf_counter() - t0
            except (OSError, ValueError):
                time.sleep(0.01)
        raise RuntimeError(f"server not ready in 120 s: {' '.join(cmd)}")
    except BaseException:
        stop(proc, grace=2)
        raise


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM to the server's process group (it drains), SIGKILL to whatever is left of it after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _LIVE.discard(proc)


def stop_all() -> None:
    for proc in list(_LIVE):
        stop(proc, grace=5)


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], url: str, body: bytes,
            headers: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A started server and its cold start, stopped on the way out."""
    proc, cold = start(cmd, env, url, body, headers)
    try:
        yield proc, cold
    finally:
        stop(proc)


# ---------------------------------------------------------------- models


def training_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    return X, y


def register_models(home: Path, *, second_versions: bool = True) -> dict[str, tuple[Any, np.ndarray]]:
    """Register lr and rf from NumPy samples (array signature); return each model and one row (shape 1x20).

    Both get a reference profile from their training data, so the defaults monitor drift and (l) shows
    what that costs; ``second_versions`` registers an identical version 2 for (j) and (k) to route over.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from shipyard.config import Settings
    from shipyard.registry import Registry

    X, y = training_data()
    models = {
        "lr": LogisticRegression(max_iter=1000).fit(X, y),
        "rf": RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y),
    }
    reg = Registry.from_settings(Settings(home=home))
    try:
        for name, model in models.items():
            reg.register(model, name, sample=X[:5], training_data=X)
            if second_versions:
                reg.register(model, name, sample=X[:5], training_data=X, if_identical="new")
    finally:
        reg.close()
    return {name: (model, X[:1]) for name, model in models.items()}


def request_body(row: np.ndarray) -> bytes:
    """The single-row request both servers take: ``{"instances": [[20 floats]]}``."""
    return orjson.dumps({"instances": row.tolist()})


def bench_key(home: Path) -> dict[str, str]:
    """The header of a fresh API key with the predict scope, for (n)."""
    from shipyard.config import Settings
    from shipyard.registry import Registry
    from shipyard.security.keys import KeyStore

    reg = Registry.from_settings(Settings(home=home))
    try:
        _, token = KeyStore(reg.database).create("bench", ["predict"])
    finally:
        reg.close()
    return {"Authorization": f"Bearer {token}"}


def raw_point(model: Any, row: Any, duration: float) -> Point:
    lat: list[float] = []
    t_start = time.perf_counter()
    end = t_start + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        model.predict(row)
        lat.append(time.perf_counter() - t0)
    arr = np.array(lat) * 1e3
    return Point(len(lat) / (time.perf_counter() - t_start), float(np.median(arr)), float(np.percentile(arr, 99)))


# ---------------------------------------------------------------- configs


@dataclass(frozen=True)
class Config:
    letter: str
    label: str
    kind: str
    """raw | bare | shipyard | shipyard-split | shipyard-sticky"""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    default: bool = False
    one_worker: str = ""
    """For a 2-worker config, the letter of the same config with one worker."""

    @property
    def name(self) -> str:
        return f"({self.letter}) {self.label}"

    @property
    def onnx(self) -> bool:
        return "onnx" in self.args


CONFIGS = [
    Config("a", "raw predict", "raw", default=True),
    Config("b", "bare endpoint", "bare", default=True),
    Config("o", "bare endpoint, 2 workers", "bare", ("--workers", "2"), default=True, one_worker="b"),
    Config("c", "shipyard defaults", "shipyard", ("--workers", "1"), default=True),
    Config("g", "shipyard, 2 workers", "shipyard", ("--workers", "2"), default=True, one_worker="c"),
    Config("f", "shipyard onnx+batching", "shipyard", ("--workers", "1", "--runtime", "onnx", "--batching"),
           default=True),
    Config("p", "shipyard onnx+batching, 2 workers", "shipyard",
           ("--workers", "2", "--runtime", "onnx", "--batching"), default=True, one_worker="f"),
    Config("d", "shipyard batching", "shipyard", ("--workers", "1", "--batching")),
    Config("e", "shipyard onnx", "shipyard", ("--workers", "1", "--runtime", "onnx")),
    Config("h", "shipyard, metrics off", "shipyard", ("--workers", "1"),
           (("SHIPYARD_MONITORING__METRICS__ENABLED", "false"),)),
    Config("i", "shipyard, metrics + prediction log", "shipyard", ("--workers", "1"),
           (("SHIPYARD_MONITORING__PREDICTION_LOG__ENABLED", "true"),)),
    Config("j", "shipyard, 50/50 split", "shipyard-split", ("--workers", "1")),
    Config("k", "shipyard, sticky 50/50 split", "shipyard-sticky", ("--workers", "1")),
    Config("l", "shipyard, drift off", "shipyard", ("--workers", "1"),
           (("SHIPYARD_MONITORING__DRIFT__ENABLED", "false"),)),
    Config("m", "shipyard, feedback recording on", "shipyard", ("--workers", "1"),
           (("SHIPYARD_MONITORING__FEEDBACK__ENABLED", "true"),)),
    Config("n", "shipyard, API keys on", "shipyard", ("--workers", "1"),
           (("SHIPYARD_SECURITY__AUTH__ENABLED", "true"),)),
]
BY_LETTER = {c.letter: c for c in CONFIGS}
STICKY_HEADER = {"X-User": "user-1234"}
#: seconds a start, its idle pause and its stop take, roughly, for the estimate printed first
START_ESTIMATE_S = {"bare": 3.0, "shipyard": 5.0, "onnx-compile": 10.0}


def choose(spec: str) -> list[Config]:
    if spec == "none":
        return []
    if spec == "default":
        return [c for c in CONFIGS if c.default]
    if spec == "all":
        return list(CONFIGS)
    letters = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in letters if s not in BY_LETTER]
    if unknown:
        sys.exit(f"unknown config letter(s) {unknown}; known: {', '.join(BY_LETTER)}")
    return [c for c in CONFIGS if c.letter in letters]


def traffic_file(tmp: Path, name: str, sticky: bool) -> Path:
    """A shipyard.yaml giving ``name`` a 50/50 split over its versions 1 and 2."""
    path = tmp / f"{name}-{'sticky' if sticky else 'split'}.yaml"
    sticky_line = "      sticky: header:x-user\n" if sticky else ""
    path.write_text(f"models:\n  - ref: {name}\n    traffic:\n{sticky_line}      arms:\n"
                    "        - {version: 1, percent: 50}\n        - {version: 2, percent: 50}\n")
    return path


def command(config: Config, name: str, port: int, tmp: Path, env: dict[str, str],
            key_header: dict[str, str]) -> tuple[list[str], str, dict[str, str], dict[str, str] | None]:
    """The command line, URL, environment and extra headers of ``config`` serving model ``name``."""
    if config.kind == "bare":
        cmd = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools", *config.args]
        return cmd, f"http://127.0.0.1:{port}/predict", {**env, "BARE_MODEL": name, "BARE_INPUT": "array"}, None
    policy = []
    if config.kind != "shipyard":
        policy = ["-c", str(traffic_file(tmp, name, config.kind == "shipyard-sticky"))]
    cmd = [sys.executable, "-m", "shipyard", "serve", name, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *policy, *config.args]
    run_env = {**env, **dict(config.env)}
    headers = STICKY_HEADER if config.kind == "shipyard-sticky" else None
    if run_env.get("SHIPYARD_SECURITY__AUTH__ENABLED") == "true":
        headers = key_header
    return cmd, f"http://127.0.0.1:{port}/v1/models/{name}:predict", run_env, headers


def estimate_seconds(configs: list[Config], models: int, levels: int, rounds: int, duration: int) -> float:
    per_model = START_ESTIMATE_S["onnx-compile"] if any(c.onnx for c in configs) else 0.0
    for c in configs:
        if c.kind == "raw":
            per_model += rounds * duration
            continue
        start_s = START_ESTIMATE_S["bare" if c.kind == "bare" else "shipyard"]
        per_model += rounds * (start_s + levels * (duration + 0.3))
    return models * per_model + 10  # + training and registering


# ---------------------------------------------------------------- one model's block


def run_model(name: str, model: Any, row: np.ndarray, configs: list[Config], args: argparse.Namespace,
              levels: list[int], tmp: Path, env: dict[str, str], key_header: dict[str, str],
              raw: list[dict[str, Any]]) -> dict[str, Result]:
    body = request_body(row)
    expected = model.predict(row).tolist()
    results = {c.letter: Result() for c in configs}
    compiled = False
    for round_ in range(args.rounds):
        # every other round in reverse: a config run right after another server stopped is slower,
        # and a fixed order would charge that to the later configs every time
        order = configs if round_ % 2 == 0 else list(reversed(configs))
        for config in order:
            res = results[config.letter]
            if config.kind == "raw":
                point = raw_point(model, row, args.duration)
                res.points.setdefault(1, []).append(point)
                raw.append({"model": name, "config": config.letter, "round": round_, "concurrency": 1,
                            **asdict(point)})
                continue
            cmd, url, run_env, headers = command(config, name, free_port(), tmp, env, key_header)
            try:
                if config.onnx and not compiled:
                    # compile once, as a deployment would; every cold start measured is a start after
                    # (SHIPYARD_HOME/cache/compiled is keyed by the version's digest: one compile per model)
                    with running(cmd, run_env, url, body, headers):
                        compiled = True
                with running(cmd, run_env, url, body, headers) as (proc, cold):
                    status, answer = post_json(url, body, headers)
                    ok = status == 200 and answer.get("predictions") == expected
                    if not ok:
                        print(f"warning: {config.name} answered {status} {answer!r} for {name}, "
                              f"expected predictions {expected}", file=sys.stderr)
                    time.sleep(0.5)
                    st = Start(cold, tree_rss(proc.pid), ok)
                    res.starts.append(st)
                    raw.append({"model": name, "config": config.letter, "round": round_, "start": asdict(st)})
                    for c in levels:
                        point = wrk(url, body, c, args.duration, tmp, headers, server_pid=proc.pid)
                        res.points.setdefault(c, []).append(point)
                        raw.append({"model": name, "config": config.letter, "round": round_, "concurrency": c,
                                    **asdict(point)})
            except (RuntimeError, subprocess.SubprocessError) as exc:
                print(f"skipping {config.name} for {name} in round {round_ + 1}: {exc}", file=sys.stderr)
    return results


# ---------------------------------------------------------------- issue 18's graph rows


def register_graphs(home: Path, names: list[str], row_count: int = 5) -> None:
    """Register the steps of (G3) and, per model M, ``M-graph`` (M:1 alone) and ``M-pipe`` (center, M:1, label)."""
    sys.path.insert(0, str(ROOT))
    from bench.graph_steps import Center, Label

    from shipyard.config import Settings
    from shipyard.graphs import Graph, Node
    from shipyard.registry import Registry

    X, _ = training_data()
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(Center(), "center", sample={"input": X[:row_count]})
        reg.register(Label(), "label", sample={"predict": np.array([0, 1, 1], dtype=np.int64)})
        for name in names:
            reg.register(Graph([Node("model", f"{name}:1")]), f"{name}-graph")
            reg.register(Graph([Node("pre", "center:1"), Node("model", f"{name}:1"), Node("post", "label:1")]),
                         f"{name}-pipe")
    finally:
        reg.close()


#: (G1) and (G3): the names one server serves, and each name's request (M stands for the model)
GRAPH_SERVERS = {"G1": ("M", "M-graph"), "G3": ("M-pipe", "center", "M", "label")}


def run_graph_rows(name: str, model: Any, row: np.ndarray, args: argparse.Namespace, levels: list[int],
                   tmp: Path, env: dict[str, str], raw: list[dict[str, Any]]) -> dict[str, Result]:
    """Each (G1)/(G3) server once per round; each of its names loaded at every concurrency (order alternates)."""
    predicted = int(model.predict(row)[0])
    label = int(predicted >= 1)
    bodies = {name: request_body(row), f"{name}-graph": request_body(row), f"{name}-pipe": request_body(row),
              "center": request_body(row), "label": orjson.dumps({"instances": [{"predict": predicted}]})}
    expected = {name: model.predict(row).tolist(), f"{name}-graph": model.predict(row).tolist(),
                f"{name}-pipe": [label], "center": row.tolist(), "label": [label]}
    results: dict[str, Result] = {}
    for round_ in range(args.rounds):
        for group, served in GRAPH_SERVERS.items():
            names = [s.replace("M", name) if s.startswith("M") else s for s in served]
            order = names if round_ % 2 == 0 else list(reversed(names))
            port = free_port()
            cmd = [sys.executable, "-m", "shipyard", "serve", *names, "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning", "--workers", "1"]
            first = f"http://127.0.0.1:{port}/v1/models/{names[0]}:predict"
            try:
                with running(cmd, env, first, bodies[names[0]]) as (proc, _):
                    for served_name in names:
                        url = f"http://127.0.0.1:{port}/v1/models/{served_name}:predict"
                        status, answer = post_json(url, bodies[served_name])
                        if status != 200 or answer.get("predictions") != expected[served_name]:
                            print(f"warning: ({group}) {served_name} answered {status} {answer!r}, expected "
                                  f"predictions {expected[served_name]}", file=sys.stderr)
                    for c in levels:
                        for served_name in order:
                            url = f"http://127.0.0.1:{port}/v1/models/{served_name}:predict"
                            point = wrk(url, bodies[served_name], c, args.duration, tmp, None, server_pid=proc.pid)
                            results.setdefault(f"{group}:{served_name}", Result()).points.setdefault(c, []).append(
                                point)
                            raw.append({"model": name, "config": group, "served": served_name, "round": round_,
                                        "concurrency": c, **asdict(point)})
            except (RuntimeError, subprocess.SubprocessError) as exc:
                print(f"skipping ({group}) for {name} in round {round_ + 1}: {exc}", file=sys.stderr)
    return results


def graph_rows(name: str, results: dict[str, Result]) -> list[dict[str, Any]]:
    """Per concurrency: (G1) the graph's req/s over the model's; (G3) the graph's time per request over the
    sum of its steps' (each served alone)."""
    out = []
    levels = sorted({c for r in results.values() for c in r.points})
    for c in levels:
        model, graph = rps(results, f"G1:{name}", c), rps(results, f"G1:{name}-graph", c)
        out.append({"row": "G1", "concurrency": c, "graph_rps": graph, "steps_rps": [model],
                    "ratio": ratio(graph, model), "target": ">= 0.95 (req/s, graph over model)"})
        steps = [rps(results, f"G3:{s}", c) for s in ("center", name, "label")]
        pipe = rps(results, f"G3:{name}-pipe", c)
        summed = sum(1 / v for v in steps) if all(v == v and v > 0 for v in steps) else float("nan")
        cost = ratio(1 / pipe, summed) if pipe == pipe and pipe > 0 else float("nan")
        out.append({"row": "G3", "concurrency": c, "graph_rps": pipe, "steps_rps": steps, "ratio": cost,
                    "target": "<= 1.10 (time per request, graph over the sum of its steps)"})
    return out


def print_graph_rows(name: str, results: dict[str, Result], args: argparse.Namespace, load_before: str,
                     load_after: str) -> None:
    print(f"\n### {name}: issue 18's graph rows, median of {args.rounds} rounds, {args.duration} s per point\n")
    print(f"load before: {load_before}  |  after: {load_after}  |  nproc: {os.cpu_count()}\n")
    print("| served | c | req/s | p50 ms | p99 ms | non-2xx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, res in results.items():
        for c in sorted(res.points):
            pts = res.points[c]
            print(f"| ({key.replace(':', ') ')} | {c} | {med([p.rps for p in pts]):.0f} | "
                  f"{med([p.p50_ms for p in pts]):.2f} | {med([p.p99_ms for p in pts]):.2f} | "
                  f"{sum(p.errors + p.socket_errors for p in pts)} |")
    print("\n| row | c | graph req/s | steps' req/s | ratio | target |")
    print("| --- | ---: | ---: | --- | ---: | --- |")
    for r in graph_rows(name, results):
        steps = ", ".join(f"{v:.0f}" for v in r["steps_rps"])
        print(f"| ({r['row']}) | {r['concurrency']} | {r['graph_rps']:.0f} | {steps} | {x(r['ratio'])} | "
              f"{r['target']} |")
    sys.stdout.flush()


# ---------------------------------------------------------------- summaries


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def rps(results: dict[str, Result], letter: str, c: int) -> float:
    res = results.get(letter)
    return med([p.rps for p in res.points.get(c, [])]) if res else float("nan")


def p99(results: dict[str, Result], letter: str, c: int) -> float:
    res = results.get(letter)
    return med([p.p99_ms for p in res.points.get(c, [])]) if res else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def x(v: float) -> str:
    return "–" if v != v else f"{v:.2f}x"


def pct(v: float) -> str:
    return "–" if v != v else f"{v * 100:.0f}%"


def start_summary(res: Result) -> dict[str, float]:
    starts = res.starts
    return {
        "cold_s": med([s.cold_s for s in starts]),
        "rss_max_mb": med([max(s.rss_mb) for s in starts if s.rss_mb]),
        "rss_mean_mb": med([statistics.fmean(s.rss_mb) for s in starts if s.rss_mb]),
        "rss_tree_mb": med([sum(s.rss_mb) for s in starts if s.rss_mb]),
        "processes": med([len(s.rss_mb) for s in starts]),
    }


def table_rows(results: dict[str, Result], configs: list[Config]) -> list[dict[str, Any]]:
    """One row per config and concurrency: medians over rounds, summed errors, the ratios."""
    rows = []
    for config in configs:
        res = results[config.letter]
        for c in sorted(res.points):
            pts = res.points[c]
            r = rps(results, config.letter, c)
            vs_one = ratio(r, rps(results, config.one_worker, c)) if config.one_worker else float("nan")
            vs_o = ratio(r, rps(results, "o", c)) if config.one_worker and config.letter != "o" else float("nan")
            rows.append({
                "config": config.letter, "name": config.name, "concurrency": c, "rps": r,
                "p50_ms": med([p.p50_ms for p in pts]), "p99_ms": med([p.p99_ms for p in pts]),
                "non_2xx": sum(p.errors for p in pts), "socket_errors": sum(p.socket_errors for p in pts),
                "vs_bare": ratio(r, rps(results, "b", c)), "vs_one_worker": vs_one, "vs_bare_2_workers": vs_o,
                "wrk_cpu": med([p.wrk_cpu for p in pts]), "server_cpu": med([p.server_cpu for p in pts]),
                "other_cpu": med([p.other_cpu for p in pts]),
            })
    return rows


def print_model(name: str, results: dict[str, Result], configs: list[Config], levels: list[int],
                args: argparse.Namespace, load_before: str, load_after: str) -> None:
    print(f"\n### {name}: single-row requests, median of {args.rounds} rounds, {args.duration} s per point, wrk -t1\n")
    print(f"load before: {load_before}  |  after: {load_after}  |  nproc: {os.cpu_count()}\n")
    print("| config | c | req/s | p50 ms | p99 ms | non-2xx | vs (b) bare | vs 1 worker | vs (o) bare 2 w. "
          "| wrk CPU | server CPU | others' CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in table_rows(results, configs):
        errors = f"{row['non_2xx']}" + (f" (+{row['socket_errors']} socket)" if row["socket_errors"] else "")
        print(f"| {row['name']} | {row['concurrency']} | {row['rps']:.0f} | {row['p50_ms']:.2f} | "
              f"{row['p99_ms']:.2f} | {errors} | {x(row['vs_bare'])} | {x(row['vs_one_worker'])} | "
              f"{x(row['vs_bare_2_workers'])} | {pct(row['wrk_cpu'])} | {pct(row['server_cpu'])} | "
              f"{pct(row['other_cpu'])} |")
    print("\n| config | cold start s | idle RSS, largest process MB | mean per process MB | whole tree MB "
          "| processes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for config in configs:
        res = results[config.letter]
        if not res.starts:
            continue
        s = start_summary(res)
        print(f"| {config.name} | {s['cold_s']:.2f} | {s['rss_max_mb']:.0f} | {s['rss_mean_mb']:.0f} | "
              f"{s['rss_tree_mb']:.0f} | {s['processes']:.0f} |")
    print("\nreq/s at each concurrency over the level before (>= 0.95 everywhere: throughput holds as load rises):")
    for config in configs:
        res = results[config.letter]
        steps = [c for c in levels if c in res.points]
        if len(steps) < 2:
            continue
        pairs = list(itertools.pairwise(steps))
        ratios = [ratio(rps(results, config.letter, b), rps(results, config.letter, a)) for a, b in pairs]
        text = ", ".join(f"{a}→{b} {v:.2f}" for (a, b), v in zip(pairs, ratios, strict=True))
        print(f"  {config.name}: {text} (lowest {min(ratios):.2f})")
    wrk_cpu = [p.wrk_cpu for res in results.values() for pts in res.points.values() for p in pts
               if p.wrk_cpu == p.wrk_cpu]
    if wrk_cpu:
        print(f"\nwrk's own CPU over its runs: median {pct(med(wrk_cpu))}, highest {pct(max(wrk_cpu))} of one core")
    failed = [(config.name, c) for config in configs for c, pts in results[config.letter].points.items()
              if any(p.errors or p.socket_errors for p in pts)]
    if failed:
        print(f"WARNING: non-2xx or socket errors at {failed}")
    bad_answers = [config.name for config in configs if any(not s.answer_ok for s in results[config.letter].starts)]
    if bad_answers:
        print(f"WARNING: wrong first answer from {bad_answers}")
    sys.stdout.flush()


# ---------------------------------------------------------------- issue 17's targets


def checks(all_results: dict[str, dict[str, Result]]) -> list[dict[str, Any]]:
    """Issue 17's targets (items 2-6): name, measured value, target, PASS/FAIL/n/a."""
    out: list[dict[str, Any]] = []

    def add(item: str, what: str, value: float, target: str, ok: bool | None, shown: str) -> None:
        status = "n/a" if value != value or ok is None else ("PASS" if ok else "FAIL")
        out.append({"item": item, "target": f"{what} {target}", "value": value,
                    "shown": "not measured" if value != value else shown, "status": status})

    lr, rf = all_results.get("lr", {}), all_results.get("rf", {})
    for item, res, c, floor in (("2", lr, 32, 0.9), ("2", lr, 1, 0.85), ("3", rf, 8, 0.95), ("3", rf, 32, 0.95)):
        model = "lr" if res is lr else "rf"
        v = ratio(rps(res, "c", c), rps(res, "b", c))
        add(item, f"{model} (c)/(b) at c={c}", v, f">= {floor}x", v >= floor, x(v))
    levels = sorted(rf["c"].points) if "c" in rf else []
    steps = [ratio(rps(rf, "c", b), rps(rf, "c", a)) for a, b in itertools.pairwise(levels)]
    low = min(steps) if steps else float("nan")
    span = f"c={levels[0]}..{levels[-1]}" if levels else "c=1..64"
    add("3", f"rf (c) each concurrency step over the one before, {span},", low, ">= 0.95 (lowest step shown)",
        low >= 0.95, f"{low:.2f}")
    mine, theirs = p99(rf, "c", 32), p99(rf, "b", 32)
    add("3", "rf (c) p99 at c=32", mine, f"<= (b)'s p99 ({theirs:.1f} ms)",
        mine <= theirs if theirs == theirs else None, f"{mine:.1f} ms")
    for model, res in (("lr", lr), ("rf", rf)):
        v = ratio(rps(res, "g", 32), rps(res, "c", 32))
        bare = ratio(rps(res, "o", 32), rps(res, "b", 32))
        add("4", f"{model} (g)/(c), 2 workers over 1, c=32", v, f">= 1.7x (bare (o)/(b): {x(bare)})", v >= 1.7, x(v))
    for model, res in (("lr", lr), ("rf", rf)):
        for letter in ("c", "g"):
            if letter in res and res[letter].starts:
                v = start_summary(res[letter])["rss_max_mb"]
                add("5", f"{model} ({letter}) idle RSS, largest process", v, "<= 150 MB", v <= 150, f"{v:.0f} MB")
        if "c" in res and res["c"].starts:
            v = start_summary(res["c"])["cold_s"]
            add("5", f"{model} (c) cold start", v, "<= 1.5 s", v <= 1.5, f"{v:.2f} s")
        for letter in ("f", "p"):
            if letter in res and res[letter].starts:
                v = start_summary(res[letter])["rss_max_mb"]
                add("5", f"{model} ({letter}) onnx idle RSS, largest process", v, "<= 110 MB", v <= 110, f"{v:.0f} MB")
    for model, res, floor in (("lr", lr, 1.3), ("rf", rf, 15.0)):
        v = ratio(rps(res, "f", 32), rps(res, "b", 32))
        add("6", f"{model} (f)/(b) onnx+batching at c=32", v, f">= {floor}x", v >= floor, x(v))
    return out


def print_checks(results: list[dict[str, Any]]) -> None:
    print("\n### issue 17's targets (a report: a FAIL does not change the exit status)\n")
    print("| item | target | measured | |")
    print("| --- | --- | ---: | --- |")
    for r in results:
        print(f"| {r['item']} | {r['target']} | {r['shown']} | {r['status']} |")


# ---------------------------------------------------------------- main


def main() -> None:
    try:
        run()
    except KeyboardInterrupt:
        print("\ninterrupted; every server this run started is stopped", file=sys.stderr)
        sys.exit(130)


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=3, help="seconds per point (wrk takes whole seconds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--models", default="lr,rf")
    ap.add_argument("--configs", default="default",
                    help="'default' (a,b,o,c,g,f,p), 'all', or comma-separated letters, e.g. b,c,h")
    ap.add_argument("--json", type=Path, help="write every raw point and start to this file")
    ap.add_argument("--check", action="store_true", help="print issue 17's targets with PASS/FAIL")
    ap.add_argument("--graphs", action="store_true",
                    help="also issue 18's graph rows (G1: a one-model graph vs the model; G3: a three-step "
                         "graph vs the sum of its steps); '--configs none --graphs' runs only them")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serve.py needs wrk: apt-get install wrk")
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := set(names) - {"lr", "rf"}:
        sys.exit(f"unknown model(s) {sorted(unknown)}: lr, rf")
    configs = choose(args.configs)
    # a SIGTERM to this script unwinds like Ctrl-C, through the finally that stops the servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    est = estimate_seconds(configs, len(names), len(levels), args.rounds, args.duration)
    if args.graphs:  # two starts a round, six names loaded at each level
        est += len(names) * args.rounds * (2 * START_ESTIMATE_S["shipyard"] + len(levels) * 6 * (
            args.duration + 0.3))
    print(f"bench/serve.py: models {','.join(names)}; configs {','.join(c.letter for c in configs)}; "
          f"concurrency {args.concurrency}; {args.rounds} rounds of {args.duration} s per point; "
          f"nproc {os.cpu_count()}; estimated total {est / 60:.1f} min")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    raw: list[dict[str, Any]] = []
    report: dict[str, Any] = {"argv": sys.argv, "nproc": os.cpu_count(), "started": started,
                              "configs": {c.letter: c.label for c in configs}, "models": {}, "raw": raw}
    all_results: dict[str, dict[str, Result]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-bench-serve-") as tmp_dir:
            tmp = Path(tmp_dir)
            home = tmp / "home"
            models = register_models(home, second_versions=any(c.kind.startswith("shipyard-") for c in configs))
            key_header = bench_key(home)
            if args.graphs:
                register_graphs(home, names)
            # this checkout's shipyard (src) and bench.bare_app (the root), whatever the venv has installed
            env = {**os.environ, "SHIPYARD_HOME": str(home), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
            for name in names:
                model, row = models[name]
                before = loadavg()
                results = run_model(name, model, row, configs, args, levels, tmp, env, key_header, raw)
                after = loadavg()
                all_results[name] = results
                report["models"][name] = {"loadavg_before": before, "loadavg_after": after,
                                          "table": table_rows(results, configs),
                                          "starts": {k: start_summary(r) for k, r in results.items() if r.starts}}
                if configs:
                    print_model(name, results, configs, levels, args, before, after)
                if args.graphs:
                    before = loadavg()
                    graphs = run_graph_rows(name, model, row, args, levels, tmp, env, raw)
                    after = loadavg()
                    report["models"][name]["graphs"] = {"loadavg_before": before, "loadavg_after": after,
                                                        "rows": graph_rows(name, graphs)}
                    print_graph_rows(name, graphs, args, before, after)
                if args.json:
                    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    finally:
        stop_all()
    if args.check:
        report["checks"] = checks(all_results)
        print_checks(report["checks"])
    report["elapsed_s"] = time.time() - started
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        print(f"\nraw points: {args.json}")
    print(f"\nelapsed {report['elapsed_s'] / 60:.1f} min (estimated {est / 60:.1f})")


if __name__ == "__main__":
    main()
