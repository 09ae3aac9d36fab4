"""Bearer JSON Web Tokens from an identity provider, checked against its public signing keys.

The request path (``JwtVerifier.verify``) is synchronous and never touches the network: it checks a
token against the keys in memory. Keys come from ``security.auth.jwt.key_file`` (read at construction)
or ``security.auth.jwt.jwks_url`` (fetched by ``load()`` at start, re-read by ``watch()`` every ten
minutes, and by ``verify_async`` when a token names a key id the server has not seen, at most once
per ``REFETCH_SECONDS`` so that forged tokens cannot make the server hammer the provider).

Only asymmetric algorithms are accepted: the server holds public keys only, so it cannot mint a token,
and a token "signed" with HMAC using a public key as the secret is refused before any key is touched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from shipyard._extras import require
from shipyard.config import JwtConfig
from shipyard.errors import ConfigError, Unauthenticated
from shipyard.security.principal import SCOPES, Principal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = ["JwtVerifier", "MAX_TOKEN_BYTES", "REFETCH_SECONDS", "WATCH_SECONDS"]

logger = logging.getLogger(__name__)

#: Longer tokens are refused before any parsing (a real one is well under 2 KiB).
MAX_TOKEN_BYTES = 8192
#: The least time between two fetches of the provider's keys caused by unknown key ids.
REFETCH_SECONDS = 10.0
#: How often ``watch`` re-reads the keys, so a key the provider retires stops working here.
WATCH_SECONDS = 600.0
#: A JWKS document larger than this is refused (providers publish a few keys, a few KiB).
MAX_JWKS_BYTES = 1 << 20
#: The longest subject kept: it becomes the actor of the audit log.
MAX_SUBJECT = 256
#: RSA keys shorter than this are ignored (RFC 7518 asks for 2048 bits).
MIN_RSA_BITS = 2048

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class _Key:
    """A provider's public key, and the one algorithm it is bound to when its JWK names one."""

    key: PublicKeyTypes
    alg: str | None
    kid: str | None


class _UnknownKey(Unauthenticated):
    """The token names a key id the server does not hold: worth re-reading the provider's keys once."""


