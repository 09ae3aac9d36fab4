"""Stream throughput per broker: `shipyard stream` against a raw loop and the model alone, in one run.

    .venv/bin/python bench/stream.py [--messages 20000] [--batch-size 64] [--rounds 3]
                                     [--brokers local,redis,nats,kafka] [--runtime native|onnx]

Registers the quickstart model (``demo``, a 100-tree RandomForest) in a throwaway
SHIPYARD_HOME and makes N JSON messages (one iris record each, varied values, keys).
Per broker (started on 127.0.0.1 by ``shipyard.testing``; ``local`` is the embedded
SQLite broker) and per round, on fresh topics and groups, it preloads the N messages
and times from "consumer ready" until all N outputs are on the sink (polled every 20 ms:
SQL count, XLEN, JetStream stream info, reading the Kafka topic); start-up is excluded.

* raw:      a child process running a minimal consume -> produce -> ack loop, no model, on the
            broker's own client (redis-py, nats-py, confluent-kafka; shipyard's adapter for
            local), same batch size, ack only after the outputs are confirmed, output = input.
* shipyard: ``python -m shipyard stream demo@champion ... --metrics-port P`` (ready = its
            "streaming demo@champion" line); /metrics is scraped every 0.5 s for the peak
            ``shipyard_stream_lag_messages`` (a gauge the consumer refreshes every 5 s).
* model:    in this process: JSON decoding + ``predict`` in batches of B with the same
            runtime (the model + parsing floor, no broker).

shipyard/raw is the median over rounds of each round's ratio (the two phases of a round run
back to back). CPU µs/msg is the user + system time of the timed process (all its threads)
over the timed span, per message: what each loop costs, whatever else the machine runs.

Each phase has a deadline (--timeout); servers and children are stopped, also on errors.
Prints a Markdown table of medians over rounds, ratios, and the command line.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import re
import shlex
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

MODEL = "demo@champion"
READY_RAW = "raw loop ready"
READY_SHIPYARD = "streaming demo@champion"
BROKERS = ["local", "redis", "nats", "kafka"]
STARTERS = {"redis": "redis_server", "nats": "nats_server", "kafka": "kafka_broker"}
CLIENTS = {"local": "shipyard.streams.local", "redis": "redis", "nats": "nats", "kafka": "confluent_kafka"}
KAFKA_SOURCE_OPTIONS = "?session.timeout.ms=6000"  # Tansu waits half the session timeout on every join


def stream_url(broker: str, base: str, topic: str, *, source: bool = False) -> str:
    """The shipyard URL of ``topic``; for ``local`` the base is the database file."""
    if broker == "local":
        return f"local://{topic}?path={base}"
    return f"{base}/{topic}" + (KAFKA_SOURCE_OPTIONS if source and broker == "kafka" else "")


def nats_stream_name(subject: str) -> str:
    """The JetStream stream shipyard's NATS adapter creates for a subject."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject).upper()


# -- the raw loops (child process: `bench/stream.py _raw BROKER BASE IN OUT GROUP BATCH`) ---------------------


async def raw_local(base: str, src: str, dst: str, group: str, batch: int) -> None:
    from shipyard.streams.broker import Record, open_sink, open_source

    source = open_source(stream_url("local", base, src), group=group, consumer="raw")
    sink = open_sink(stream_url("local", base, dst))
    await source.start()
    await sink.start()
    print(READY_RAW, file=sys.stderr, flush=True)
    while True:
        msgs = await source.fetch(batch, 0.25)
        if msgs:
            await sink.send([Record(m.value, m.key, m.headers) for m in msgs])
            await source.ack(msgs)


