"""The dashboard in a real browser: headless Chromium (Debian's) against a ``shipyard serve`` on loopback.

One server for the module: 10 registered models, 100,000 predictions in its prediction log
(written beforehand by the server's own file sink, not by 100,000 HTTP calls), authentication
on with an admin key and a read-only key. The tests sign in through the login form, compare
every number of the first screen with ``GET /v1/overview`` for the same window, roll an alias
back through the page while a thread sends predictions, and check what a read-only key sees
and may do. Screenshots of each page go to the folder printed at the start (``SHIPYARD_UI_SHOTS``
to choose it); they are artifacts, not assertions.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from playwright.sync_api import Browser, Page, expect
from sklearn.linear_model import LogisticRegression

from shipyard import Graph
from shipyard.config import Settings
from shipyard.graphs import FanOut, Node
from shipyard.monitoring.alerts import AlertStore
from shipyard.monitoring.predlog_sinks import FileSink, default_folder, iso_time
from shipyard.registry import Registry
from shipyard.rollout.policy import TrafficPolicy
from shipyard.rollout.store import TrafficStore
from shipyard.security.keys import KeyStore
from shipyard.testing import run_server

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

MODELS = [f"model{i}" for i in range(10)]
PREDICTIONS = 100_000
_RNG = random.Random(3)
X = pd.DataFrame({"x1": [_RNG.uniform(0, 3) for _ in range(300)], "x2": [_RNG.uniform(0, 3) for _ in range(300)]})
Y = (X["x1"] > X["x2"]).astype(int)
FIELDS = ("requests_per_second", "error_percent", "p50_ms", "p99_ms")
REAL_BATCH = 150  # rows per request of the drifted traffic
LABELLED = 40
GRAPH_CALLS = 12


@dataclass
class Deployment:
    url: str
    admin: str
    reader: str
    shots: Path

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _fmt(value: Any) -> str:
    """What the page shows for a JSON value (the API rounds; the page prints it as given)."""
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def _write_log(settings: Settings, now: float) -> None:
    """100,000 records over the last 250 s, through the sink the server writes with (``FileSink``)."""
    rng = random.Random(7)
    sink = FileSink(default_folder(settings), max_file_bytes=1 << 30, max_total_bytes=1 << 31)
    try:
        batch = []
        for i in range(PREDICTIONS):
            model = MODELS[i % len(MODELS)]
            roll = rng.random()
            outcome = "internal" if roll < 0.01 * (1 + i % 3) else "invalid_input" if roll > 0.995 else "ok"
            batch.append({
                "prediction_id": uuid.uuid4().hex, "request_id": uuid.uuid4().hex,
                "time": iso_time(now - 250 * rng.random()), "model": model, "version": 2 if model == "model0" else 1,
                "route": f"{model}@champion", "transport": "rest", "principal": "loadgen",
                "inputs": {"x1": [rng.random()], "x2": [rng.random()]}, "outputs": {"predict": [rng.randint(0, 1)]},
                "latency_ms": round(rng.lognormvariate(0.5 + 0.1 * (i % len(MODELS)), 0.6), 3),
                "outcome": outcome, "error": None if outcome == "ok" else "failed", "rows": 1, "cached": False,
                "trace_id": None, "shadow": False, "policy_revision": None,
            })
            if len(batch) == 5_000:
                sink.write(batch)
                batch = []
        sink.write(batch)
    finally:
        sink.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("dashboard")
    home = folder / "home"
    settings = Settings(home=home, workers=1)
    reg = Registry.from_settings(settings)
    try:
        lr = LogisticRegression().fit(X, Y)
        for i, name in enumerate(MODELS):
            tags = {"latency_budget_ms": "3"} if i % 2 == 0 else {}
            reg.register(lr, name, sample=X.head(5), training_data=X, alias="champion", tags=tags)
        reg.register(LogisticRegression(C=0.5).fit(X, Y), "model0", sample=X.head(5), training_data=X,
                     alias="champion")
        reg.register(LogisticRegression(C=2.0).fit(X, Y), "model5", sample=X.head(5), training_data=X,
                     alias="challenger")
        # a graph served beside them: a vote of model0's two versions (its steps are logged as model0's events)
        reg.register(Graph([FanOut("vote", [Node("old", "model0:1"), Node("new", "model0:2")], join="vote")]),
                     "ensemble", alias="champion")
        TrafficStore(reg.database).put(TrafficPolicy.from_dict({
            "model": "model5", "arms": [{"name": "champion", "alias": "champion", "weight": 0.75},
                                        {"name": "challenger", "alias": "challenger", "weight": 0.25}]}), actor="test")
        keys = KeyStore(reg.database)
        admin = keys.create("ui-admin", ["admin"])[1]
        reader = keys.create("ui-reader", ["read", "predict"])[1]
        AlertStore(reg.database).open("p99-over-budget", "model3", 1, {"value": 9.5}, time.time())
    finally:
        reg.close()
    _write_log(settings, time.time())
    shots = Path(os.environ.get("SHIPYARD_UI_SHOTS") or folder / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when pytest captures output
        print(f"\ndashboard screenshots: {shots}")
    env = {"SHIPYARD_MONITORING__PREDICTION_LOG__ENABLED": "true", "SHIPYARD_SECURITY__AUTH__ENABLED": "true",
           "SHIPYARD_ASYNC_BROKER": "off", "SHIPYARD_MONITORING__FEEDBACK__ENABLED": "true",
           "SHIPYARD_MONITORING__DRIFT__WINDOW_SECONDS": "2", "SHIPYARD_MONITORING__DRIFT__MIN_ROWS": "100"}
    with run_server(home, [f"{m}@champion" for m in [*MODELS, "ensemble"]], env=env, ready_timeout=120) as server:
        deployment = Deployment(server.url, admin, reader, shots)
        _real_traffic(deployment)
        yield deployment


def _real_traffic(deployment: Deployment) -> None:
    """Shifted inputs to model1 until its drift monitor reports; labelled predictions of model2."""
    with deployment.api(deployment.admin) as api:
        deadline = time.monotonic() + 60
        while not api.get("/v1/models/model1/drift").json()["reports"]:
            assert time.monotonic() < deadline, "no drift report within 60 s"
            rows = [{"x1": 40.0 + i % 7, "x2": -30.0 - i % 5} for i in range(REAL_BATCH)]
            assert api.post("/v1/models/model1:predict", json={"instances": rows}).status_code == 200
            time.sleep(0.5)
        labels = []
        for i in range(LABELLED):
            answer = api.post("/v1/models/model2:predict", json={"instances": [{"x1": float(i % 4), "x2": 1.5}]})
            labels.append({"prediction_id": answer.headers["X-Prediction-ID"], "label": int(i % 4 > 1 or i % 5 == 0)})
        assert api.post("/v1/feedback", json={"feedback": labels}).status_code == 200
        one_row = {"instances": [{"x1": 2.0, "x2": 1.0}]}
        for _ in range(GRAPH_CALLS):
            assert api.post("/v1/models/ensemble:predict", json=one_row).status_code == 200
        # the last windows of that traffic close and are reported within a few seconds; then nothing moves
        previous, deadline = None, time.monotonic() + 30
        while time.monotonic() < deadline:
            drift = [m["drift"] for m in api.get("/v1/overview").json()["models"]]
            if drift == previous:
                break
            previous = drift
            time.sleep(3)


def _sign_in(browser: Browser, deployment: Deployment, token: str) -> Page:
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations of action forms
    page.goto(f"{deployment.url}/ui/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key or token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Served models")).to_be_visible()
    return page


def test_first_screen_shows_every_model_with_the_api_numbers(browser: Browser, deployment: Deployment) -> None:
    page = _sign_in(browser, deployment, deployment.admin)
    rows = page.locator("#overview tbody tr[data-model]")
    expect(rows).to_have_count(len(MODELS) + 1)
    end = rows.first.get_attribute("data-end")
    assert end is not None
    with deployment.api(deployment.admin) as api:
        doc = api.get("/v1/overview", params={"window": 300, "end": end}).json()
    assert [m["name"] for m in doc["models"]] == ["ensemble", *MODELS]
    doc["models"] = doc["models"][1:]  # the ten models first; then the graph
    assert sum(m["traffic"]["requests"] for m in doc["models"]) > PREDICTIONS
    for m in doc["models"]:
        row = page.locator(f'#overview tr[data-model="{m["name"]}"]')
        for field in FIELDS:
            assert row.locator(f'[data-field="{field}"]').inner_text() == _fmt(m["traffic"][field]), (m["name"], field)
        assert row.locator('[data-field="latency_budget_ms"]').inner_text() == _fmt(m["latency_budget_ms"])
        assert row.locator('[data-field="open_alerts"]').inner_text() == str(m["alerts"]["open"])
        assert row.locator('[data-field="drift"]').inner_text() == m["drift"]["status"]
        assert row.locator('[data-field="label_coverage"]').inner_text() == _fmt(m["realized"]["label_coverage"])
        realized = m["realized"]
        shown = f"{realized['metric']} {_fmt(realized['value'])}" if realized["metric"] else "—"
        assert row.locator('[data-field="realized"]').inner_text() == shown
        assert row.locator('[data-field="version"]').inner_text() == f"{m['ref']} → v{m['version']}"
        assert row.locator('[data-field="weight"]').all_inner_texts() == [_fmt(a["weight"]) for a in m["arms"]]
    assert doc["models"][0]["version"] == 2 and doc["models"][3]["alerts"]["open"] == 1
    assert [(a["name"], a["version"], a["weight"]) for a in doc["models"][5]["arms"]] == [
        ("champion", 1, 0.75), ("challenger", 2, 0.25)]
    assert doc["models"][1]["drift"]["status"] == "drifted"
    assert doc["models"][2]["realized"]["metric"] == "accuracy" and doc["models"][2]["realized"]["labelled"] == LABELLED
    with page.expect_response(lambda r: "/ui/fragments/overview" in r.url, timeout=15_000):  # htmx refreshes
        pass
    expect(rows).to_have_count(len(MODELS) + 1)
    assert doc["models"][0]["traffic"]["requests"] == PREDICTIONS // len(MODELS) + 2 * GRAPH_CALLS  # + steps
    page.screenshot(path=deployment.shots / "overview.png", full_page=True)


def test_model_and_audit_pages_render_charts_log_and_entries(browser: Browser, deployment: Deployment) -> None:
    page = _sign_in(browser, deployment, deployment.admin)
    page.get_by_role("link", name="model0", exact=True).click()
    expect(page.get_by_role("heading", name="model0", exact=True)).to_be_visible()
    expect(page.locator("[data-chart=latency] canvas")).to_have_count(1)  # uPlot drew, from the shipped file
    expect(page.locator("#versions tbody tr")).to_have_count(2)
    expect(page.locator("#log tbody tr")).to_have_count(50)
    page.screenshot(path=deployment.shots / "model.png", full_page=True)
    page.get_by_label("outcome").fill("internal")
    page.get_by_role("button", name="Filter").click()
    outcomes = page.locator("#log tbody tr td:nth-child(4)").all_inner_texts()
    assert outcomes and set(outcomes) == {"internal"}
    page.goto(f"{deployment.url}/ui/models/model2")  # labelled: realized accuracy over time, per version
    expect(page.locator("[data-chart=realized] canvas")).to_have_count(1)
    expect(page.locator("#quality")).to_contain_text("accuracy=0.9")
    page.screenshot(path=deployment.shots / "model-labels.png", full_page=True)
    page.goto(f"{deployment.url}/ui/models/ensemble")
    steps = page.locator("#steps li")
    expect(steps).to_have_count(2)
    expect(steps.first).to_contain_text(f"old (model0:1): {GRAPH_CALLS} calls")
    # model0:2 is also the version the 10,000 logged model0 predictions name
    expect(steps.last).to_contain_text(f"new (model0:2): {PREDICTIONS // len(MODELS) + GRAPH_CALLS} calls")
    page.screenshot(path=deployment.shots / "graph.png", full_page=True)
    page.goto(f"{deployment.url}/ui/audit")
    expect(page.locator("#chain")).to_contain_text("intact")
    expect(page.locator("#audit tbody tr").first).to_be_visible()
    page.screenshot(path=deployment.shots / "audit.png", full_page=True)


def test_model_page_draws_reference_and_current_distributions_of_a_drifted_feature(
        browser: Browser, deployment: Deployment) -> None:
    page = _sign_in(browser, deployment, deployment.admin)
    page.goto(f"{deployment.url}/ui/models/model1")
    with deployment.api(deployment.admin) as api:
        report = api.get("/v1/models/model1/drift").json()["reports"][0]
        drifted = [f["feature"] for f in report["report"]["features"] if f["drifted"]]
        assert drifted, report
        feature = drifted[0]
        chart = page.locator(f'[data-chart=distribution][data-feature="{feature}"]')
        expect(chart.locator("canvas")).to_have_count(1)  # uPlot drew it from the embedded document
        embedded = page.evaluate("JSON.parse(document.getElementById('drift-distributions').textContent)")
        # the page shows the window of the newest report it was rendered with; the route answers the same window
        doc = api.get("/v1/models/model1/drift/distributions",
                      params={"version": embedded["version"], "arm": embedded["arms"][0],
                              "start": embedded["start"]}).json()
    drawn = page.evaluate(f"window.shipyardCharts['distribution:{feature}'].data")
    route = next(f for f in doc["features"] if f["feature"] == feature)
    assert drawn == [list(range(len(route["labels"]))), route["reference"]["shares"], route["current"]["shares"]]
    assert route["current"]["rows"] > 0 and route["reference"]["rows"] > 0
    shares = route["current"]["shares"]
    assert max(shares[0], shares[-1]) > 0.9  # the shifted inputs sit far outside the reference's bins
    expect(page.locator("#drift")).to_contain_text(f"v{doc['version']} / {doc['arms'][0]}")
    chart.screenshot(path=deployment.shots / "model-drift-distribution.png")
    page.screenshot(path=deployment.shots / "model-drift.png", full_page=True)


def _load(url: str, token: str, stop: threading.Event, results: list[int], limit: int) -> None:
    """Predictions one after another until ``stop`` or ``limit`` of them (loopback, bounded)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
        while not stop.is_set() and len(results) < limit:
            try:
                answer = http.post("/v1/models/model0:predict", json={"instances": [{"x1": 1.0, "x2": 0.0}]})
                results.append(answer.status_code)
            except httpx.HTTPError:
                results.append(0)


