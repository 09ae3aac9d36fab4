"""What a batch job reports back, and the error raised when it rejected too many rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shipyard.errors import InvalidInput


@dataclass(frozen=True)
class BatchResult:
    """Summary of one batch run (also written into the output's ``_manifest.json``)."""

    model: str
    """The pinned version that made every prediction, e.g. ``demo:1``."""

    output: Path
    """The output folder."""

    engine: str
    """``local``, ``dask`` or ``spark``."""

    rows: int
    """Input rows read."""

    predicted: int
    """Rows with a prediction in the output."""

    rejected: int
    """Rows that failed the signature; they are in ``rejects_path`` with their reason."""

    parts: int
    """Output parts (files) the job consists of."""

    resumed_parts: int
    """Parts an earlier, interrupted run had finished; this run skipped them."""

    resumed_rows: int
    """Input rows of those parts."""

    seconds: float
    """Wall time of this run."""

    rejects_path: Path | None
    """The rejects file, or None when no row was rejected."""

    @property
    def reject_ratio(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0

    @property
    def rows_per_second(self) -> float:
        """Rows this run did (not those an earlier run finished), per second of this run."""
        return (self.rows - self.resumed_rows) / self.seconds if self.seconds > 0 else 0.0


class RejectLimitExceeded(InvalidInput):
    """More rows were rejected than ``max_reject_ratio`` allows.

    The job still ran to the end: every good row has its prediction in the output and
    every rejected row is in the rejects file. ``result`` holds the full summary.
    """

    def __init__(self, result: BatchResult, limit: float) -> None:
        self.result = result
        self.limit = limit
        super().__init__(
            f"{result.rejected:,} of {result.rows:,} rows ({result.reject_ratio:.2%}) failed the signature of "
            f"{result.model}, more than the allowed {limit:.2%} (--max-reject-ratio); "
            f"see {result.rejects_path} for each row and its reason",
            field="max_reject_ratio",
            expected=f"<= {limit}",
            got=result.reject_ratio,
        )
