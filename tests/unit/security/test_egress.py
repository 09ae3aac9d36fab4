"""The egress allow-list: which URLs a caller may make the server reach (SSRF defence)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest

from shipyard.errors import ConfigError, InvalidInput
from shipyard.registry.artifacts import ArtifactStore
from shipyard.security.egress import HostAllowList, IPAddress, is_special, resolve

DNS: dict[str, list[str]] = {
    "hooks.example.com": ["93.184.215.14"],
    "a.hooks.example.com": ["93.184.215.15"],
    "rebound.example.com": ["93.184.215.16", "10.0.0.5"],  # one public, one private: the rebinding case
    "internal.example.com": ["10.1.2.3"],
    "v6.example.com": ["2606:2800:220:1::1"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "other.org": ["198.51.100.0"],  # documentation range: not global, so internal too
    "public.org": ["1.1.1.1"],
}


def fake_dns(host: str, port: int) -> Sequence[IPAddress]:
    if host not in DNS:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return [ipaddress.ip_address(a) for a in DNS[host]]


def allow(*hosts: str) -> HostAllowList:
    return HostAllowList(hosts, setting="security.callback_hosts", resolver=fake_dns)


def refused(hosts: HostAllowList, url: str) -> str:
    with pytest.raises(InvalidInput) as info:
        hosts.check_url(url, what="callback URL", field="callback")
    assert info.value.field == "callback"
    return info.value.message


def test_a_listed_name_with_a_public_address_is_allowed_and_its_addresses_returned() -> None:
    got = allow("Hooks.Example.com").check_url("https://HOOKS.example.com:8443/x", what="callback URL",
                                               field="callback")
    assert got == [ipaddress.ip_address("93.184.215.14")]


def test_an_empty_list_refuses_everything_and_says_which_setting_allows() -> None:
    message = refused(allow(), "https://hooks.example.com/x")
    assert "security.callback_hosts is empty, so no host is allowed" in message


def test_a_name_not_listed_is_refused() -> None:
    message = refused(allow("hooks.example.com"), "http://public.org/x")
    assert "public.org" in message and "security.callback_hosts" in message


def test_wildcard_entries_allow_subdomains_but_not_the_domain_itself() -> None:
    hosts = allow("*.hooks.example.com")
    assert hosts.check_url("http://a.hooks.example.com/", what="callback URL", field="callback")
    refused(hosts, "http://hooks.example.com/")
    refused(allow("*.example.com"), "http://evil-example.com/")


def test_a_listed_name_resolving_to_a_private_address_is_refused() -> None:
    """DNS rebinding: the name is trusted, the address it now points at is not."""
    message = refused(allow("rebound.example.com"), "https://rebound.example.com/")
    assert "10.0.0.5" in message and "listing the name does not open" in message
    refused(allow("internal.example.com"), "https://internal.example.com/")


def test_a_private_address_is_allowed_when_its_network_is_listed_too() -> None:
    hosts = allow("rebound.example.com", "10.0.0.0/8")
    got = hosts.check_url("https://rebound.example.com/", what="callback URL", field="callback")
    assert [str(a) for a in got] == ["93.184.215.16", "10.0.0.5"]
    assert allow("10.1.2.3").check_url("http://internal.example.com/", what="callback URL", field="callback")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/x", "http://[::1]/x", "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://0.0.0.0/",
    "http://224.0.0.1/", "http://[fe80::1]/", "http://[fc00::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/", "http://100.64.0.1/", "http://240.0.0.1/",
])
def test_internal_address_literals_are_refused_even_with_a_public_wildcard(url: str) -> None:
    message = refused(allow("*.example.com", "hooks.example.com"), url)
    assert "internal address" in message


def test_an_address_entry_opens_exactly_that_address() -> None:
    hosts = allow("127.0.0.1")
    assert hosts.check_url("http://127.0.0.1:9/h", what="callback URL", field="callback") == [
        ipaddress.ip_address("127.0.0.1")]
    refused(hosts, "http://127.0.0.2:9/h")
    refused(hosts, "http://[::1]:9/h")


def test_ipv4_mapped_ipv6_is_judged_by_the_ipv4_address_it_carries() -> None:
    refused(allow("mapped.example.com"), "http://mapped.example.com/")
    assert allow("127.0.0.0/8").check_url("http://[::ffff:127.0.0.1]/", what="callback URL", field="callback")
    assert allow("[::1]").check_url("http://[::1]:5/", what="callback URL", field="callback")


def test_ipv6_names_and_networks() -> None:
    assert allow("v6.example.com").check_url("https://v6.example.com/", what="callback URL", field="callback")
    assert allow("2606:2800::/32").check_url("https://v6.example.com/", what="callback URL", field="callback")
    refused(allow("2001:db8::/32"), "https://v6.example.com/")


def test_a_public_address_not_in_a_listed_network_is_refused() -> None:
    refused(allow("93.184.0.0/16"), "http://public.org/")
    assert allow("1.1.1.0/24").check_url("http://public.org/", what="callback URL", field="callback")


@pytest.mark.parametrize(("url", "says"), [
    ("file:///etc/passwd", "http:// or https://"),
    ("gopher://hooks.example.com/", "http:// or https://"),
    ("hooks.example.com/x", "http:// or https://"),
    ("http://user:secret@hooks.example.com/", "user name or password"),
    ("http://hooks.example.com@127.0.0.1/", "user name or password"),
    ("http:///nohost", "no host"),
    ("http://hooks.example.com:99999/", "not a valid URL"),
    ("http://unknown.example.com/", "cannot be resolved"),
])
def test_malformed_or_unsupported_urls_are_refused(url: str, says: str) -> None:
    message = refused(allow("hooks.example.com", "*.example.com"), url)
    assert says in message
    assert "secret" not in message


def test_the_refusal_names_the_setting_it_was_given() -> None:
    hosts = HostAllowList([], setting="security.model_url_hosts", resolver=fake_dns)
    with pytest.raises(InvalidInput) as info:
        hosts.check_url("https://hooks.example.com/m.onnx", what="model URL", field="path")
    assert "security.model_url_hosts" in info.value.message and info.value.field == "path"


def test_special_addresses() -> None:
    for text in ("8.8.8.8", "2606:4700::1111", "2002:808:808::1"):
        assert not is_special(ipaddress.ip_address(text)), text
    for text in ("127.0.0.1", "::1", "10.0.0.1", "2002:a00:1::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "::"):
        assert is_special(ipaddress.ip_address(text)), text


def test_the_system_resolver_resolves_localhost_to_loopback() -> None:
    addresses = resolve("localhost", 80)
    assert addresses and all(a.is_loopback for a in addresses)
    message = refused(HostAllowList(["localhost"]), "http://localhost:8080/")
    assert "listing the name does not open" in message


def test_an_http_artifact_store_needs_its_host_in_model_url_hosts(tmp_path: Path) -> None:
    """fsspec reads a store over http(s): the only way a model is loaded from a URL."""
    with pytest.raises(ConfigError, match="security.model_url_hosts is empty"):
        ArtifactStore("http://127.0.0.1:9/artifacts", tmp_path)
    with pytest.raises(ConfigError, match="127.0.0.1 is an internal address"):
        ArtifactStore("simplecache::http://127.0.0.1:9/artifacts", tmp_path, ["localhost"])
    assert ArtifactStore("http://127.0.0.1:9/artifacts", tmp_path, ["127.0.0.1"]).url.startswith("http://")
    assert ArtifactStore(str(tmp_path / "store"), tmp_path).is_local  # a folder is never checked