def test_rollback_through_the_page_under_load_fails_no_request(browser: Browser, deployment: Deployment) -> None:
    page = _sign_in(browser, deployment, deployment.admin)
    page.goto(f"{deployment.url}/ui/models/model0")
    with deployment.api(deployment.admin) as api:
        assert api.get("/v1/models/model0/aliases").json()["aliases"] == {"champion": 2}
    stop, results = threading.Event(), []
    loader = threading.Thread(target=_load, args=(deployment.url, deployment.reader, stop, results, 400))
    loader.start()
    try:
        deadline = time.monotonic() + 20
        while len(results) < 50 and time.monotonic() < deadline:  # the rollback lands amid traffic
            time.sleep(0.02)
        page.get_by_role("button", name="Roll back champion").click()
        expect(page.get_by_role("status")).to_contain_text("rolled back model0@champion")
    finally:
        loader.join(timeout=30)
        stop.set()
        loader.join()
    assert len(results) >= 50 and results.count(200) == len(results), sorted(set(results))
    with deployment.api(deployment.admin) as api:
        assert api.get("/v1/models/model0/aliases").json()["aliases"] == {"champion": 1}
        entries = api.get("/v1/audit", params={"action": "alias.rollback", "target": "model0"}).json()["entries"]
    assert entries and entries[0]["actor"] == "ui-admin" and entries[0]["target"] == "model0@champion"
    expect(page.locator("#aliases tbody tr").first).to_contain_text("rollback")
    page.goto(f"{deployment.url}/ui/audit?action=alias.rollback")
    expect(page.locator("#audit tbody")).to_contain_text("model0@champion")


