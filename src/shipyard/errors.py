"""The one exception hierarchy of shipyard.

Every error a user can see is a ``ShipyardError``. Subclasses carry structured
fields and build their own message. Each class has a ``kind``, one of ``KINDS``
(shown in brackets below where a class sets its own; the rest inherit it):
what sort of failure it is, stable across releases and transports.
``shipyard.protocol.status`` maps a kind to its HTTP status, gRPC code and
GraphQL code, and every transport derives its table from that one. Nothing here
knows HTTP.

    ShipyardError                    [internal]
    ├── ConfigError
    │   └── InvalidOption            [invalid_input] an option or setting of the wrong type, or that does not apply here
    │       └── UnknownOption        no option or setting has this name (says the nearest valid one)
    ├── MissingDependency            an optional extra is not installed
    ├── RegistryError
    │   ├── ModelNotFound            [not_found] no such model, version or alias
    │   │   └── ModelNotServed       registered, but this server does not serve it
    │   ├── VersionConflict          [conflict] a concurrent write won; retry
    │   ├── IdenticalVersion         [conflict] these exact files already are a version of the model
    │   ├── PromotionRefused         [conflict] a promotion gate failed; the alias did not move
    │   └── ArtifactIntegrityError   a file's sha256 differs from the record
    ├── ModelFormatError
    │   ├── UnsupportedModel         no runtime knows this object or file
    │   └── UnsafeFormat             pickle without an explicit trust flag
    ├── ExportError                  a version cannot be exported or optimised for the edge
    │   ├── NotExportable            no ONNX converter for this model (custom Python code)
    │   └── CheckFailed              an artifact differs from its source beyond the tolerance
    ├── InvalidInput                 [invalid_input] the request does not fit the signature
    │   ├── PayloadTooLarge          [too_large]
    │   └── UnsupportedMediaType     [unsupported_media_type]
    ├── ModelNotReady                [unavailable]
    │   └── Overloaded               the model's queue is full; retry after a pause
    ├── RequestTimeout               [timeout] the request outlived its deadline
    ├── InferenceError               the model itself raised
    ├── BrokerError                  [unavailable] a stream broker refused or failed an operation
    ├── JobNotFound                  [not_found] no asynchronous request has this id
    ├── FeedbackNotFound             [not_found] feedback names a prediction or request not (or no longer) kept
    ├── Unauthenticated              [unauthenticated] no credentials, or credentials that do not check out
    ├── PermissionDenied             [forbidden] the caller is known but may not do this
    └── RateLimited                  [rate_limited] the caller's credential is over its request rate
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, get_args

#: What sort of failure an error is. Clients and dashboards branch on it; each
#: transport maps it to a status in ``shipyard.protocol.status``.
Kind = Literal[
    "invalid_input",  # the caller sent something that cannot work; do not retry as is
    "not_found",  # no such model, version, alias or asynchronous request
    "conflict",  # the write clashes with what exists (an identical or concurrent version)
    "too_large",  # the request body is over the limit
    "unsupported_media_type",  # the body's content type is not read here
    "unavailable",  # not ready or overloaded: retry, after ``retry_after`` seconds when given
    "timeout",  # the request outlived its deadline
    "unauthenticated",  # no credentials, or ones that do not check out
    "forbidden",  # the caller is known but may not do this
    "rate_limited",  # the caller's credential is over its request rate: retry after ``retry_after`` seconds
    "internal",  # the server (or the model) failed; nothing the caller can fix
]
KINDS: frozenset[str] = frozenset(get_args(Kind))


class ShipyardError(Exception):
    """Base class of every error shipyard raises on purpose."""

    kind: ClassVar[Kind] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ShipyardError):
    """A setting is missing or has a value that cannot work."""


class InvalidOption(ConfigError):
    """An option (runtime option, ``--option KEY=VALUE``, URL option) or setting has a bad value.

    Args:
        message: the full reason, naming the option.
        option: the option's name as the user wrote it.
        expected: what would be accepted there (a type name).
        got: what arrived.
    """

    kind: ClassVar[Kind] = "invalid_input"

    def __init__(self, message: str, *, option: str, expected: Any = None, got: Any = None) -> None:
        self.option = option
        self.field = option  # error bodies name the field at fault; here it is the option
        self.expected = expected
        self.got = got
        super().__init__(message)


class UnknownOption(InvalidOption):
    """No option or setting of this name exists where it was given.

    Args:
        option: the name as given.
        owner: what was asked, e.g. ``runtime sklearn`` or ``local:// URLs``.
        valid: the names that would have been accepted.
        suggestion: the nearest valid name (as the user would write it), if any is near.
        what: the kind of name, e.g. ``option``, ``setting``, ``environment variable``.
    """

    def __init__(
        self,
        option: str,
        *,
        owner: str,
        valid: Sequence[str],
        suggestion: str | None = None,
        what: str = "option",
    ) -> None:
        self.owner = owner
        self.valid = tuple(valid)
        self.suggestion = suggestion
        if suggestion is not None:
            shown = suggestion if suggestion.startswith("-") else f"'{suggestion}'"
            hint = f"did you mean {shown}?"
        elif self.valid:
            hint = f"valid {what}s: " + ", ".join(self.valid)
        else:
            hint = f"it takes no {what}s"
        super().__init__(f"unknown {what} '{option}' for {owner}; {hint}", option=option, expected=self.valid,
                         got=option)


class MissingDependency(ShipyardError):
    """An optional package is needed for this feature and is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; it is needed here. "
            f"Install it with: pip install 'shipyard[{extra}]'"
        )


