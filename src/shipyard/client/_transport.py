"""What the client needs from a wire protocol; REST and gRPC each implement it once."""

from __future__ import annotations

from typing import Any, Protocol

from shipyard.errors import ShipyardError
from shipyard.types import InferenceRequest, InferenceResponse


class Unavailable(Exception):
    """A failure worth another try: 503 / UNAVAILABLE, or the connection was refused.

    Args:
        error: what to raise if no try is left.
        retry_after: seconds the server asked the client to wait, when it said.
    """

    def __init__(self, error: ShipyardError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class Transport(Protocol):
    """One server reached over one protocol. Every call takes the seconds it may use.

    Methods raise ``shipyard.errors`` exceptions, or ``Unavailable`` for failures
    the caller may retry.
    """

    async def infer(
        self, model: str, version: str | None, request: InferenceRequest, timeout: float
    ) -> InferenceResponse:
        """Run one inference request."""
        ...

    async def server_metadata(self, timeout: float) -> dict[str, Any]:
        """Server name, version and extensions."""
        ...

    async def model_metadata(self, model: str, version: str | None, timeout: float) -> dict[str, Any]:
        """A model's versions, platform and signature, as REST's ``GET /v2/models/{name}``."""
        ...

    async def live(self, timeout: float) -> bool:
        """Whether the server process answers."""
        ...

    async def ready(self, timeout: float) -> bool:
        """Whether the server has loaded its models."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