def raw_redis(base: str, src: str, dst: str, group: str, batch: int) -> None:
    import redis

    r: Any = redis.Redis.from_url(base)
    r.xgroup_create(src, group, id="0", mkstream=True)
    print(READY_RAW, file=sys.stderr, flush=True)
    while True:
        got = r.xreadgroup(group, "raw", {src: ">"}, count=batch, block=250)
        if not got:
            continue
        entries = got[0][1]
        pipe = r.pipeline(transaction=False)
        for _, fields in entries:
            pipe.xadd(dst, fields)
        pipe.execute()  # every XADD replied: the outputs are on the broker
        r.xack(src, group, *[entry_id for entry_id, _ in entries])


async def raw_nats(base: str, src: str, dst: str, group: str, batch: int) -> None:
    import nats

    nc = await nats.connect(base)
    js = nc.jetstream()
    psub = await js.pull_subscribe(src, durable=group, stream=nats_stream_name(src))
    print(READY_RAW, file=sys.stderr, flush=True)
    while True:
        try:
            msgs = await psub.fetch(batch, timeout=0.25)
        except TimeoutError:
            continue
        # the key travels in a header; Nats-* headers (e.g. Nats-Expected-Stream of the preload) stay behind
        futures = [await js.publish_async(dst, m.data, headers={k: v for k, v in (m.headers or {}).items()
                                                               if not k.startswith("Nats-")} or None)
                   for m in msgs]
        await asyncio.gather(*futures)  # every PubAck is back
        for m in msgs:
            await m.ack()


