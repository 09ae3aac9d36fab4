"""Traces over real OTLP/HTTP: a `shipyard serve` process exports its request spans to a receiver on loopback."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from shipyard.demo import FEATURES
from shipyard.protocol.grpc import codec
from shipyard.protocol.grpc import inference_pb2_grpc as pb_grpc
from shipyard.testing import run_server
from shipyard.types import InferenceRequest, Tensor

pytestmark = pytest.mark.integration

ROW = dict.fromkeys(FEATURES, 1.0)
STEPS = ["decode", "validate", "model", "encode"]  # not batched: no queue span


class Receiver:
    """A minimal OTLP/HTTP traces receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.accept(self.path, self.headers.get("Content-Type", ""), body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def accept(self, path: str, content_type: str, body: bytes) -> None:
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            self.paths.append(path)
            for rs in request.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    self.spans.extend((resource, s) for s in ss.spans)

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def traceparent(n: int) -> tuple[str, str, str]:
    """A caller's trace id, span id and the header naming them (sampled)."""
    trace_id, span_id = f"{n:032x}", f"{n + 0xabc:016x}"
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def test_a_served_process_exports_each_requests_span_tree_to_otlp(demo_home: Path, receiver: Receiver) -> None:
    env = {
        "SHIPYARD_MONITORING__TRACING__ENABLED": "true",
        "SHIPYARD_MONITORING__TRACING__ENDPOINT": receiver.url,
        "SHIPYARD_MONITORING__TRACING__SERVICE_NAME": "iris-api",
    }
    callers = {kind: traceparent(n) for n, kind in enumerate(["v1", "v2", "grpc", "failed"], start=0x51)}
    with run_server(demo_home, ["demo@champion"], env=env, grpc=True) as server:
        with httpx.Client(base_url=server.url) as c:
            v1 = c.post("/v1/models/demo:predict", json={"instances": [ROW]},
                        headers={"traceparent": callers["v1"][2]})
            v2 = c.post("/v2/models/demo/infer", headers={"traceparent": callers["v2"][2]}, json={
                "inputs": [{"name": f, "datatype": "FP64", "shape": [1], "data": [1.0]} for f in FEATURES]})
            failed = c.post("/v1/models/demo:predict", json={"instances": [{"sepal_length": 1.0}]},
                            headers={"traceparent": callers["failed"][2]})
            fresh = c.post("/v1/models/demo:predict", json={"instances": [ROW, ROW]})  # no traceparent
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = InferenceRequest([Tensor(f, np.array([1.0])) for f in FEATURES])
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                codec.encode_request(request, "demo"), metadata=(("traceparent", callers["grpc"][2]),), timeout=30)
        assert (v1.status_code, v2.status_code, failed.status_code, fresh.status_code) == (200, 200, 400, 200)
    assert server.process.returncode == 0  # SIGTERM: drained, flushed, exited cleanly

    assert set(receiver.paths) == {"/v1/traces"}
    assert {r["service.name"] for r, _ in receiver.spans} == {"iris-api"}
    roots = [s for _, s in receiver.spans if s.name == "shipyard.infer"]
    assert len(roots) == 5  # one per request, every one exported before the process ended
    by_trace = {s.trace_id.hex(): s for s in roots}
    for kind, (trace_id, span_id, _) in callers.items():
        root = by_trace[trace_id]  # the caller's trace, continued
        assert root.parent_span_id.hex() == span_id and root.kind == Span.SPAN_KIND_SERVER
        attrs = {a.key: a.value for a in root.attributes}
        assert attrs["shipyard.model"].string_value == "demo" and attrs["shipyard.version"].int_value == 1
        assert attrs["shipyard.route"].string_value == "champion"
        assert attrs["shipyard.transport"].string_value == ("grpc" if kind == "grpc" else "rest")
        children = sorted((s for _, s in receiver.spans if s.parent_span_id == root.span_id),
                          key=lambda s: s.start_time_unix_nano)
        assert all(s.trace_id == root.trace_id for s in children)
        if kind == "failed":
            assert root.status.code == root.status.STATUS_CODE_ERROR
            assert attrs["shipyard.outcome"].string_value == "invalid_input"
            assert [e.name for e in root.events] == ["exception"]
            assert [s.name for s in children] == ["decode", "validate"]
        else:
            assert attrs["shipyard.outcome"].string_value == "ok" and attrs["shipyard.rows"].int_value == 1
            assert [s.name for s in children] == STEPS
    for kind in ("v1", "v2"):  # REST answers with the span that served it, in the caller's trace
        response = v1 if kind == "v1" else v2
        trace_id = callers[kind][0]
        assert response.headers["traceparent"] == f"00-{trace_id}-{by_trace[trace_id].span_id.hex()}-01"
    new = [s for s in roots if s.trace_id.hex() not in {c[0] for c in callers.values()}]
    assert len(new) == 1 and not new[0].parent_span_id  # a new trace, started here
    assert fresh.headers["traceparent"].split("-")[1] == new[0].trace_id.hex()