class RegistryError(ShipyardError):
    """The registry could not complete an operation."""


class ModelNotFound(RegistryError):
    """No model, version or alias matches the reference."""

    kind: ClassVar[Kind] = "not_found"

    def __init__(self, name: str, version: str | int | None = None, alias: str | None = None) -> None:
        self.name = name
        self.version = version
        self.alias = alias
        if alias is not None:
            msg = f"model '{name}' has no alias '{alias}'"
        elif version is not None:
            msg = f"model '{name}' has no version {version}"
        else:
            msg = f"model '{name}' is not registered"
        super().__init__(msg)


class ModelNotServed(ModelNotFound):
    """The model exists in the registry but the server was not started with it."""

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(name)
        shown = ", ".join(served) or "no models"
        self.message = (
            f"model '{name}' is not served here (this server serves {shown}); "
            "start the server with it, or with no model names to serve every registered model"
        )
        self.args = (self.message,)


class VersionConflict(RegistryError):
    """Another writer took the same version number; the write was rolled back."""

    kind: ClassVar[Kind] = "conflict"


class IdenticalVersion(RegistryError):
    """The files being registered are exactly those of an existing version of the same model.

    Identical means the same manifest digest (every file: model, input example,
    check set) and the same runtime settings (flavor and its options); tags,
    metrics, description and lineage do not count. Raised by
    ``register(..., if_identical="refuse")``, the default.

    Args:
        name: the model.
        version: the existing version holding these files.
        digest: their manifest digest.
    """

    kind: ClassVar[Kind] = "conflict"

    def __init__(self, name: str, version: int, digest: str) -> None:
        self.name = name
        self.version = version
        self.digest = digest
        super().__init__(
            f"identical to {name}:{version} (same files, sha256 {digest[:12]}); pass if_identical='reuse' "
            "to get that version back (CLI --if-identical reuse) or 'new' to register a copy"
        )


class PromotionRefused(RegistryError):
    """A promotion gate failed, so the alias was not moved (``--force`` moves it anyway, audited)."""

    kind: ClassVar[Kind] = "conflict"

    def __init__(self, target: str, version: int, reasons: str) -> None:
        self.target = target
        self.version = version
        self.reasons = reasons
        super().__init__(f"{target} not moved to version {version}: promotion gates failed:\n{reasons}")


class ArtifactIntegrityError(RegistryError):
    """A stored file no longer has the sha256 recorded at registration."""

    def __init__(
        self, name: str, version: int, path: str, expected: str | None, actual: str | None
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.expected = expected
        self.actual = actual
        if expected is None:
            what = "is not part of the registered version (an unexpected file was added)"
        elif actual is None:
            what = f"is missing (expected sha256 {expected[:12]}...)"
        else:
            what = f"was changed after registration (expected sha256 {expected[:12]}..., found {actual[:12]}...)"
        super().__init__(
            f"refusing to load {name}:{version}: artifact file '{path}' {what}; "
            "re-register the model from a trusted source"
        )


class ModelFormatError(ShipyardError):
    """The model object or file cannot be saved or loaded."""


class UnsupportedModel(ModelFormatError):
    """No runtime recognises the object or file."""


class UnsafeFormat(ModelFormatError):
    """Loading this format runs arbitrary code, and trust was not given."""

    def __init__(self, path: str, what: str = "a pickle file") -> None:
        self.path = path
        super().__init__(
            f"'{path}' is {what}: loading it can run arbitrary code. "
            "Pass --trust-pickle (trust_pickle=True) only if you trust where it came from, "
            "or save the model with skops (skops.io.dump) and register that instead"
        )


class ExportError(ShipyardError):
    """A version cannot be exported, optimised or bundled for the edge."""


class NotExportable(ExportError):
    """The model's format has no converter to ONNX, or this transformation does not apply to it."""


class CheckFailed(ExportError):
    """An exported or optimised artifact disagrees with its source beyond the tolerance.

    Args:
        variant: which artifact failed, e.g. ``onnx+quantize:dynamic``.
        reason: what was measured against what was allowed.
    """

    def __init__(self, variant: str, reason: str) -> None:
        self.variant = variant
        self.reason = reason
        super().__init__(f"{variant} failed its check against the source model: {reason}; nothing was written")


class InvalidInput(ShipyardError):
    """A request does not match what the model accepts.

    Args:
        message: the full human-readable reason.
        field: the input (column or tensor) at fault, when there is one.
        expected: what the signature wants there.
        got: what arrived.
    """

    kind: ClassVar[Kind] = "invalid_input"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        expected: Any = None,
        got: Any = None,
    ) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(message)

    @classmethod
    def for_field(cls, field: str, expected: Any, got: Any, what: str = "") -> InvalidInput:
        """Build the standard 'input X: expected A, got B' message."""
        lead = f"input '{field}'" + (f" {what}" if what else "")
        return cls(f"{lead}: expected {expected}, got {got}", field=field, expected=expected, got=got)


