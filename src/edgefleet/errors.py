"""One exception hierarchy for edgefleet.

Every error says what was wrong (the message) and what to do about it (the hint). The CLI prints both
without a traceback and exits non-zero; the HTTP layers map ``status_code`` onto their responses.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EdgefleetError",
    "DeviceRevokedError",
    "ConfigError",
    "InputError",
    "ValidationError",
    "PayloadTooLargeError",
    "NotFoundError",
    "ConflictError",
    "ManifestError",
    "SchemaVersionError",
    "BundleError",
    "IntegrityError",
    "UnsafeArchiveError",
    "GoldenMismatchError",
    "ModelLoadError",
    "PreprocessError",
    "DeltaError",
    "RegistryError",
    "KeyStoreError",
    "VersionExistsError",
    "OptimizeError",
    "BudgetNotMetError",
    "InferenceError",
    "OverloadedError",
    "DeadlineExceededError",
    "ModelTimeoutError",
    "CircuitOpenError",
    "RateLimitedError",
    "AgentError",
    "DownloadError",
    "VerificationError",
    "HealthCheckError",
    "DiskSpaceError",
    "ServerError",
    "AuthError",
    "ForbiddenError",
    "RolloutError",
    "TelemetryError",
]


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose.

    Args:
        message: what was wrong, in one sentence.
        hint: what the user can do about it.
        details: machine-readable context (paths, names, figures).
    """

    status_code: int = 500
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON body HTTP layers send for this error."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.details:
            body["details"] = {k: _jsonable(v) for k, v in self.details.items()}
        return body


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class ConfigError(EdgefleetError):
    """A configuration file, setting or option is wrong."""

    code = "config"
    status_code = 400


class InputError(EdgefleetError):
    """Something the user handed in is wrong."""

    code = "invalid_input"
    status_code = 400


class ValidationError(InputError):
    """An input failed validation against a schema or manifest."""

    code = "validation"
    status_code = 422


class PayloadTooLargeError(InputError):
    code = "payload_too_large"
    status_code = 413


class NotFoundError(EdgefleetError):
    code = "not_found"
    status_code = 404


class ConflictError(EdgefleetError):
    code = "conflict"
    status_code = 409


# --- bundles -----------------------------------------------------------------------------------


class BundleError(EdgefleetError):
    """A bundle cannot be built, read or trusted."""

    code = "bundle"
    status_code = 400


class ManifestError(BundleError):
    code = "manifest"


class SchemaVersionError(ManifestError):
    """A manifest (or database, or message) comes from a newer schema than this edgefleet knows."""

    code = "schema_version"


class IntegrityError(BundleError):
    """Bytes do not match the hash or length they were promised to have."""

    code = "integrity"


class UnsafeArchiveError(BundleError):
    """An archive holds entries that would escape or subvert the extraction directory."""

    code = "unsafe_archive"


class GoldenMismatchError(BundleError):
    """The model's outputs on the golden inputs differ from the expected outputs."""

    code = "golden_mismatch"


class ModelLoadError(BundleError):
    """The inference runtime cannot load the model."""

    code = "model_load"


class PreprocessError(BundleError):
    """A preprocessing contract step is unknown, misconfigured or failed on its input."""

    code = "preprocess"
    status_code = 422


class DeltaError(BundleError):
    code = "delta"


# --- registry ----------------------------------------------------------------------------------


class RegistryError(EdgefleetError):
    code = "registry"
    status_code = 400


class KeyStoreError(RegistryError):
    code = "keys"


class VersionExistsError(RegistryError, ConflictError):
    """A published name+version+variant is immutable."""

    code = "version_exists"
    status_code = 409


# --- optimizer ---------------------------------------------------------------------------------


class OptimizeError(EdgefleetError):
    code = "optimize"
    status_code = 400


class BudgetNotMetError(OptimizeError):
    """No variant meets the accuracy or device budget."""

    code = "budget_not_met"


# --- runtime -----------------------------------------------------------------------------------


class InferenceError(EdgefleetError):
    """The model failed while answering a request."""

    code = "inference"
    status_code = 500


class OverloadedError(InferenceError):
    """The request queue is full; retry after ``retry_after`` seconds."""

    code = "overloaded"
    status_code = 503

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.retry_after = retry_after


class DeadlineExceededError(InferenceError):
    code = "deadline_exceeded"
    status_code = 504


class ModelTimeoutError(InferenceError):
    code = "model_timeout"
    status_code = 504


class CircuitOpenError(InferenceError):
    code = "circuit_open"
    status_code = 503


class RateLimitedError(EdgefleetError):
    """A client sends more requests than its rate limit; retry after ``retry_after`` seconds."""

    code = "rate_limited"
    status_code = 429

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.retry_after = retry_after


# --- agent -------------------------------------------------------------------------------------


class AgentError(EdgefleetError):
    code = "agent"


class DownloadError(AgentError):
    code = "download"


class VerificationError(AgentError):
    """A target or its metadata failed TUF or director verification."""

    code = "verification"


class HealthCheckError(AgentError):
    code = "health_check"


class DiskSpaceError(AgentError):
    code = "disk_space"
    status_code = 507


# --- server ------------------------------------------------------------------------------------


class ServerError(EdgefleetError):
    code = "server"


class AuthError(ServerError):
    code = "unauthorized"
    status_code = 401


class DeviceRevokedError(AuthError):
    """A device an operator revoked: refused on every request, by certificate or by token."""

    code = "device_revoked"


class ForbiddenError(ServerError):
    code = "forbidden"
    status_code = 403


class RolloutError(ServerError):
    code = "rollout"
    status_code = 400


# --- telemetry ---------------------------------------------------------------------------------


class TelemetryError(EdgefleetError):
    code = "telemetry"
    status_code = 400