def raw_kafka(base: str, src: str, dst: str, group: str, batch: int) -> None:
    from confluent_kafka import Consumer, KafkaError, Producer

    servers = base.removeprefix("kafka://")
    consumer = Consumer({"bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True})
    assigned: list[Any] = []
    consumer.subscribe([src], on_assign=lambda _c, parts: assigned.extend(parts))
    backlog: list[Any] = []
    while not assigned:  # join the group before "ready", as shipyard's Kafka source does in start()
        backlog += consumer.consume(batch, 0.1)
    print(READY_RAW, file=sys.stderr, flush=True)
    failed: list[KafkaError | None] = []  # delivery reports of the batch in flight
    while True:
        msgs, backlog = (backlog[:batch], backlog[batch:]) if backlog else (consumer.consume(batch, 0.25), [])
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            continue
        for m in msgs:
            producer.produce(dst, m.value(), m.key(), on_delivery=lambda err, _m: failed.append(err))
        if producer.flush(30) or any(failed):
            raise SystemExit(f"produce failed: {[e for e in failed if e][:1]}")
        failed.clear()
        consumer.commit(asynchronous=False)


def raw_main(broker: str, base: str, src: str, dst: str, group: str, batch: int) -> None:
    loop = {"local": raw_local, "redis": raw_redis, "nats": raw_nats, "kafka": raw_kafka}[broker]
    running = loop(base, src, dst, group, batch)
    if asyncio.iscoroutine(running):
        asyncio.run(running)


# -- counting outputs ----------------------------------------------------------------------------------------


class Counter:
    """Messages in a topic, asked of the broker cheaply (the poll runs every 20 ms)."""

    def __init__(self, broker: str, base: str) -> None:
        self.broker, self.base = broker, base
        self.client: Any = None
        self.topic, self.seen = "", 0  # Kafka: the topic being read, messages read so far

    async def open(self) -> Counter:
        if self.broker == "local":
            self.client = sqlite3.connect(self.base, check_same_thread=False)
        elif self.broker == "redis":
            import redis.asyncio

            self.client = redis.asyncio.Redis.from_url(self.base)
        elif self.broker == "nats":
            import nats

            self.client = await nats.connect(self.base)
        else:
            from confluent_kafka import Consumer

            self.client = Consumer({"bootstrap.servers": self.base.removeprefix("kafka://"),
                                    "group.id": "bench-counter", "enable.auto.commit": False})
        return self

    async def count(self, topic: str) -> int:
        c = self.client
        if self.broker == "local":
            return int(c.execute("SELECT COUNT(*) FROM messages WHERE stream = ?", (topic,)).fetchone()[0])
        if self.broker == "redis":
            return int(await c.xlen(topic))
        if self.broker == "nats":
            info = await c.jetstream().stream_info(nats_stream_name(topic))
            return int(info.state.messages)
        return await asyncio.to_thread(self._kafka_count, topic)

    def _kafka_count(self, topic: str) -> int:
        """Read the topic and count: Tansu's high watermark is the last batch's base offset + 1, not the count."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        if self.topic != topic:
            parts = self.client.list_topics(topic, timeout=5).topics[topic].partitions
            self.client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            self.topic, self.seen = topic, 0
        self.seen += sum(1 for m in self.client.consume(100_000, 0.005) if m.error() is None)
        return self.seen

    async def close(self) -> None:
        closing = self.client.aclose() if self.broker == "redis" else self.client.close()
        if asyncio.iscoroutine(closing):  # redis, nats
            await closing


# -- one timed phase -----------------------------------------------------------------------------------------


class PhaseFailed(Exception):
    pass


async def preload(broker: str, base: str, src: str, dst: str, payloads: list[tuple[str, bytes]]) -> None:
    """Write the messages to a fresh source topic; create the (empty) sink topic, so it can be counted."""
    from shipyard.streams.broker import Record, open_sink

    sink = open_sink(stream_url(broker, base, src))
    await sink.start()
    try:
        for i in range(0, len(payloads), 1000):
            await sink.send([Record(value, key) for key, value in payloads[i:i + 1000]])
    finally:
        await sink.close()
    out = open_sink(stream_url(broker, base, dst))
    await out.start()
    await out.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (librdkafka's and the executors' too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    seconds: float
    cpu: float | None
    """CPU seconds the process spent over those seconds (None where /proc cannot tell)."""
    lag: float | None


async def timed(cmd: list[str], ready: str, counter: Counter, dst: str, n: int, timeout: float,
                metrics_url: str | None = None) -> Timing:
    """Start ``cmd``; seconds (and its CPU seconds) from its ``ready`` line on stderr until ``dst`` holds ``n``
    messages; peak lag."""
    env = {**os.environ, "SHIPYARD_LOG_LEVEL": "info", "SHIPYARD_LOG_FORMAT": "text"}
    sub = asyncio.subprocess
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=sub.DEVNULL, stdout=sub.DEVNULL, stderr=sub.PIPE, env=env)
    tail: deque[str] = deque(maxlen=15)
    seen = asyncio.Event()
    peak: list[float] = []

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            if ready in line:
                seen.set()

    async def scrape(url: str) -> None:
        await asyncio.sleep(0.1)
        while True:
            with contextlib.suppress(OSError):
                text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read().decode())
                peak.extend(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                            if line.startswith("shipyard_stream_lag_messages{"))
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(read_stderr()), asyncio.create_task(proc.wait()), asyncio.create_task(seen.wait())]
    done = 0
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_COMPLETED)
            if not seen.is_set():
                raise PhaseFailed(f"exited with {proc.returncode} before it was ready: " + " / ".join(tail))
            t0 = time.perf_counter()
            cpu0 = _cpu_or_none(proc.pid)
            if metrics_url:
                tasks.append(asyncio.create_task(scrape(metrics_url)))
            while (done := await counter.count(dst)) < n:
                if proc.returncode is not None:
                    raise PhaseFailed(f"exited with {proc.returncode} at {done}/{n}: " + " / ".join(tail))
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - t0
            cpu1 = _cpu_or_none(proc.pid)
    except TimeoutError:
        raise PhaseFailed(f"timed out after {timeout:.0f}s with {done}/{n} outputs: " + " / ".join(tail)) from None
    finally:
        await stop(proc)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return Timing(seconds, cpu, max(peak) if peak else None)


def _cpu_or_none(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


async def stop(proc: asyncio.subprocess.Process, grace: float = 30.0) -> None:
    """SIGTERM (shipyard drains and acknowledges), SIGKILL after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
    await proc.wait()


# -- per broker ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    broker: str
    raw: list[float] = field(default_factory=list)
    shipyard: list[float] = field(default_factory=list)
    raw_cpu: list[float] = field(default_factory=list)
    """CPU microseconds per message."""
    shipyard_cpu: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    note: str = ""


def starter(broker: str, folder: Path) -> contextlib.AbstractContextManager[str]:
    """The broker's server for the block (base URL); ImportError/AttributeError when a piece is missing."""
    importlib.import_module(f"shipyard.streams.{broker}")
    importlib.import_module(CLIENTS[broker])
    if broker == "local":
        return contextlib.nullcontext(str(folder / "streams.db"))
    start: Callable[[Path], contextlib.AbstractContextManager[str]] = getattr(
        importlib.import_module(f"shipyard.testing.{broker}"), STARTERS[broker])
    return start(folder)


async def bench_broker(broker: str, folder: Path, home: Path, payloads: list[tuple[str, bytes]],
                       args: argparse.Namespace) -> Row:
    from shipyard.errors import ShipyardError
    from shipyard.testing import free_port

    row, n, b = Row(broker), len(payloads), args.batch_size
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            base = stack.enter_context(starter(broker, folder))
        except Exception as exc:  # a missing binary, client or adapter is a skip, not a crash
            missing = isinstance(exc, ImportError | AttributeError | ShipyardError)
            row.note = f"{'skipped' if missing else 'failed to start'}: {exc}"
            return row
        for r in range(1, args.rounds + 1):
            print(f"{broker}: round {r}/{args.rounds}", file=sys.stderr)
            counter: Counter | None = None
            try:
                src, dst = f"bench-raw-{r}-in", f"bench-raw-{r}-out"
                await asyncio.wait_for(preload(broker, base, src, dst, payloads), args.timeout)
                counter = await Counter(broker, base).open()
                cmd = [sys.executable, __file__, "_raw", broker, base, src, dst, f"bench-raw-{r}", str(b)]
                got = await timed(cmd, READY_RAW, counter, dst, n, args.timeout)
                row.raw.append(n / got.seconds)
                if got.cpu is not None:
                    row.raw_cpu.append(got.cpu / n * 1e6)
                src, dst = f"bench-sy-{r}-in", f"bench-sy-{r}-out"
                await asyncio.wait_for(preload(broker, base, src, dst, payloads), args.timeout)
                port = free_port()
                cmd = [sys.executable, "-m", "shipyard", "--home", str(home), "stream", MODEL,
                       "--source", stream_url(broker, base, src, source=True), "--sink", stream_url(broker, base, dst),
                       "--group", f"bench-sy-{r}", "--batch-size", str(b), "--metrics-port", str(port),
                       "--runtime", args.runtime]
                got = await timed(cmd, READY_SHIPYARD, counter, dst, n, args.timeout,
                                  f"http://127.0.0.1:{port}/metrics")
                row.shipyard.append(n / got.seconds)
                if got.cpu is not None:
                    row.shipyard_cpu.append(got.cpu / n * 1e6)
                if got.lag is not None:
                    row.lag.append(got.lag)
            except Exception as exc:  # PhaseFailed, broker errors: report and go on with the next broker
                row.note = f"failed in round {r}: {type(exc).__name__}: {exc}"[:600]
                return row
            finally:
                if counter is not None:
                    await counter.close()
    return row


# -- the model alone and the data ----------------------------------------------------------------------------


def make_payloads(n: int) -> list[tuple[str, bytes]]:
    """n (key, JSON record) pairs around the iris flowers."""
    import numpy as np
    from sklearn.datasets import load_iris

    from shipyard.demo import FEATURES

    X = load_iris().data
    rng = np.random.default_rng(0)
    values = X[rng.integers(0, len(X), n)] + rng.normal(0, 0.1, (n, 4))
    return [(f"k{i}", orjson.dumps({f: round(float(v), 3) for f, v in zip(FEATURES, row, strict=True)}))
            for i, row in enumerate(values)]


def model_alone(home: Path, payloads: list[tuple[str, bytes]], batch: int, runtime: str) -> float:
    """Messages/s of JSON decoding + ``predict`` in batches, in this process, with shipyard's runtime choice."""
    from shipyard.config import Settings
    from shipyard.hosting.compiled import CompiledCache, load_for_serving
    from shipyard.registry import Registry

    settings = Settings(home=home)
    registry = Registry.from_settings(settings)
    try:
        compiled = CompiledCache(settings.cache_dir / "compiled") if runtime != "native" else None
        model = load_for_serving(registry, registry.get(MODEL), runtime, compiled)
        values = [v for _, v in payloads]
        model.predict([orjson.loads(v) for v in values[:batch]])  # warm up
        t0 = time.perf_counter()
        for i in range(0, len(values), batch):
            model.predict([orjson.loads(v) for v in values[i:i + batch]])
        return len(values) / (time.perf_counter() - t0)
    finally:
        registry.close()


# -- main -----------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def print_table(rows: list[Row], model_rate: float, args: argparse.Namespace, command: str, load: float) -> None:
    print(f"\n### {args.messages:,} messages, batch size {args.batch_size}, runtime {args.runtime}, "
          f"median of {args.rounds} round(s)\n")
    print(f"{os.cpu_count()} cores, load average {load:.1f} before and {os.getloadavg()[0]:.1f} after\n")
    print("| broker | raw loop msg/s | shipyard msg/s | model alone msg/s | shipyard/raw | shipyard/model "
          "| CPU µs/msg raw | CPU µs/msg shipyard | peak lag seen |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        raw, sy, raw_cpu, sy_cpu = (statistics.median(v) if v else None
                                    for v in (row.raw, row.shipyard, row.raw_cpu, row.shipyard_cpu))
        # raw and shipyard run back to back in each round: the median of the rounds' ratios is steadier
        # on a shared machine than the ratio of the medians
        ratios = [s / r for r, s in zip(row.raw, row.shipyard, strict=False)]
        vs_raw = _fmt(statistics.median(ratios) if ratios else None, ".2f", "x")
        vs_model = _fmt(sy / model_rate if sy else None, ".2f", "x")
        print(f"| {row.broker} | {_fmt(raw)} | {_fmt(sy)} | {model_rate:,.0f} | {vs_raw} | {vs_model} "
              f"| {_fmt(raw_cpu, '.1f')} | {_fmt(sy_cpu, '.1f')} | {_fmt(max(row.lag) if row.lag else None)} |")
    notes = [f"- {row.broker}: {row.note}" for row in rows if row.note]
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\ncommand: `{command}`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--brokers", default=",".join(BROKERS), help="comma separated, of " + ",".join(BROKERS))
    ap.add_argument("--runtime", choices=["native", "onnx"], default="native")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per phase")
    args = ap.parse_args()
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    unknown = sorted(set(brokers) - set(BROKERS))
    if unknown:
        ap.error(f"unknown broker(s) {', '.join(unknown)}; known: {', '.join(BROKERS)}")
    command = shlex.join([".venv/bin/python", "bench/stream.py", *sys.argv[1:]])
    load = os.getloadavg()[0]

    from shipyard.config import Settings
    from shipyard.demo import register_demo
    from shipyard.registry import Registry

    with tempfile.TemporaryDirectory(prefix="shipyard-bench-stream-") as tmp:
        root = Path(tmp)
        home = root / "home"
        with contextlib.closing(Registry.from_settings(Settings(home=home))) as registry:
            register_demo(registry)
        payloads = make_payloads(args.messages)
        rates = [model_alone(home, payloads, args.batch_size, args.runtime) for _ in range(args.rounds)]
        rows = [asyncio.run(bench_broker(b, root / b, home, payloads, args)) for b in brokers]
        print_table(rows, statistics.median(rates), args, command, load)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        with contextlib.suppress(KeyboardInterrupt):
            broker, base, src, dst, group, batch = sys.argv[2:8]
            raw_main(broker, base, src, dst, group, int(batch))
    else:
        main()
