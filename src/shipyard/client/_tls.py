"""How the client checks the server (CA certificates) and proves itself (a client certificate), on both
transports, and what it says when a TLS handshake fails.

Without ``ca_file`` the server is checked against the system's CA store (OpenSSL's default
locations, ``SSL_CERT_FILE`` honoured), on REST and gRPC alike.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from shipyard.errors import ConfigError, ShipyardError
from shipyard.security.tls import readable, split_pem

#: OpenSSL's names for the handshake failures a user can fix, and what to do about each.
_VERIFY_FAILED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")
_NAME_MISMATCH = ("Hostname mismatch", "IP address mismatch", "HOSTNAME_MISMATCH", "IP_ADDRESS_MISMATCH")
_CERT_REQUIRED = ("CERTIFICATE_REQUIRED", "certificate required")
_CERT_REFUSED = ("ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_UNKNOWN", "ALERT_DECRYPT_ERROR",
                 "ALERT_HANDSHAKE_FAILURE")


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    raise _Encrypted


@dataclass(frozen=True)
class ClientTls:
    """The CA file the server is checked against (None: the system store) and the client certificate.

    Build it with ``ClientTls.build``, which checks the files load.
    """

    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    """None with ``cert``: the key is in the certificate file."""

    @classmethod
    def build(cls, ca_file: str | os.PathLike[str] | None, cert: str | os.PathLike[str] | None,
              key: str | os.PathLike[str] | None) -> ClientTls:
        """Check the files exist and load; ConfigError naming the argument otherwise."""
        if key is not None and cert is None:
            raise ConfigError("key is the private key of a client certificate: give cert too")
        tls = cls(
            readable("ca_file", os.fspath(ca_file)) if ca_file is not None else None,
            readable("cert", os.fspath(cert)) if cert is not None else None,
            readable("key", os.fspath(key)) if key is not None else None,
        )
        tls._load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # no system store: quick, and checks the files
        return tls

    def _load(self, ctx: ssl.SSLContext) -> None:
        if self.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except ssl.SSLError as exc:
                raise ConfigError(f"ca_file: no PEM CA certificate could be read from {self.ca_file}: "
                                  f"{exc.reason or exc}") from None
        if self.cert is not None:
            try:
                ctx.load_cert_chain(self.cert, self.key, password=_no_password)
            except _Encrypted:
                raise ConfigError(f"key: the private key in {self.key or self.cert} is encrypted, which is not "
                                  "supported; give it unencrypted") from None
            except ssl.SSLError as exc:
                where = f"{self.cert} and {self.key}" if self.key else f"{self.cert} (no key given: it must be in it)"
                reason = exc.reason if exc.reason and exc.reason != "PEM lib" else "no PEM certificate and key found"
                raise ConfigError(f"cert: cannot load a client certificate and its private key from {where}: "
                                  f"{reason}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: checks the server's certificate and name, TLS 1.2 at least."""
        ctx = ssl.create_default_context()  # CERT_REQUIRED, check_hostname, the system store
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(ctx)
        return ctx

    def grpc_roots(self) -> bytes | None:
        """The CA certificates for gRPC: ``ca_file``, else the system bundle (None: gRPC's own roots)."""
        if self.ca_file is not None:
            return self.ca_file.read_bytes()
        system = ssl.get_default_verify_paths().cafile
        return Path(system).read_bytes() if system else None

    def grpc_identity(self) -> tuple[bytes | None, bytes | None]:
        """The client's private key and certificate chain for gRPC, or (None, None)."""
        if self.cert is None:
            return None, None
        chain, key = split_pem(self.cert.read_bytes())
        if self.key is not None:
            key = split_pem(self.key.read_bytes())[1]
        return key, chain


def handshake_error(exc: BaseException, where: str) -> ShipyardError | None:
    """What went wrong in a TLS handshake with ``where``, said so the user can fix it; None if ``exc``
    (or what it wraps) is no handshake failure."""
    return handshake_error_text(_chain_text(exc), where)


def handshake_error_text(text: str, where: str) -> ShipyardError | None:
    """``handshake_error`` from an error's text (gRPC gives only that)."""
    if any(s in text for s in _VERIFY_FAILED) and any(s in text for s in _NAME_MISMATCH):
        return ShipyardError(
            f"the certificate of {where} could not be verified: it is not valid for that host name or address "
            f"({_detail(text)}); use a name the certificate lists in the URL")
    if any(s in text for s in _VERIFY_FAILED):
        return ShipyardError(
            f"the certificate of {where} could not be verified ({_detail(text)}); if the server's certificate "
            "is signed by a private CA, pass ca_file=PATH (that CA's certificate, PEM)")
    if any(s in text for s in _CERT_REQUIRED):
        return ShipyardError(f"{where} requires a client certificate: pass cert=PATH and key=PATH "
                             "(a certificate signed by the CA the server trusts)")
    if any(s in text for s in _CERT_REFUSED):
        return ShipyardError(f"{where} refused the TLS handshake ({_detail(text)}): its CA did not sign the "
                             "client certificate, or no TLS setting both sides accept exists")
    return None


def closed_hint(tls: ClientTls | None) -> str:
    """What to add when a TLS server hung up without answering: with TLS 1.3 a server refusing the client's
    certificate (or its absence) just closes the connection, so the client cannot know for sure."""
    if tls is None:
        return ""
    if tls.cert is None:
        return "; if the server requires client certificates (mutual TLS), pass cert=PATH and key=PATH"
    return "; if the server requires client certificates, it may have refused this one: check its CA signed cert"


def _chain_text(exc: BaseException) -> str:
    """The texts of ``exc`` and of everything it wraps (httpx wraps httpcore, which wraps ssl)."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(f"{getattr(current, 'reason', '') or ''} {current}")
        current = current.__cause__ or current.__context__
    return " | ".join(texts)


def _detail(text: str) -> str:
    """The part of OpenSSL's message after 'certificate verify failed:' (why), when it is there."""
    for marker in ("certificate verify failed:", "CERTIFICATE_VERIFY_FAILED:"):
        if marker in text:
            detail = text.split(marker, 1)[1].split("(_ssl.c")[0].split("|")[0].strip().rstrip(")")
            return detail.removesuffix(": OK")  # gRPC appends the verify callback's status
    for name in (*_VERIFY_FAILED, *_CERT_REFUSED):
        if name in text:
            return name
    return "handshake failed"
