"""The ``security:`` section of shipyard.yaml: who may call the server, over what, and what it may reach."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from shipyard.errors import ConfigError

#: JWT algorithms shipyard accepts: asymmetric only, so a server never holds a key that can mint tokens.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def _tuple(value: object) -> tuple[str, ...]:
    """A YAML list, or comma-separated text from an environment variable, as a tuple of names."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class JwtConfig:
    """Bearer JSON Web Tokens from an identity provider; on when ``jwks_url`` or ``key_file`` is set."""

    issuer: str = ""
    """The ``iss`` every token must carry (required when JWTs are on)."""

    audience: str = ""
    """The ``aud`` every token must carry (required when JWTs are on)."""

    jwks_url: str = ""
    """Where the provider publishes its signing keys (a JWKS document, re-read when a token names an unknown
    ``kid``)."""

    key_file: str = ""
    """A PEM public key or a JWKS JSON file, instead of ``jwks_url``."""

    algorithms: tuple[str, ...] = ("RS256", "ES256")
    """Signature algorithms accepted (asymmetric only; ``none`` and HMAC are always refused)."""

    scope_claim: str = "scope"
    """The claim holding the token's scopes: space-separated text (OAuth 2.0) or a list."""

    models_claim: str = "models"
    """The claim listing the models the token may use; absent: every model."""

    leeway_seconds: float = 30.0
    """Clock skew allowed on ``exp``, ``nbf`` and ``iat``."""

    @property
    def enabled(self) -> bool:
        return bool(self.jwks_url or self.key_file)

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithms", _tuple(self.algorithms))
        bad = [a for a in self.algorithms if a not in JWT_ALGORITHMS]
        if bad:
            raise ConfigError(f"security.auth.jwt.algorithms: {', '.join(bad)} not accepted; "
                              f"use some of {', '.join(JWT_ALGORITHMS)}")
        if self.jwks_url and self.key_file:
            raise ConfigError("security.auth.jwt: set jwks_url or key_file, not both")
        if self.enabled and not (self.issuer and self.audience):
            raise ConfigError("security.auth.jwt: issuer and audience are required when JWTs are on")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise ConfigError(f"security.auth.jwt.jwks_url must be an http(s) URL, got {self.jwks_url!r}")
        if self.leeway_seconds < 0:
            raise ConfigError(f"security.auth.jwt.leeway_seconds must not be negative, got {self.leeway_seconds}")


@dataclass(frozen=True)
class AuthConfig:
    """Credentials every request but the health probes must carry: API keys and/or JWTs, each with scopes."""

    enabled: bool = False
    """Require credentials: an API key (``shipyard keys create``) or a JWT, as ``Authorization: Bearer ...``
    (REST, GraphQL) or ``authorization`` metadata (gRPC). Off, the server must stay on loopback."""

    api_keys: bool = True
    """Accept API keys from the registry database (``shipyard keys``)."""

    jwt: JwtConfig = field(default_factory=JwtConfig)

    metrics: str = "open"
    """``/metrics`` is ``open`` (Prometheus scrapes without credentials) or needs the ``read`` scope."""

    rate_limit_per_second: float = 0.0
    """Requests per second each credential may make (a token bucket; 0: no limit). A key's own limit, set
    with ``shipyard keys create --rate``, wins."""

    rate_limit_burst: int = 0
    """Requests a credential may make at once above its rate; 0: one second's worth."""

    refresh_seconds: float = 5.0
    """How often a server re-reads the keys: a revoked key stops working within this."""

    pool_key_sha256: str = ""
    """The sha256 (hex) of the one key a graph step pool's child accepts, with the ``predict`` scope only:
    a server writes it into the private settings file of each child it starts; not set by hand."""

    def __post_init__(self) -> None:
        if self.metrics not in ("open", "read"):
            raise ConfigError(f"security.auth.metrics must be 'open' or 'read', got {self.metrics!r}")
        if self.rate_limit_per_second < 0 or self.rate_limit_burst < 0:
            raise ConfigError("security.auth.rate_limit_per_second and rate_limit_burst must not be negative")
        if not self.refresh_seconds > 0:
            raise ConfigError(f"security.auth.refresh_seconds must be positive, got {self.refresh_seconds}")
        if self.pool_key_sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.pool_key_sha256):
            raise ConfigError("security.auth.pool_key_sha256 must be a sha256 in hex (64 characters)")
        if self.enabled and not (self.api_keys or self.jwt.enabled or self.pool_key_sha256):
            raise ConfigError("security.auth is enabled but accepts nothing: keep api_keys on or configure jwt")


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the REST and gRPC listeners; on when ``certfile`` is set."""

    certfile: str = ""
    """The server's certificate chain (PEM)."""

    keyfile: str = ""
    """The server's private key (PEM); empty: it is in ``certfile``."""

    ca_file: str = ""
    """CA certificates client certificates are checked against (mutual TLS)."""

    client_auth: str = "none"
    """``none``, ``optional`` or ``required``: whether clients must present a certificate signed by ``ca_file``."""

    @property
    def enabled(self) -> bool:
        return bool(self.certfile)

    def __post_init__(self) -> None:
        if self.client_auth not in ("none", "optional", "required"):
            raise ConfigError(f"security.tls.client_auth must be none, optional or required, got {self.client_auth!r}")
        if self.client_auth != "none" and not self.ca_file:
            raise ConfigError("security.tls.client_auth needs security.tls.ca_file (the CA client certificates "
                              "are checked against)")
        if (self.keyfile or self.ca_file) and not self.certfile:
            raise ConfigError("security.tls: keyfile and ca_file need certfile")


@dataclass(frozen=True)
class SecurityConfig:
    """Authentication, TLS, and what the server may reach on a caller's behalf."""

    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)

    insecure: bool = False
    """Allow listening on an address other than loopback without authentication; the server logs a
    warning banner."""

    callback_hosts: tuple[str, ...] = ()
    """Hosts (names, addresses or CIDR networks) asynchronous-job callbacks may be POSTed to; empty: none.
    Loopback, link-local and private addresses are refused unless listed here."""

    model_url_hosts: tuple[str, ...] = ()
    """Hosts a model may be registered or loaded from by http(s) URL, and graph steps may be placed on
    (``placement: URL``, checked when the graph loads); empty: none."""

    def __post_init__(self) -> None:
        for name in ("callback_hosts", "model_url_hosts"):
            hosts = _tuple(getattr(self, name))
            object.__setattr__(self, name, hosts)
            for host in hosts:
                if "/" in host:
                    try:
                        ipaddress.ip_network(host, strict=False)
                    except ValueError:
                        raise ConfigError(f"security.{name}: {host!r} is neither a host nor a CIDR network") from None
