"""Where a graph's steps may be placed: the host allowlist a server checks, and a pool's private folders."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from shipyard.config import Settings
from shipyard.errors import ConfigError
from shipyard.graphs import pool
from shipyard.graphs.remote import HOSTS_SETTING, check_placements
from shipyard.security.egress import HostAllowList, IPAddress


def pinned(host: str, port: int) -> list[IPAddress]:
    return {"models-b.example.com": [ipaddress.ip_address("8.8.8.8")],
            "inside.example.com": [ipaddress.ip_address("10.0.0.5")]}[host]  # type: ignore[return-value]


def allow(*hosts: str) -> HostAllowList:
    return HostAllowList(hosts, setting=HOSTS_SETTING, resolver=pinned)


def test_steps_on_listed_hosts_pass_in_every_url_form() -> None:
    check_placements({"a": "grpc://models-b.example.com:8001", "b": "grpcs://models-b.example.com",
                      "c": "https://models-b.example.com:8443", "d": "grpc://127.0.0.1:9000"},
                     allow("models-b.example.com", "127.0.0.1"))
    check_placements({}, allow())  # a graph without remote steps needs nothing listed


@pytest.mark.parametrize(("hosts", "url", "message"), [
    ((), "grpc://models-b.example.com:8001",
     "step 'model' placement grpc://models-b.example.com:8001 refused: security.model_url_hosts is empty"),
    (("other.example.com",), "grpc://models-b.example.com:8001",
     "models-b.example.com (at 8.8.8.8) is not an allowed host; list it in security.model_url_hosts"),
    (("models-b.example.com", "127.0.0.2"), "grpc://127.0.0.1:8001",
     "127.0.0.1 is an internal address; list it in security.model_url_hosts"),
    (("inside.example.com",), "grpcs://inside.example.com:8443",
     "inside.example.com resolves to 10.0.0.5, a loopback, private or otherwise internal address"),
])
def test_a_step_on_a_host_not_allowed_is_refused_naming_step_host_and_setting(
        hosts: tuple[str, ...], url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_placements({"model": url}, allow(*hosts))
    assert str(info.value).startswith("graph refused: step 'model' placement ")
    assert message in str(info.value)


def test_a_remote_step_sends_the_value_of_its_token_env_and_an_unset_one_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard.graphs import Node
    from shipyard.graphs.plan import _token

    node = Node("model", "lr:1", placement={"url": "grpc://b:8001", "token_env": "MODELS_B_TOKEN"})
    monkeypatch.setenv("MODELS_B_TOKEN", " sy_abc ")
    assert _token(node) == "sy_abc" and _token(Node("local", "lr:1")) is None
    monkeypatch.delenv("MODELS_B_TOKEN")
    with pytest.raises(ConfigError) as info:
        _token(node)
    assert str(info.value) == ("step 'model' (placed on grpc://b:8001) sends the key in the environment variable "
                               "MODELS_B_TOKEN (placement.token_env), which is not set here")


def test_pool_folders_are_private_under_home_and_stale_ones_are_removed(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    root = tmp_path / "home" / "run" / "pools"
    root.mkdir(parents=True)
    host = os.uname().nodename
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1  # no process has the largest pid
    assert not pool._alive(dead)
    stale, live, other = root / f"{host}-{dead}-abc123", root / f"{host}-{os.getpid()}-def456", root / f"far-{dead}-x"
    for folder in (stale, live, other):
        folder.mkdir()
    made = Path(pool._new_folder(settings))
    assert made.parent == root and made.name.startswith(f"{host}-{os.getpid()}-")
    assert made.stat().st_mode & 0o777 == 0o700
    assert not stale.exists() and live.exists() and other.exists()  # another host's folders are its own


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_server_refuses_to_load_a_graph_with_a_step_on_a_host_not_allowed(tmp_path: Path) -> None:
    from tests.fixtures.graph_steps import Scale, data

    from shipyard.config import SecurityConfig
    from shipyard.graphs import Graph, Node
    from shipyard.registry import Registry
    from shipyard.serving.server import build_server, started

    home = tmp_path / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(Scale(), "scaler", sample=data(5, seed=1)[0])
        reg.register(Graph([Node("far", "scaler:1", placement="grpc://127.0.0.1:9")]), "g")
        base = Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker="")
        with pytest.raises(ConfigError) as info:
            async with started(build_server(base, ["g"], registry=reg)):
                pass
        assert str(info.value) == (
            "graph refused: step 'far' placement grpc://127.0.0.1:9 refused: security.model_url_hosts is empty, "
            "so no host is allowed; list the hosts there (names, *.domain, addresses or CIDR networks)")
        listed = base.replace(security=SecurityConfig(model_url_hosts=("127.0.0.1",)))
        server = build_server(listed, ["g"], registry=reg)
        async with started(server):  # listed: it loads (the step's server is only called by requests)
            assert server.repository.is_ready(server.repository.defaults["g"])
    finally:
        reg.close()
