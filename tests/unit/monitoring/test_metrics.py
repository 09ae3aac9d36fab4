"""ServingMetrics: what events, batches, in-flight counts and loads become in the exposition."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

from shipyard.config import MetricsConfig, MonitoringConfig, Settings
from shipyard.context import RequestContext
from shipyard.monitoring.events import Observers, PredictionEvent
from shipyard.monitoring.metrics import LATENCY_BUCKETS, ServingMetrics
from shipyard.registry import Registry
from shipyard.serving.server import build_server, started
from shipyard.streams import StreamMetrics


def event(model: str = "demo", version: int = 1, *, transport: str = "rest", outcome: str = "ok",
          latency_s: float = 0.003, rows: int = 1, cached: bool = False) -> PredictionEvent:
    context = RequestContext.new(transport)  # type: ignore[arg-type]
    return PredictionEvent(context, model, version, "champion", None, None, 0.0, latency_s, outcome,
                           rows=rows, cached=cached)


def samples(metrics: ServingMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text exposition, by name and labels."""
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(metrics: ServingMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_requests_are_counted_by_model_version_protocol_and_outcome() -> None:
    m = ServingMetrics()
    m.observe([event(), event(), event(transport="grpc"), event(outcome="timeout"), event(version=2)])
    assert value(m, "shipyard_requests_total", model="demo", version="1", protocol="rest", outcome="ok") == 2
    assert value(m, "shipyard_requests_total", model="demo", version="1", protocol="grpc", outcome="ok") == 1
    assert value(m, "shipyard_requests_total", model="demo", version="1", protocol="rest", outcome="timeout") == 1
    assert value(m, "shipyard_requests_total", model="demo", version="2", protocol="rest", outcome="ok") == 1


def test_latency_is_a_histogram_with_buckets_from_a_tenth_of_a_millisecond_to_thirty_seconds() -> None:
    m = ServingMetrics()
    m.observe([event(latency_s=0.003), event(latency_s=0.0002), event(latency_s=12.0, outcome="internal")])
    labels = {"model": "demo", "version": "1", "protocol": "rest"}
    assert LATENCY_BUCKETS[0] == 0.0001 and LATENCY_BUCKETS[-1] == 30.0
    assert value(m, "shipyard_request_duration_seconds_bucket", **labels, le="0.0001") == 0
    assert value(m, "shipyard_request_duration_seconds_bucket", **labels, le="0.00025") == 1
    assert value(m, "shipyard_request_duration_seconds_bucket", **labels, le="0.0025") == 1
    assert value(m, "shipyard_request_duration_seconds_bucket", **labels, le="0.005") == 2
    assert value(m, "shipyard_request_duration_seconds_bucket", **labels, le="10.0") == 2
    assert value(m, "shipyard_request_duration_seconds_bucket", **labels, le="30.0") == 3
    assert value(m, "shipyard_request_duration_seconds_bucket", **labels, le="+Inf") == 3
    assert value(m, "shipyard_request_duration_seconds_count", **labels) == 3
    assert value(m, "shipyard_request_duration_seconds_sum", **labels) == pytest.approx(12.0032)


def test_rows_count_successful_predictions_and_cache_hits_are_counted() -> None:
    m = ServingMetrics()
    m.observe([event(rows=5), event(rows=3, cached=True), event(rows=7, outcome="invalid_input")])
    assert value(m, "shipyard_predicted_rows_total", model="demo", version="1") == 8
    assert value(m, "shipyard_cache_hits_total", model="demo", version="1") == 1


def test_model_versions_beyond_max_models_are_counted_as_other() -> None:
    m = ServingMetrics(MetricsConfig(max_models=2))
    m.observe([event("a", 1), event("b", 1), event("c", 1), event("a", 2), event("a", 1)])
    got = samples(m)
    models = {dict(labels)["model"] + ":" + dict(labels)["version"]
              for name, labels in got if name == "shipyard_requests_total"}
    assert models == {"a:1", "b:1", "other:other"}
    assert value(m, "shipyard_requests_total", model="a", version="1", protocol="rest", outcome="ok") == 2
    assert value(m, "shipyard_requests_total", model="other", version="other", protocol="rest", outcome="ok") == 2
    m.batch("d", 4, 8, 2, 0.002, 0.01)
    m.model_loaded("e", 1, 0.5)
    assert value(m, "shipyard_batch_size_rows_count", model="other", version="other") == 1
    assert value(m, "shipyard_model_load_duration_seconds", model="other", version="other") == 0.5


def test_unknown_protocols_and_outcomes_are_counted_as_other() -> None:
    m = ServingMetrics()
    m.observe([event(transport="carrier-pigeon", outcome="very_odd_error")])
    assert value(m, "shipyard_requests_total", model="demo", version="1", protocol="other", outcome="other") == 1


def test_batches_record_rows_requests_mean_queue_time_and_duration() -> None:
    m = ServingMetrics()
    m.batch("demo", 1, size_rows=12, requests=4, queued_s=0.008, took_s=0.02)
    m.batch("demo", 1, size_rows=3, requests=1, queued_s=0.0, took_s=0.01)
    mv = {"model": "demo", "version": "1"}
    assert value(m, "shipyard_batch_size_rows_bucket", **mv, le="16.0") == 2
    assert value(m, "shipyard_batch_size_rows_bucket", **mv, le="8.0") == 1
    assert value(m, "shipyard_batch_size_rows_sum", **mv) == 15
    assert value(m, "shipyard_batch_requests_sum", **mv) == 5
    assert value(m, "shipyard_batch_queue_seconds_sum", **mv) == pytest.approx(0.002)  # 0.008 over 4 requests
    assert value(m, "shipyard_batch_duration_seconds_count", **mv) == 2


def test_in_flight_requests_go_up_and_down_per_model() -> None:
    m = ServingMetrics(MetricsConfig(max_models=1))
    m.inflight("demo", 1)
    m.inflight("demo", 1)
    m.inflight("demo", -1)
    m.inflight("another", 1)
    assert value(m, "shipyard_requests_in_flight", model="demo") == 1
    assert value(m, "shipyard_requests_in_flight", model="other") == 1


def test_model_load_time_is_the_latest_load() -> None:
    m = ServingMetrics()
    m.model_loaded("demo", 1, 2.5)
    m.model_loaded("demo", 1, 0.75)
    assert value(m, "shipyard_model_load_duration_seconds", model="demo", version="1") == 0.75


def test_observer_drops_are_read_at_each_scrape() -> None:
    m = ServingMetrics()
    observers = Observers([m])
    m.watch(observers)
    assert value(m, "shipyard_observer_dropped_events_total") == 0
    observers.dropped = 3
    assert value(m, "shipyard_observer_dropped_events_total") == 3


@pytest.mark.anyio
async def test_events_emitted_to_observers_reach_the_metrics() -> None:
    m = ServingMetrics()
    observers = Observers([m])
    m.watch(observers)
    await observers.start()
    for transport in ("rest", "graphql", "rest"):
        observers.emit(event(transport=transport))
    await observers.stop()
    assert value(m, "shipyard_requests_total", model="demo", version="1", protocol="rest", outcome="ok") == 2
    assert value(m, "shipyard_requests_total", model="demo", version="1", protocol="graphql", outcome="ok") == 1
    assert value(m, "shipyard_observer_delivered_events_total") == 3


def test_stream_consumer_series_appear_in_the_same_exposition() -> None:
    m = ServingMetrics()
    stream = StreamMetrics()
    m.include(stream.registry)
    stream.messages.labels("local://shipyard", "predicted").inc(4)
    assert value(m, "shipyard_stream_messages_total", source="local://shipyard", outcome="predicted") == 4


def test_stream_metrics_built_on_our_registry_are_shown_once() -> None:
    m = ServingMetrics()
    shared = StreamMetrics(m.registry)
    m.include(shared.registry)
    shared.lag.labels("local://shipyard").set(7)
    body, _ = m.render()
    assert body.count(b"# TYPE shipyard_stream_lag_messages gauge") == 1
    assert value(m, "shipyard_stream_lag_messages", source="local://shipyard") == 7


def test_including_a_registry_whose_names_clash_is_refused() -> None:
    m = ServingMetrics()
    m.include(StreamMetrics().registry)
    with pytest.raises(ValueError, match="shipyard_stream_messages"):
        m.include(StreamMetrics().registry)


def test_each_instance_has_its_own_registry_not_the_global_one() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    first.observe([event()])
    assert value(first, "shipyard_requests_total", model="demo", version="1", protocol="rest", outcome="ok") == 1
    assert value(second, "shipyard_requests_total", model="demo", version="1", protocol="rest", outcome="ok") is None
    assert REGISTRY.get_sample_value("shipyard_requests_total", {"model": "demo", "version": "1",
                                                                  "protocol": "rest", "outcome": "ok"}) is None


def test_build_info_and_start_time() -> None:
    m = ServingMetrics(clock=lambda: 1234.5)
    assert value(m, "shipyard_start_time_seconds") == 1234.5
    info = [dict(labels) for name, labels in samples(m) if name == "shipyard_build_info"]
    assert len(info) == 1 and set(info[0]) == {"version", "python"}


def test_disabled_metrics_record_nothing_but_still_show_the_stream_series() -> None:
    m = ServingMetrics(MetricsConfig(enabled=False))
    stream = StreamMetrics()
    m.include(stream.registry)
    stream.messages.labels("local://shipyard", "predicted").inc()
    m.observe([event()])
    m.batch("demo", 1, 1, 1, 0.0, 0.0)
    m.inflight("demo", 1)
    m.model_loaded("demo", 1, 1.0)
    names = {name for name, _ in samples(m)}
    assert names == {"shipyard_stream_messages_total", "shipyard_stream_messages_created"}


def test_render_speaks_openmetrics_when_the_scraper_asks() -> None:
    m = ServingMetrics()
    m.observe([event()])
    text, text_type = m.render()
    assert text_type.startswith("text/plain; version=0.0.4")
    om, om_type = m.render("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert om_type.startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n") and b"shipyard_requests_total{" in om


# -- through the REST app ----------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _scrape(home: Path, monitoring: MonitoringConfig) -> httpx.Response:
    settings = Settings(home=home, workers=1, monitoring=monitoring)
    reg = Registry.from_settings(settings)
    try:
        x = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [3.0, 1.0, 2.0, 0.0]})
        reg.register(LogisticRegression().fit(x, x["x1"] > x["x2"]), "m", sample=x)
        server = build_server(settings, ["m"], registry=reg)
        transport = httpx.ASGITransport(app=server.app)
        async with started(server), httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
            return await c.get("/metrics")
    finally:
        reg.close()


@pytest.mark.anyio
async def test_rest_metrics_serves_the_servers_series(tmp_path: Path) -> None:
    r = await _scrape(tmp_path / "home", MonitoringConfig())
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE shipyard_requests_total counter" in r.content
    assert b"# TYPE shipyard_request_duration_seconds histogram" in r.content
    assert b"shipyard_build_info{" in r.content


@pytest.mark.anyio
async def test_rest_metrics_leave_out_the_serving_series_when_disabled(tmp_path: Path) -> None:
    r = await _scrape(tmp_path / "home", MonitoringConfig(metrics=MetricsConfig(enabled=False)))
    assert r.status_code == 200
    assert b"shipyard_requests_total" not in r.content and b"shipyard_build_info" not in r.content

