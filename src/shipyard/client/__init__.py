"""Python client for shipyard servers (and any Open Inference Protocol server).

    import shipyard
    with shipyard.Client("http://127.0.0.1:8000") as client:      # or "grpc://127.0.0.1:8001"
        client.predict("demo", [{"sepal_length": 6.1, ...}])

Over TLS the server's certificate is always checked (the system's CA store, or ``ca_file``);
``cert``/``key`` present a client certificate, ``token`` an API key or JWT::

    shipyard.Client("https://models.internal:8443", ca_file="ca.pem", token=os.environ["SHIPYARD_TOKEN"])

``Client`` blocks; ``AsyncClient`` is its asyncio twin with the same methods.
REST needs nothing beyond the core install; gRPC needs the ``grpc`` extra.
"""

from shipyard.client._client import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