class PayloadTooLarge(InvalidInput):
    """The request body is larger than the configured maximum."""

    kind: ClassVar[Kind] = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"request body of {size} bytes exceeds the limit of {limit} bytes "
            "(raise it with --max-body-bytes / SHIPYARD_MAX_BODY_BYTES)",
            expected=f"<= {limit} bytes",
            got=size,
        )


class UnsupportedMediaType(InvalidInput):
    """The body's content type is not one the endpoint reads."""

    kind: ClassVar[Kind] = "unsupported_media_type"


class ModelNotReady(ShipyardError):
    """The model is known but cannot take requests right now."""

    kind: ClassVar[Kind] = "unavailable"


class Overloaded(ModelNotReady):
    """The model's bounded queue is full: the request is refused at once, not queued."""

    def __init__(self, model: str, queued: int, retry_after: float = 1.0) -> None:
        self.model = model
        self.queued = queued
        self.retry_after = retry_after
        super().__init__(
            f"model {model} is overloaded ({queued} requests queued, the limit); retry in {retry_after:g}s"
        )


class RequestTimeout(ShipyardError):
    """The request did not finish within its deadline."""

    kind: ClassVar[Kind] = "timeout"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(
            f"request did not finish within {seconds:g}s (raise it with --request-timeout / "
            "SHIPYARD_REQUEST_TIMEOUT_SECONDS)"
        )


class InferenceError(ShipyardError):
    """The model raised while predicting."""


class BrokerError(ShipyardError):
    """A stream broker refused or failed an operation (unreachable, produce not confirmed, ...)."""

    kind: ClassVar[Kind] = "unavailable"


class JobNotFound(ShipyardError):
    """No asynchronous request has this id (never submitted, or already expired)."""

    kind: ClassVar[Kind] = "not_found"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no asynchronous request with id '{job_id}'")


class FeedbackNotFound(ShipyardError):
    """Feedback names predictions or requests the server does not know (never served, or pruned).

    Args:
        unknown: ``(index, id)`` of each unknown item in the batch sent.
        total: how many items the batch held.
    """

    kind: ClassVar[Kind] = "not_found"

    def __init__(self, unknown: Sequence[tuple[int, str]], total: int) -> None:
        self.unknown = list(unknown)
        self.field: str | None = f"feedback[{unknown[0][0]}]" if unknown else None
        shown = ", ".join(f"feedback[{i}] {ident[:80]!r}" for i, ident in self.unknown[:5])
        more = f" and {len(self.unknown) - 5} more" if len(self.unknown) > 5 else ""
        super().__init__(f"{len(self.unknown)} of {total} feedback items name no prediction or request this "
                         f"server keeps ({shown}{more}); nothing was applied")


class Unauthenticated(ShipyardError):
    """The request carries no credentials, or credentials that do not check out (unknown, expired)."""

    kind: ClassVar[Kind] = "unauthenticated"


class PermissionDenied(ShipyardError):
    """The caller is authenticated but may not do what it asked."""

    kind: ClassVar[Kind] = "forbidden"


class RateLimited(ShipyardError):
    """The caller's credential made more requests than its rate allows; retry after ``retry_after`` seconds."""

    kind: ClassVar[Kind] = "rate_limited"

    def __init__(self, who: str, retry_after: float) -> None:
        self.who = who
        self.retry_after = retry_after
        super().__init__(f"rate limit of {who} reached; retry in {retry_after:.2g}s")
