"""Authentication on every protocol, against a real ``shipyard serve`` with API keys and JWTs on.

* Every REST route, every gRPC method and every GraphQL root field is enumerated from the
  server's own tables (the Starlette routes, the service descriptor, the schema), and each is
  checked: 401/UNAUTHENTICATED without credentials, 403/PERMISSION_DENIED (GraphQL: FORBIDDEN)
  with a credential that lacks its scope, open routes answer without any. None may be missing
  from the scope tables.
* A matrix of bad and good credentials (malformed headers, revoked and expired keys, JWTs that
  are expired, for another audience, badly signed, ``alg: none``, HMAC-signed with the public
  key, huge) on REST, gRPC and GraphQL: each gets its status, none a 5xx, and the server answers
  a good request afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt as pyjwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shipyard.config import Settings
from shipyard.demo import FEATURES
from shipyard.protocol.grpc import inference_pb2 as pb
from shipyard.registry import Registry
from shipyard.security.keys import KeyStore
from shipyard.serving.graphql.app import SCHEMA
from shipyard.serving.graphql.schema import FIELD_SCOPES
from shipyard.serving.grpc.service import METHOD_SCOPES
from shipyard.serving.rest.routes import Endpoint
from shipyard.serving.server import build_server
from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration

ISSUER, AUDIENCE = "https://idp.test", "shipyard-test"
ROW = dict(zip(FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True))


@dataclass
class World:
    server: RunningServer
    keys: dict[str, str]
    """Name -> a token: p (predict), r (read), f (feedback), a (admin), o (predict, model 'other' only),
    slow (predict, 1 request/s), revoked, expired."""
    signing_key: Any
    other_key: Any
    public_pem: bytes
    endpoints: list[Endpoint]


def _token(private_key: Any, **claims: Any) -> str:
    now = time.time()
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(now), "exp": int(now) + 300,
               "scope": "predict read", **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(payload, private_key, algorithm="RS256", headers={"kid": "k1"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(alg: str, secret: bytes | None = None) -> str:
    """A token whose header says ``alg`` (``none``, or HMAC keyed with ``secret``)."""
    now = int(time.time())
    head = _b64(orjson.dumps({"alg": alg, "typ": "JWT", "kid": "k1"}))
    body = _b64(orjson.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300,
                              "scope": "predict read admin"}))
    signing_input = f"{head}.{body}".encode()
    signature = "" if secret is None else _b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return f"{head}.{body}.{signature}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, demo_home: Path) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("auth")
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / "idp.pem").write_bytes(public_pem)
    reg = Registry.from_settings(Settings(home=demo_home))
    store = KeyStore(reg.database)
    keys = {name: store.create(f"t-{name}", scopes, models=models, rate_per_second=rate)[1]
            for name, scopes, models, rate in [
                ("p", ["predict"], None, None), ("r", ["read"], None, None), ("f", ["feedback"], None, None),
                ("a", ["admin"], None, None), ("o", ["predict", "read"], ["other"], None),
                ("slow", ["predict"], None, 0.2), ("revoked", ["predict"], None, None)]}
    store.revoke("t-revoked")
    past = KeyStore(reg.database, clock=lambda: time.time() - 7200)
    keys["expired"] = past.create("t-expired", ["predict"], expires_at=time.time() - 3600)[1]
    reg.close()
    env = {
        "SHIPYARD_SECURITY__AUTH__ENABLED": "true",
        "SHIPYARD_SECURITY__AUTH__JWT__KEY_FILE": str(folder / "idp.pem"),
        "SHIPYARD_SECURITY__AUTH__JWT__ISSUER": ISSUER,
        "SHIPYARD_SECURITY__AUTH__JWT__AUDIENCE": AUDIENCE,
        "SHIPYARD_MONITORING__FEEDBACK__ENABLED": "true",
    }
    settings = Settings.load(None, {**env, "SHIPYARD_HOME": str(demo_home)})
    endpoints = build_server(settings, ["demo"]).endpoints  # the route table the app routes (not started)
    with run_server(demo_home, ["demo"], env=env, grpc=True) as server:
        yield World(server, keys, signing_key, other_key, public_pem, endpoints)


def _rest(world: World, method: str, path: str, token: str | None = None, *, header: str | None = None,
          body: Any = None) -> httpx.Response:
    headers = {}
    if header is not None:
        headers["Authorization"] = header
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, world.server.url + path, headers=headers,
                         content=None if body is None else orjson.dumps(body), timeout=30)


def _path(endpoint: Endpoint) -> str:
    return (endpoint.path.replace("{name}", "demo").replace("{version}", "1").replace("{job_id}", "nosuchjob")
            .replace("{alias}", "nosuchalias"))


#: For each need, a key that lacks it.
WRONG_SCOPE = {"predict": "r", "read": "p", "feedback": "r", "admin": "p", "metrics": "p"}


def test_every_rest_route_declares_its_scope_and_enforces_it(world: World) -> None:
    paths = {(m, e.path) for e in world.endpoints for m in e.methods}
    assert ("POST", "/v2/models/{name}/infer") in paths and ("POST", "/v1/feedback") in paths
    assert ("POST", "/v1/models/{name}/jobs") in paths and ("POST", "/graphql") in paths
    for e in world.endpoints:
        for method in e.methods:
            path = _path(e)
            bare = _rest(world, method, path)
            if e.scope == "open" or e.scope == "metrics":  # /metrics is open by default
                assert bare.status_code not in (401, 403), (method, e.path, bare.text)
                continue
            assert bare.status_code == 401, (method, e.path, bare.status_code, bare.text)
            assert bare.headers["www-authenticate"].startswith("Bearer")
            assert bare.json()["kind"] == "unauthenticated"
            if e.scope == "authenticated":  # GraphQL: its fields check their own scopes (below)
                continue
            wrong = _rest(world, method, path, world.keys[WRONG_SCOPE[e.scope]])
            assert wrong.status_code == 403, (method, e.path, wrong.status_code, wrong.text)
            assert f"needs the '{e.scope}' scope" in wrong.json()["error"]
            right = _rest(world, method, path, world.keys["a"])  # admin implies every scope
            assert right.status_code not in (401, 403), (method, e.path, right.text)


def test_the_openapi_document_says_which_routes_need_credentials(world: World) -> None:
    spec = _rest(world, "GET", "/openapi.json", world.keys["r"]).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["security"] == [{"bearer": []}] and {"401", "403", "429"} <= set(infer["responses"])
    assert "security" not in spec["paths"]["/v2/health/ready"]["get"]


def _grpc_call(world: World, method: str, token: str | None, request: Any = None) -> grpc.RpcError | Any:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(world.server.grpc_target) as channel:
        path = f"/inference.GRPCInferenceService/{method}"
        payload = (request or pb.ModelReadyRequest()).SerializeToString()
        try:
            if method == "ModelStreamInfer":
                call = channel.stream_stream(path)
                return list(call(iter([payload]), metadata=metadata, timeout=30))
            return channel.unary_unary(path)(payload, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc


def test_every_grpc_method_declares_its_scope_and_enforces_it(world: World) -> None:
    methods = [m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    assert sorted(methods) == sorted(METHOD_SCOPES)  # none missing, none stale
    for method in methods:
        need = METHOD_SCOPES[method]
        bare = _grpc_call(world, method, None)
        if need == "open":
            assert not isinstance(bare, grpc.RpcError) or bare.code() != grpc.StatusCode.UNAUTHENTICATED, method
            continue
        assert isinstance(bare, grpc.RpcError) and bare.code() == grpc.StatusCode.UNAUTHENTICATED, method
        trailing = dict(bare.trailing_metadata() or ())
        assert trailing["shipyard-error-kind"] == "unauthenticated"
        wrong = _grpc_call(world, method, world.keys[WRONG_SCOPE[need]])
        assert isinstance(wrong, grpc.RpcError) and wrong.code() == grpc.StatusCode.PERMISSION_DENIED, method
        right = _grpc_call(world, method, world.keys["a"])
        assert not isinstance(right, grpc.RpcError) or right.code() not in (
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), method


GRAPHQL_QUERIES = {
    "models": "{ models { name } }",
    "model": '{ model(name: "demo") { name } }',
    "predict": 'query($r: JSON!) { predict(model: "demo", records: $r) { predictions } }',
    "explain": 'query($r: JSON!) { explain(model: "demo", records: $r) { method } }',
}


def _graphql(world: World, query: str, token: str | None) -> httpx.Response:
    return _rest(world, "POST", "/graphql", token, body={"query": query, "variables": {"r": [ROW]}})


def test_every_graphql_field_declares_its_scope_and_enforces_it(world: World) -> None:
    fields = list(SCHEMA._schema.query_type.fields)  # graphql-core's schema: what clients can ask
    assert sorted(fields) == sorted(FIELD_SCOPES)
    for field, need in FIELD_SCOPES.items():
        query = GRAPHQL_QUERIES[field]
        assert _graphql(world, query, None).status_code == 401
        wrong = _graphql(world, query, world.keys[WRONG_SCOPE[need]])
        assert wrong.status_code == 200
        codes = [e["extensions"]["code"] for e in wrong.json()["errors"]]
        assert codes == ["FORBIDDEN"], (field, wrong.text)
        right = _graphql(world, query, world.keys["a"]).json()
        assert all(e["extensions"]["code"] != "FORBIDDEN" for e in right.get("errors", [])), (field, right)


# -- the credential matrix -------------------------------------------------------------------------

def _cases(world: World) -> list[tuple[str, str | None, int]]:
    """(case, Authorization header or None, the HTTP status it must get on a prediction)."""
    key = world.keys["p"]
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    good, other = world.signing_key, world.other_key
    return [
        ("no header", None, 401),
        ("empty header", "", 401),
        ("basic scheme", "Basic dXNlcjpwYXNz", 401),
        ("bearer without token", "Bearer", 401),
        ("two tokens", f"Bearer {key} {key}", 401),
        ("garbage key", "Bearer sy_garbage", 401),
        ("wrong secret", f"Bearer {wrong_secret}", 401),
        ("revoked key", f"Bearer {world.keys['revoked']}", 401),
        ("expired key", f"Bearer {world.keys['expired']}", 401),
        ("huge token", "Bearer " + "x" * 9000, 401),
        ("jwt expired", f"Bearer {_token(good, exp=int(time.time()) - 600, iat=int(time.time()) - 900)}", 401),
        ("jwt wrong audience", f"Bearer {_token(good, aud='someone-else')}", 401),
        ("jwt wrong issuer", f"Bearer {_token(good, iss='https://evil.test')}", 401),
        ("jwt wrong signature", f"Bearer {_token(other)}", 401),
        ("jwt alg none", f"Bearer {_unsigned('none')}", 401),
        ("jwt hs256 keyed with the public key", f"Bearer {_unsigned('HS256', world.public_pem)}", 401),
        ("jwt malformed", "Bearer aaa.bbb.ccc", 401),
        ("jwt without sub", f"Bearer {_token(good, sub=None)}", 401),
        ("jwt not yet valid", f"Bearer {_token(good, nbf=int(time.time()) + 3600)}", 401),
        ("jwt without known scopes", f"Bearer {_token(good, scope='openid profile')}", 403),
        ("jwt read only", f"Bearer {_token(good, scope='read')}", 403),
        ("jwt for another model", f"Bearer {_token(good, models=['other'])}", 403),
        ("key for another model", f"Bearer {world.keys['o']}", 403),
        ("read key", f"Bearer {world.keys['r']}", 403),
        ("feedback key", f"Bearer {world.keys['f']}", 403),
        ("predict key", f"Bearer {key}", 200),
        ("admin key", f"Bearer {world.keys['a']}", 200),
        ("lower-case scheme", f"bearer {key}", 200),
        ("jwt", f"Bearer {_token(good)}", 200),
        ("jwt with a list of scopes", f"Bearer {_token(good, scope=['predict'])}", 200),
    ]


GRPC_STATUS = {200: grpc.StatusCode.OK, 401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}


def _infer_request() -> pb.ModelInferRequest:
    import numpy as np

    msg = pb.ModelInferRequest(model_name="demo")
    for name in FEATURES:
        msg.inputs.add(name=name, datatype="FP64", shape=[1])
        msg.raw_input_contents.append(np.array([ROW[name]], dtype="<f8").tobytes())
    return msg


def test_the_credential_matrix_on_rest_grpc_and_graphql(world: World) -> None:
    cases = _cases(world)
    assert len(cases) >= 30
    failures = []
    for case, header, status in cases:
        rest = _rest(world, "POST", "/v1/models/demo:predict", header=header, body={"instances": [ROW]})
        if rest.status_code != status:
            failures.append(f"REST {case}: {rest.status_code} {rest.text[:200]}")
        metadata = () if header is None else (("authorization", header),)
        with grpc.insecure_channel(world.server.grpc_target) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=pb.ModelInferRequest.SerializeToString,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            try:
                infer(_infer_request(), metadata=metadata, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
        if code != GRPC_STATUS[status]:
            failures.append(f"gRPC {case}: {code}")
        headers = {} if header is None else {"Authorization": header}
        gql = httpx.post(world.server.url + "/graphql", headers=headers, timeout=30, json={
            "query": GRAPHQL_QUERIES["predict"], "variables": {"r": [ROW]}})
        got = gql.status_code if gql.status_code != 200 else (
            403 if any(e["extensions"]["code"] == "FORBIDDEN" for e in gql.json().get("errors", [])) else
            200 if gql.json().get("data", {}).get("predict") else 500)
        if got != status:
            failures.append(f"GraphQL {case}: {gql.status_code} {gql.text[:200]}")
    assert not failures, "\n".join(failures)
    # nothing above hurt the server: it still answers, and it never answered a 5xx
    ok = _rest(world, "POST", "/v1/models/demo:predict", world.keys["p"], body={"instances": [ROW]})
    assert ok.status_code == 200 and ok.json()["predictions"]
    assert "Traceback" not in world.server.log()


def test_a_large_token_over_grpc_is_always_unauthenticated_and_one_over_the_limit_always_refused(world: World) -> None:
    # gRPC's default metadata limits refuse headers between 8 and 16 KiB at random (a 9 KB token was
    # RESOURCE_EXHAUSTED about one call in five); the server sets one limit, so the answer is certain
    def codes(size: int, calls: int) -> set[grpc.StatusCode]:
        seen = set()
        with grpc.insecure_channel(world.server.grpc_target) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=pb.ModelInferRequest.SerializeToString,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            for _ in range(calls):
                with pytest.raises(grpc.RpcError) as refused:
                    infer(_infer_request(), metadata=(("authorization", "Bearer " + "x" * size),), timeout=30)
                seen.add(refused.value.code())
        return seen

    assert codes(15_000, 40) == {grpc.StatusCode.UNAUTHENTICATED}
    assert codes(17_000, 5) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_a_key_over_its_rate_gets_429_with_retry_after_on_rest_and_resource_exhausted_on_grpc(world: World) -> None:
    slow = world.keys["slow"]  # 0.2 requests a second: a bucket of one
    first = _rest(world, "POST", "/v1/models/demo:predict", slow, body={"instances": [ROW]})
    second = _rest(world, "POST", "/v1/models/demo:predict", slow, body={"instances": [ROW]})
    assert first.status_code == 200
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert second.json()["kind"] == "rate_limited"
    with grpc.insecure_channel(world.server.grpc_target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            infer(_infer_request(), metadata=(("authorization", f"Bearer {slow}"),), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(refused.value.trailing_metadata() or ())["shipyard-error-kind"] == "rate_limited"
    # other keys are not slowed by it
    other = _rest(world, "POST", "/v1/models/demo:predict", world.keys["p"], body={"instances": [ROW]})
    assert other.status_code == 200


def test_a_model_restricted_key_sees_only_its_models(world: World) -> None:
    listing = _rest(world, "GET", "/v1/models", world.keys["o"]).json()
    assert listing["models"] == []  # it may use 'other' only, which this server does not serve
    assert _rest(world, "GET", "/v2/models/demo", world.keys["o"]).status_code == 403
    assert [m["name"] for m in _rest(world, "GET", "/v1/models", world.keys["r"]).json()["models"]] == ["demo"]


def test_admin_routes_move_aliases_and_the_audit_log_names_who_from_where(world: World) -> None:
    admin = world.keys["a"]
    moved = _rest(world, "PUT", "/v1/models/demo/aliases/staging", admin, body={"version": 1})
    assert moved.status_code == 200, moved.text
    assert moved.json()["alias"] == "staging" and moved.json()["version"] == 1
    assert _rest(world, "GET", "/v1/models/demo/aliases", admin).json()["aliases"]["staging"] == 1
    bad = _rest(world, "PUT", "/v1/models/demo/aliases/staging", admin, body={"version": "one"})
    assert bad.status_code == 400 and bad.json()["field"] == "version"
    assert _rest(world, "DELETE", "/v1/models/demo/aliases/staging", admin).status_code == 200
    entries = _rest(world, "GET", "/v1/audit?target=demo&action=alias", admin).json()["entries"]
    assert [(e["action"], e["target"], e["actor"]) for e in entries[:2]] == [
        ("alias.delete", "demo@staging", "t-a"), ("alias.set", "demo@staging", "t-a")]
    assert entries[0]["source"].startswith("127.0.0.1:")
    created = _rest(world, "GET", "/v1/audit?action=key.create", admin).json()["entries"]
    assert {e["details"]["name"] for e in created} >= {"t-p", "t-a", "t-expired"}
    assert all("sy_" not in orjson.dumps(e).decode() for e in created)  # no secret in the log
    verified = _rest(world, "GET", "/v1/audit/verify", admin).json()
    assert verified["ok"] and verified["checked"] == verified["head_seq"] >= 3
    # a predict key may not move aliases, read the log, or use the admin routes at all
    refused = _rest(world, "PUT", "/v1/models/demo/aliases/staging", world.keys["p"], body={"version": 1})
    assert refused.status_code == 403


def test_the_cli_predicts_against_an_authenticated_server_with_a_token(world: World) -> None:
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "shipyard", "predict", "demo", "--url", world.server.url,
           "--data", orjson.dumps([ROW]).decode()]
    env = {k: v for k, v in os.environ.items() if k != "SHIPYARD_TOKEN"}
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr and "no credentials" in refused.stderr
    answered = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              env={**env, "SHIPYARD_TOKEN": world.keys["p"]})
    assert answered.returncode == 0, answered.stderr
    assert orjson.loads(answered.stdout)["predictions"] == [0]
    assert "unknown environment variable" not in answered.stderr
