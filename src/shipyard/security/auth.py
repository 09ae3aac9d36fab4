"""A request's credential to a principal, and the principal's right to a route: one check, every transport.

REST and GraphQL (``serving/rest/auth.py``) and gRPC (``serving/grpc/auth.py``) each pass
the ``Authorization`` header (metadata) and what the route or RPC needs, from its route
table, to ``Authenticator.check``; nothing else decides who may call what. A credential is
``Bearer <token>``: an API key (``sy_...``, ``shipyard keys create``) or, when
``security.auth.jwt`` is set, a JWT from the identity provider.

``exposure_check`` refuses to start a server that listens beyond loopback without
authentication, unless ``security.insecure`` says so out loud.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from shipyard.errors import ConfigError, PermissionDenied, Unauthenticated
from shipyard.security.principal import NEEDS, Principal
from shipyard.security.ratelimit import RateLimiter

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.registry.database import Database
    from shipyard.security.jwt import JwtVerifier
    from shipyard.security.keys import KeyRing

logger = logging.getLogger(__name__)

#: Longest ``Authorization`` value read; longer ones are refused before any parsing.
MAX_CREDENTIAL_BYTES = 8192
#: API keys start with this; anything else is read as a JWT.
KEY_PREFIX = "sy_"
_SPACE = re.compile(r"\s")
#: Who a graph step pool's key stands for, in a pool's child: its parent server, which may only predict.
POOL_PRINCIPAL = Principal(name="graph step pool", kind="key", scopes=frozenset({"predict"}))


class Authenticator:
    """Checks credentials against the API keys and/or the JWT issuer, then scopes and rates.

    Args:
        keys: the server's cache of API keys (None: keys not accepted).
        jwt: the JWT verifier (None: tokens not accepted).
        limiter: per-credential request rates (None: no limits).
        metrics_open: ``/metrics`` needs no credentials (else the ``read`` scope).
        pool_key_sha256: the sha256 (hex) of a graph step pool's key, accepted with the ``predict``
            scope (a pool's child: ``security.auth.pool_key_sha256``).
    """

    def __init__(self, *, keys: KeyRing | None = None, jwt: JwtVerifier | None = None,
                 limiter: RateLimiter | None = None, metrics_open: bool = True, pool_key_sha256: str = "") -> None:
        if keys is None and jwt is None and not pool_key_sha256:
            raise ConfigError("authentication needs API keys or a JWT issuer")
        self.keys = keys
        self.jwt = jwt
        self.pool_key_sha256 = pool_key_sha256
        self.limiter = limiter
        self.metrics_open = metrics_open

    @classmethod
    def from_settings(cls, settings: Settings, database: Database) -> Authenticator | None:
        """The authenticator ``security.auth`` asks for; None when authentication is off."""
        config = settings.security.auth
        if not config.enabled:
            return None
        keys = jwt = None
        if config.api_keys:
            from shipyard.security.keys import KeyRing, KeyStore

            keys = KeyRing(KeyStore(database), config.refresh_seconds)
        if config.jwt.enabled:
            from shipyard.security.jwt import JwtVerifier

            jwt = JwtVerifier(config.jwt)
        limiter = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)
        return cls(keys=keys, jwt=jwt, limiter=limiter, metrics_open=config.metrics == "open",
                   pool_key_sha256=config.pool_key_sha256)

    # -- the check ------------------------------------------------------------------------

    def open(self, need: str) -> bool:
        """Whether a route needing ``need`` takes requests without credentials."""
        return need == "open" or (need == "metrics" and self.metrics_open)

    async def check(self, authorization: str | None, need: str) -> Principal | None:
        """The principal of ``authorization`` if it may do ``need``; None for open routes.

        Unauthenticated (401) without a credential that checks out, PermissionDenied (403)
        without the scope, RateLimited (429) over the credential's rate.
        """
        if need not in NEEDS:
            raise AssertionError(f"unknown route need {need!r}")  # a route table typo, caught by the tests
        if self.open(need):
            return None
        principal = await self.authenticate(authorization)
        self.authorize(principal, "read" if need == "metrics" else need)
        return principal

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal a ``Bearer`` credential stands for; Unauthenticated otherwise."""
        token = bearer_token(authorization)
        if self.pool_key_sha256 and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(),
                                                        self.pool_key_sha256):
            return POOL_PRINCIPAL
        if token.startswith(KEY_PREFIX):
            if self.keys is None:
                raise Unauthenticated("API keys are not accepted by this server; send a JWT")
            held = self.keys.verify_held(token)
            if held is None:  # an id not held: re-read the keys (at most once a second) off the loop
                return await anyio.to_thread.run_sync(self.keys.verify, token)
            return held
        if self.jwt is None:
            raise Unauthenticated("invalid API key")
        return await self.jwt.verify_async(token)

    def authorize(self, principal: Principal, need: str) -> None:
        """PermissionDenied unless ``principal`` holds ``need``; RateLimited over its rate."""
        if need != "authenticated" and not principal.allows(need):
            held = ", ".join(sorted(principal.scopes)) or "no scopes"
            raise PermissionDenied(f"{principal.kind} '{principal.name}' needs the '{need}' scope (it has {held})")
        if self.limiter is not None:
            self.limiter.take(principal)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the keys and the issuer's signing keys before the server takes requests."""
        if self.keys is not None:
            await anyio.to_thread.run_sync(self.keys.refresh)
        if self.jwt is not None:
            await anyio.to_thread.run_sync(self.jwt.load)

    async def watch(self, stop: asyncio.Event) -> None:
        """Re-read the keys (revocations) and the issuer's signing keys (rotations) until ``stop``."""
        loops: list[Any] = []
        if self.keys is not None:
            loops.append(self.keys.watch(stop))
        if self.jwt is not None:
            loops.append(self.jwt.watch(stop))
        await asyncio.gather(*loops)


def bearer_token(authorization: str | None) -> str:
    """The token of ``Authorization: Bearer TOKEN``; Unauthenticated, saying what is wrong, otherwise."""
    if not authorization:
        raise Unauthenticated("no credentials: send 'Authorization: Bearer KEY' with an API key "
                              "(shipyard keys create) or a token")
    if len(authorization) > MAX_CREDENTIAL_BYTES:
        raise Unauthenticated(f"credentials longer than {MAX_CREDENTIAL_BYTES} bytes are refused")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(f"unsupported authorization scheme '{scheme[:20]}'; use 'Bearer KEY'")
    token = token.strip()
    if not token or _SPACE.search(token):
        raise Unauthenticated("malformed credentials: 'Authorization: Bearer KEY' takes one token")
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only listens on this machine."""
    if host.strip("[]").lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def exposure_check(settings: Settings) -> None:
    """Refuse to listen beyond loopback without authentication, unless ``security.insecure`` is set.

    With it, a banner in the log says the server answers anyone who can reach it.
    """
    if settings.security.auth.enabled or is_loopback(settings.host):
        return
    if not settings.security.insecure:
        raise ConfigError(
            f"refusing to listen on {settings.host} without authentication: anyone who can reach it could "
            "predict, read every model and move its aliases. Turn authentication on (security.auth.enabled: true, or "
            "SHIPYARD_SECURITY__AUTH__ENABLED=true) and create a key with 'shipyard keys create NAME "
            "--scope predict', or listen on 127.0.0.1, or pass --insecure if this network is trusted"
        )
    logger.warning("\n%s\n  INSECURE: listening on %s with authentication off; anyone who can reach this\n"
                   "  address can predict and read every model. Do not do this on a shared network.\n%s",
                   "!" * 78, settings.host, "!" * 78)