def test_rollout_paused_then_aborted_from_the_page(browser: Browser, deployment: Deployment) -> None:
    page = _sign_in(browser, deployment, deployment.admin)
    page.goto(f"{deployment.url}/ui/models/model5")
    expect(page.locator("#experiment")).to_contain_text("split, running")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_contain_text("rollout of model5: pause")
    expect(page.locator("#experiment")).to_contain_text("paused")
    with deployment.api(deployment.admin) as api:
        assert api.get("/v1/experiments/model5").json()["state"] == "paused"
    page.get_by_role("button", name="Abort").click()
    expect(page.get_by_role("status")).to_contain_text("rollout of model5: abort")
    expect(page.get_by_role("button", name="Abort")).to_have_count(0)  # a finished rollout offers no action
    with deployment.api(deployment.admin) as api:
        assert api.get("/v1/experiments/model5").json()["state"] == "aborted"
        changes = api.get("/v1/audit", params={"action": "rollout.change", "target": "model5"}).json()["entries"]
        assert [e["actor"] for e in changes[:2]] == ["ui-admin", "ui-admin"]
        assert api.post("/v1/experiments/model5/pause").status_code == 409  # aborted: nothing to pause


def test_read_only_key_sees_no_actions_and_the_api_refuses_them(browser: Browser, deployment: Deployment) -> None:
    page = _sign_in(browser, deployment, deployment.reader)
    page.goto(f"{deployment.url}/ui/models/model1")
    expect(page.get_by_role("heading", name="model1", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Roll back champion")).to_have_count(0)
    expect(page.locator("form[data-confirm]")).to_have_count(0)
    expect(page.locator("#aliases")).to_contain_text("needs the admin scope")
    page.screenshot(path=deployment.shots / "model-read-only.png", full_page=True)
    with deployment.api(deployment.reader) as api:
        assert api.post("/v1/models/model1/aliases/champion/rollback").status_code == 403
        assert api.put("/v1/models/model1/aliases/champion", json={"version": 1}).status_code == 403
        assert api.get("/v1/models/model1/predictions").status_code == 403
    # the page's own action route forwards the reader's key: the API refuses, nothing moves
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "shipyard_ui_csrf")
    answer = page.request.post(f"{deployment.url}/ui/models/model1/aliases/champion/rollback", form={"csrf": csrf})
    assert "needs the &#39;admin&#39; scope" in answer.text() or "needs the 'admin' scope" in answer.text()


def test_forms_without_the_csrf_token_or_credential_are_refused(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=10) as http:
        assert http.get("/ui/").status_code == 303  # to the login page
        assert http.get("/v1/overview").status_code == 401
    cookies = {"shipyard_ui_token": deployment.admin, "shipyard_ui_csrf": "a" * 43}
    with httpx.Client(base_url=deployment.url, timeout=10, cookies=cookies) as http:
        refused = http.post("/ui/models/model2/aliases/champion/rollback", data={"csrf": "b" * 43})
        assert refused.status_code == 403 and "CSRF" in refused.text
        cross = http.post("/ui/models/model2/aliases/champion/rollback", data={"csrf": "a" * 43},
                          headers={"Origin": "http://elsewhere.example"})
        assert cross.status_code == 403
    with deployment.api(deployment.admin) as api:
        assert api.get("/v1/models/model2/aliases").json()["aliases"] == {"champion": 1}


def test_pages_and_graphiql_load_nothing_from_another_host(browser: Browser, deployment: Deployment) -> None:
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {deployment.admin}"})
    elsewhere: list[str] = []

    def only_here(route: Any) -> None:  # an offline machine: anything not from the server fails
        if route.request.url.startswith(deployment.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_here)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for path in ("/ui/", "/ui/models/model1", "/ui/audit"):
        page.goto(deployment.url + path)
        page.wait_for_load_state("networkidle")
    page.goto(f"{deployment.url}/graphql", wait_until="networkidle")
    expect(page.locator(".graphiql-container")).to_be_visible()
    expect(page.get_by_role("button", name="Execute query")).to_be_visible()
    page.screenshot(path=deployment.shots / "graphiql.png")
    assert elsewhere == [] and errors == []
    context.close()
