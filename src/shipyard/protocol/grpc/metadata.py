"""gRPC metadata keys shipyard's server sets and its client reads (one home for both sides)."""

from __future__ import annotations

#: Trailing metadata keys of a failed call.
FIELD_KEY = "shipyard-error-field"
TYPE_KEY = "shipyard-error-type"
KIND_KEY = "shipyard-error-kind"
REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after"