def _refuse(why: str) -> Unauthenticated:
    return Unauthenticated(f"bearer token refused: {why}")


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise _refuse(f"its {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise _refuse(f"its {what} is not a JSON object")
    return value


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(f"its '{name}' claim is not a number of seconds since the epoch")
    return float(value)


def _short(value: object) -> str:
    """An attacker-chosen header value, short enough to log and echo."""
    return repr(str(value)[:32])


class JwtVerifier:
    """Turns a bearer JWT into a ``Principal`` (kind ``jwt``), or refuses it saying why.

    Args:
        config: ``security.auth.jwt``: issuer, audience, where the keys are, accepted algorithms, claims.
        clock: seconds since the epoch; tests pass their own to move time.
        fetch_timeout: seconds a fetch of the provider's keys may take.
        watch_seconds: how often ``watch`` re-reads the keys.

    Raises:
        MissingDependency: PyJWT (``shipyard[jwt]``) is not installed.
        ConfigError: JWTs are not configured, or ``key_file`` cannot be read or holds no usable key.
    """

    def __init__(
        self,
        config: JwtConfig,
        *,
        clock: Callable[[], float] = time.time,
        fetch_timeout: float = 5.0,
        watch_seconds: float = WATCH_SECONDS,
    ) -> None:
        if not config.enabled:
            raise ConfigError("security.auth.jwt: set jwks_url or key_file to accept JWTs")
        self._jwt: ModuleType = require("jwt", "jwt", "pyjwt")
        require("cryptography", "jwt")
        self.config = config
        self._clock = clock
        self._fetch_timeout = fetch_timeout
        self._watch_seconds = watch_seconds
        # Signature only; every claim is checked here, against the injected clock.
        self._jws = self._jwt.PyJWS(options={"verify_signature": True, "enforce_minimum_key_length": True})
        self._keys: dict[str | None, _Key] = {}
        self._loaded = False
        self._last_refetch: float | None = None  # the last re-read caused by an unknown kid
        self._refetching: anyio.Event | None = None
        if config.jwks_url.startswith("http://"):
            logger.warning("security.auth.jwt.jwks_url is plain http: anyone on the path can swap the signing "
                           "keys and mint tokens; use https")
        if config.key_file:
            self.load()

    # -- keys ---------------------------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """Where the keys come from, for messages."""
        return self.config.jwks_url or self.config.key_file

    @property
    def key_ids(self) -> frozenset[str | None]:
        """The key ids held now (None: a key without one)."""
        return frozenset(self._keys)

    def load(self) -> None:
        """Read the signing keys now (blocking: the server calls it in a thread at start).

        Raises:
            ConfigError: the keys cannot be fetched or read, or none of them is usable; says which and why.
        """
        self._keys = self._read_keys()
        self._loaded = True
        logger.info("JWT signing keys from %s: %d key(s)", self.source, len(self._keys))

    def refresh(self) -> bool:
        """Re-read the keys, keeping the last good ones on failure (logged). Returns whether it worked."""
        try:
            self.load()
        except ConfigError as exc:
            logger.warning("keeping the %d JWT signing key(s) held: %s", len(self._keys), exc)
            return False
        except Exception:  # called from request handlers and a background loop: never let it escape
            logger.exception("keeping the %d JWT signing key(s) held: re-reading them failed", len(self._keys))
            return False
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Re-read the keys every ``watch_seconds`` until ``stop`` is set; failures keep the last good keys."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._watch_seconds)
                return
            except TimeoutError:
                pass
            try:
                await anyio.to_thread.run_sync(self.refresh)
            except Exception:  # a background loop never dies
                logger.exception("re-reading the JWT signing keys failed")

    def _read_keys(self) -> dict[str | None, _Key]:
        if self.config.key_file:
            data = self._read_file(self.config.key_file)
            if b"-----BEGIN" in data:
                return {None: self._pem_key(data)}
        else:
            data = self._fetch(self.config.jwks_url)
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            raise ConfigError(f"JWT signing keys from {self.source}: neither a PEM public key nor a JWKS "
                              f"JSON document") from None
        return self._jwks_keys(document)

    @staticmethod
    def _read_file(path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"security.auth.jwt.key_file {path!r} cannot be read: {exc.strerror or exc}") from None

    def _fetch(self, url: str) -> bytes:
        import httpx

        try:
            with (
                httpx.Client(timeout=self._fetch_timeout, follow_redirects=False) as client,
                client.stream("GET", url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise ConfigError(f"cannot fetch the JWT signing keys from {url}: it answered "
                                      f"{response.status_code}; check security.auth.jwt.jwks_url")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ConfigError(f"the JWKS document at {url} is larger than {MAX_JWKS_BYTES} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot fetch the JWT signing keys from {url}: {type(exc).__name__}: {exc}; "
                              f"check security.auth.jwt.jwks_url and that the provider is reachable") from None

    def _pem_key(self, data: bytes) -> _Key:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        key: PublicKeyTypes
        try:
            if b"CERTIFICATE-----" in data:
                key = x509.load_pem_x509_certificate(data).public_key()
            else:
                key = serialization.load_pem_public_key(data)
        except ValueError:
            hint = " (it holds a private key: give the public key only)" if b"PRIVATE KEY" in data else ""
            raise ConfigError(f"security.auth.jwt.key_file {self.config.key_file!r}: not a PEM public key or "
                              f"certificate{hint}") from None
        problem = self._unusable(key)
        if problem:
            raise ConfigError(f"security.auth.jwt.key_file {self.config.key_file!r}: {problem}")
        return _Key(key, None, None)

    def _jwks_keys(self, document: object) -> dict[str | None, _Key]:
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f"JWT signing keys from {self.source}: not a JWKS document (no 'keys' list)")
        keys: dict[str | None, _Key] = {}
        for entry in entries:
            parsed = self._jwk(entry)
            if parsed is not None:
                if parsed.kid in keys:
                    logger.warning("JWKS from %s lists kid %s twice; using the last", self.source, _short(parsed.kid))
                keys[parsed.kid] = parsed
        if not keys:
            raise ConfigError(f"JWT signing keys from {self.source}: no usable signing key (asymmetric keys of "
                              f"algorithms {', '.join(self.config.algorithms)})")
        return keys

    def _jwk(self, entry: object) -> _Key | None:
        """One JWK as a key, or None (logged) when it is not one this server may verify with."""
        if not isinstance(entry, dict):
            logger.warning("JWKS from %s: skipping an entry that is not an object", self.source)
            return None
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            kid = str(kid)
        if entry.get("kty") == "oct":
            logger.warning("JWKS from %s: skipping symmetric key %s (HMAC is never accepted)", self.source,
                           _short(kid))
            return None
        if entry.get("use", "sig") != "sig":
            return None  # an encryption key
        alg = entry.get("alg")
        if alg is not None and alg not in self.config.algorithms:
            logger.info("JWKS from %s: key %s is for %s, not accepted here", self.source, _short(kid), _short(alg))
            return None
        try:
            key = self._jwt.PyJWK(entry).key
        except self._jwt.PyJWTError as exc:
            logger.warning("JWKS from %s: skipping key %s: %s", self.source, _short(kid), exc)
            return None
        if hasattr(key, "private_bytes"):  # a private JWK published by mistake: verify with its public half
            key = key.public_key()
        problem = self._unusable(key)
        if problem:
            logger.warning("JWKS from %s: skipping key %s: %s", self.source, _short(kid), problem)
            return None
        return _Key(key, alg, kid)

    def _unusable(self, key: PublicKeyTypes) -> str | None:
        """Why ``key`` cannot verify any accepted algorithm, or None."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            return f"RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})"
        if not any(_fits(key, alg) for alg in self.config.algorithms):
            return (f"a {type(key).__name__} fits none of security.auth.jwt.algorithms "
                    f"({', '.join(self.config.algorithms)})")
        return None

    # -- tokens -------------------------------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        """Check ``token`` against the keys held (no network I/O) and return who it stands for.

        Raises:
            Unauthenticated: the token does not check out; the message says why (never the token).
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise _refuse(f"longer than {MAX_TOKEN_BYTES} bytes")
        if not _COMPACT.fullmatch(token):
            raise _refuse("not a JWT (three base64url parts separated by dots)")
        header = _b64json(token.split(".", 1)[0], "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise _refuse("its header names no algorithm ('alg')")
        if alg.lower() == "none":
            raise _refuse("it is unsigned (alg 'none')")
        if alg.upper().startswith("HS"):
            raise _refuse(f"alg {_short(alg)} is HMAC, never accepted (this server holds only public keys)")
        if alg not in self.config.algorithms:
            raise _refuse(f"alg {_short(alg)} is not in security.auth.jwt.algorithms "
                          f"({', '.join(self.config.algorithms)})")
        key = self._key_for(header.get("kid"))
        if key.alg is not None and key.alg != alg:
            raise _refuse(f"alg {_short(alg)} does not match the key's algorithm {key.alg}")
        if not _fits(key.key, alg):
            raise _refuse(f"alg {_short(alg)} does not fit the key it names ({type(key.key).__name__})")
        try:
            decoded = self._jws.decode_complete(token, key.key, algorithms=[alg])
        except self._jwt.InvalidSignatureError:
            raise _refuse("bad signature") from None
        except self._jwt.PyJWTError as exc:
            raise _refuse(f"it cannot be verified: {str(exc)[:120]}") from None
        try:
            claims = json.loads(decoded["payload"])
        except (ValueError, RecursionError):
            raise _refuse("its payload is not JSON") from None
        if not isinstance(claims, dict):
            raise _refuse("its payload is not a JSON object")
        return self._principal(claims)

    async def verify_async(self, token: str) -> Principal:
        """``verify``, re-reading the provider's keys (off the event loop) when the token names an unknown key.

        A refetch happens at most once per ``REFETCH_SECONDS``; concurrent requests share it.
        """
        try:
            return self.verify(token)
        except _UnknownKey:
            if not await self._refetch():
                raise
        return self.verify(token)

    async def _refetch(self) -> bool:
        """Re-read the keys for an unknown kid; False when it is too soon or the read failed."""
        pending = self._refetching
        if pending is not None:
            await pending.wait()
            return True
        now = self._clock()
        if self._last_refetch is not None and abs(now - self._last_refetch) < REFETCH_SECONDS:
            return False
        self._last_refetch = now  # a failed read counts too: an unreachable provider is not retried per request
        done = self._refetching = anyio.Event()
        try:
            return await anyio.to_thread.run_sync(self.refresh)
        finally:
            self._refetching = None
            done.set()

    def _key_for(self, kid: object) -> _Key:
        if kid is not None and not isinstance(kid, str):
            raise _refuse("its key id ('kid') is not a string")
        if not self._loaded:
            raise _UnknownKey(f"bearer token refused: the signing keys from {self.source} are not loaded yet")
        key = self._keys.get(kid)
        if key is not None:
            return key
        if len(self._keys) == 1:
            (only,) = self._keys.values()
            if only.kid is None or kid is None:  # one key and nothing to tell keys apart: it is that one
                return only
        if kid is None:
            raise _refuse(f"it names no key ('kid') and {self.source} has {len(self._keys)} keys")
        raise _UnknownKey(f"bearer token refused: its key id {_short(kid)} is not among the signing keys "
                          f"from {self.source}")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        cfg = self.config
        now = self._clock()
        leeway = cfg.leeway_seconds
        exp = _number(claims, "exp")
        if exp is None:
            raise _refuse("it has no expiry ('exp' claim)")
        if now >= exp + leeway:
            raise _refuse("it has expired ('exp')")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise _refuse("it is not valid yet ('nbf' is in the future)")
        iat = _number(claims, "iat")
        if iat is not None and now + leeway < iat:
            raise _refuse("it was issued in the future ('iat')")
        if claims.get("iss") != cfg.issuer:
            raise _refuse(f"its issuer ('iss') is not {cfg.issuer!r} (security.auth.jwt.issuer)")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if cfg.audience not in audiences:
            raise _refuse(f"its audience ('aud') does not include {cfg.audience!r} (security.auth.jwt.audience)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _refuse("it names no subject ('sub' claim)")
        if len(sub) > MAX_SUBJECT:
            raise _refuse(f"its subject ('sub') is longer than {MAX_SUBJECT} characters")
        jti = claims.get("jti")
        return Principal(
            name=sub,
            kind="jwt",
            scopes=self._scopes(claims.get(cfg.scope_claim)),
            models=self._models(claims.get(cfg.models_claim)),
            key_id=jti if isinstance(jti, str) and jti else None,
        )

    @staticmethod
    def _scopes(value: object) -> frozenset[str]:
        # Unknown names are dropped, not refused: the provider may grant scopes of other services.
        names = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        return frozenset(n for n in names if isinstance(n, str) and n in SCOPES)

    def _models(self, value: object) -> frozenset[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
            raise _refuse(f"its '{self.config.models_claim}' claim is not a list of model names")
        return frozenset(value)


def _fits(key: object, alg: str) -> bool:
    """Whether ``key`` is the kind of key ``alg`` verifies with (RSA for RS/PS, the right curve for ES)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    curves = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
    return isinstance(key, ec.EllipticCurvePublicKey) and alg in curves and isinstance(key.curve, curves[alg])
