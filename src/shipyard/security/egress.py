"""Egress: which hosts the server may reach on a caller's behalf (callbacks, model URLs).

A URL a caller supplies must not turn the server into a proxy into its own
network (SSRF). ``HostAllowList`` holds the operator's entries (host names,
``*.example.com`` for subdomains, IP addresses, CIDR networks) and
``check_url`` resolves the URL's host and allows it only when

* its name matches a name entry and every address it resolves to is public, or
* every address it resolves to lies in an address or network entry.

Loopback, link-local, private, multicast, reserved and unspecified addresses
(and IPv6 forms that embed one: IPv4-mapped, 6to4) need an address or network
entry of their own: a listed name that suddenly resolves to 10.0.0.5 (DNS
rebinding) is refused. Callers connect to the addresses ``check_url`` returned,
so a second lookup cannot swap them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from shipyard.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Sequence[IPAddress]]
"""``(host, port) -> addresses``: DNS, behind one callable so tests can pin what a name resolves to."""

DEFAULT_PORTS = {"http": 80, "https": 443}


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (A and AAAA), in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone id
        if ip not in out:
            out.append(ip)
    return out


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (``::ffff:10.0.0.1``, 6to4 ``2002:a00:1::``), if any."""
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped or ip.sixtofour
    return None


def is_special(ip: IPAddress) -> bool:
    """Not a plain public unicast address: only an explicit address or network entry opens it."""
    v4 = _embedded_v4(ip)
    if v4 is not None and is_special(v4):
        return True
    return (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or not ip.is_global)


class HostAllowList:
    """The hosts a setting allows, checked against URLs a caller gives.

    Args:
        hosts: entries: ``api.example.com`` (exact, case-insensitive), ``*.example.com`` (any
            subdomain, not ``example.com`` itself), ``10.0.0.7`` or ``[::1]``, ``10.1.0.0/16``.
        setting: the setting the entries come from, named in every refusal.
        resolver: how host names become addresses (``resolve``: the system's resolver).
    """

    def __init__(self, hosts: Sequence[str], *, setting: str = "security.callback_hosts",
                 resolver: Resolver = resolve) -> None:
        self.setting = setting
        self.resolver = resolver
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[IPNetwork] = []
        for raw in hosts:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
            try:
                self.networks.append(ipaddress.ip_network(bare, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])  # ".example.com"
            else:
                self.names.add(entry)

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def name_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(s) and len(host) > len(s) for s in self.suffixes)

    def address_listed(self, ip: IPAddress) -> bool:
        """An address or network entry holds ``ip`` (or the IPv4 address it embeds)."""
        forms: list[IPAddress] = [ip]
        v4 = _embedded_v4(ip)
        if v4 is not None:
            forms.append(v4)
        return any(f in net for f in forms for net in self.networks if f.version == net.version)

    def check_url(self, url: str, *, what: str, field: str,
                  ports: Mapping[str, int] = DEFAULT_PORTS) -> list[IPAddress]:
        """The addresses to connect to for ``url``; ``InvalidInput`` naming ``field`` when it is not allowed.

        Args:
            url: the URL as the caller gave it.
            what: what the URL is for, as the message should say it (``callback URL``).
            field: the request field or option that carried it.
            ports: the URL schemes accepted, each with its default port (http and https).

        Returns:
            Every address the host resolves to, all allowed, in the resolver's order.
        """
        parts = self._parts(url, what, field, ports)
        shown = _without_userinfo(parts)
        host = parts.hostname or ""
        how = f"list it in {self.setting} (host name, address or CIDR network)"
        if not self:
            raise InvalidInput(f"{what} {shown} refused: {self.setting} is empty, so no host is allowed; list "
                               "the hosts there (names, *.domain, addresses or CIDR networks)", field=field, got=shown)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                addresses = list(self.resolver(host, parts.port or ports[parts.scheme]))
            except (OSError, UnicodeError) as exc:
                raise InvalidInput(f"{what} {shown} refused: its host {host!r} cannot be resolved ({exc})",
                                   field=field, got=shown) from None
            if not addresses:
                raise InvalidInput(f"{what} {shown} refused: its host {host!r} has no address",
                                   field=field, got=shown)
        named = literal is None and self.name_allowed(host)
        for ip in addresses:
            if self.address_listed(ip):
                continue
            if named and not is_special(ip):
                continue
            if named:
                raise InvalidInput(
                    f"{what} {shown} refused: {host} resolves to {ip}, a loopback, private or otherwise "
                    f"internal address, which listing the name does not open; add {ip} or its network to "
                    f"{self.setting} if the server may reach it", field=field, got=shown)
            where = str(ip) if literal is not None else f"{host} (at {ip})"
            kind = "an internal address" if is_special(ip) else "not an allowed host"
            raise InvalidInput(f"{what} {shown} refused: {where} is {kind}; {how}", field=field, got=shown)
        return addresses

    @staticmethod
    def _parts(url: str, what: str, field: str, ports: Mapping[str, int]) -> SplitResult:
        try:
            parts = urlsplit(url.strip())
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError as exc:
            raise InvalidInput(f"{what} is not a valid URL ({exc})", field=field, got=url) from None
        if parts.scheme not in ports:
            schemes = " or ".join(f"{s}://" for s in ports)
            raise InvalidInput(f"{what} must be a URL starting with {schemes}", field=field,
                               got=_without_userinfo(parts))
        if "@" in parts.netloc:
            raise InvalidInput(f"{what} must not carry a user name or password (user@host)", field=field,
                               got=_without_userinfo(parts))
        if not parts.hostname:
            raise InvalidInput(f"{what} has no host", field=field, got=url)
        return parts


def _without_userinfo(parts: SplitResult) -> str:
    """The URL with any ``user:password@`` dropped, fit to echo in an error."""
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()
