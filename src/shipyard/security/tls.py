"""TLS on the server's listeners, from the certificate files ``security.tls`` names.

``ServerTls`` checks the files once, at start-up, by building the ``ssl.SSLContext``
the REST listener will use: a missing, unreadable or mismatched file stops the
server with a ConfigError naming the key and the file, not a stack trace from
inside uvicorn or a gRPC port that silently fails to bind. It then hands each
transport what it takes: keyword arguments for uvicorn, credentials for gRPC.

``client_auth`` on each transport:

- ``none``: no client certificate is asked for.
- ``required``: the handshake fails unless the client presents a certificate
  signed by ``ca_file`` (REST and gRPC alike).
- ``optional``: REST asks for a certificate and, if the client sends one, refuses
  it unless it is signed by ``ca_file``; a client without one gets through (it
  then authenticates with a token). grpcio can only require a client certificate
  or not ask for one, so on gRPC ``optional`` does not ask: gRPC clients
  authenticate with tokens. Use ``required`` to have gRPC check certificates.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any

from shipyard._extras import require
from shipyard.config import TlsConfig
from shipyard.errors import ConfigError

#: Forward-secret AEAD suites only. They exist from TLS 1.2 on, so together with the TLS 1.2 minimum
#: (Python's default for server contexts since 3.10) nothing older can be negotiated. TLS 1.3 suites
#: are configured apart by OpenSSL and all are fine.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def split_pem(data: bytes) -> tuple[bytes, bytes]:
    """The certificate blocks and the private-key blocks of a PEM file (gRPC wants them apart)."""
    certs: list[bytes] = []
    keys: list[bytes] = []
    for block in _PEM_BLOCK.finditer(data):
        label = block.group(1)
        if label.endswith(b"PRIVATE KEY"):
            keys.append(block.group(0) + b"\n")
        elif label.endswith(b"CERTIFICATE"):
            certs.append(block.group(0) + b"\n")
    return b"".join(certs), b"".join(keys)


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    # without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase
    raise _Encrypted


def readable(key: str, path: str) -> Path:
    """``path`` as a Path, or a ConfigError naming the setting when it is no readable file."""
    file = Path(path).expanduser()
    if not file.exists():
        raise ConfigError(f"{key}: {file} does not exist")
    if not file.is_file():
        raise ConfigError(f"{key}: {file} is not a file")
    if not os.access(file, os.R_OK):
        raise ConfigError(f"{key}: {file} is not readable by this user")
    return file


class ServerTls:
    """The server's certificate, key and client CA, checked to load.

    Args:
        config: ``security.tls``; its ``certfile`` must be set (``from_config`` gives None otherwise).

    Raises:
        ConfigError: a file is missing or unreadable, is not PEM, the key does not belong to the
            certificate or is encrypted, or ``ca_file`` holds no CA certificate.
    """

    def __init__(self, config: TlsConfig) -> None:
        if not config.enabled:
            raise ConfigError("security.tls.certfile is not set: TLS is off")
        self.certfile = readable("security.tls.certfile", config.certfile)
        self.keyfile = readable("security.tls.keyfile", config.keyfile) if config.keyfile else None
        self.ca_file = readable("security.tls.ca_file", config.ca_file) if config.ca_file else None
        self.client_auth = config.client_auth
        self.context()  # fail now, at start-up, with the setting named

    @classmethod
    def from_config(cls, config: TlsConfig) -> ServerTls | None:
        """The server's TLS, or None when ``security.tls.certfile`` is not set."""
        return cls(config) if config.enabled else None

    def context(self) -> ssl.SSLContext:
        """The server-side SSLContext the settings describe (what the REST listener runs with)."""
        certfile, keyfile, ca_file = self.certfile, self.keyfile, self.ca_file
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(CIPHERS)
        keys = "security.tls.certfile and keyfile" if keyfile else "security.tls.certfile"
        try:
            ctx.load_cert_chain(certfile, keyfile, password=_no_password)
        except _Encrypted:
            raise ConfigError(f"{keys}: the private key in {keyfile or certfile} is encrypted, which is not supported; "
                              "give it unencrypted, readable only by the server's user (chmod 600)") from None
        except ssl.SSLError as exc:
            where = f"{certfile} and {keyfile}" if keyfile else f"{certfile} (no keyfile: the key must be in it)"
            reason = exc.reason if exc.reason and exc.reason != "PEM lib" else "no PEM certificate and key found"
            raise ConfigError(f"{keys}: cannot load a certificate and its private key from {where}: {reason}; "
                              "both must be PEM and the key must belong to the certificate") from None
        if ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=ca_file)
            except ssl.SSLError as exc:
                raise ConfigError(f"security.tls.ca_file: no PEM CA certificate could be read from {ca_file}: "
                                  f"{exc.reason or exc}") from None
        ctx.verify_mode = _CERT_REQS[self.client_auth]
        return ctx

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``uvicorn.Config`` that serve HTTPS as configured (TLS 1.2 at least)."""
        keyfile, ca_file = self.keyfile, self.ca_file
        return {
            "ssl_certfile": str(self.certfile),
            "ssl_keyfile": str(keyfile) if keyfile is not None else None,
            "ssl_ca_certs": str(ca_file) if ca_file is not None else None,
            "ssl_cert_reqs": _CERT_REQS[self.client_auth],
            "ssl_version": ssl.PROTOCOL_TLS_SERVER,
            "ssl_ciphers": CIPHERS,
        }

    def grpc_credentials(self) -> Any:
        """``grpc.ServerCredentials`` for ``add_secure_port`` (extra ``grpc``).

        ``required`` makes gRPC demand a client certificate signed by ``ca_file``;
        ``none`` and ``optional`` do not ask for one (see the module docstring).
        """
        grpc = require("grpc", "grpc", "grpcio")
        chain, key = split_pem(self.certfile.read_bytes())
        keyfile = self.keyfile
        if keyfile is not None:
            key = split_pem(keyfile.read_bytes())[1]
        if not chain or not key:  # the SSLContext loaded them, so PEM is all that can be missing here
            raise ConfigError("security.tls: gRPC needs the certificate and key in PEM")
        required = self.client_auth == "required"
        roots = self.ca_file.read_bytes() if required and self.ca_file is not None else None
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=roots, require_client_auth=required)
