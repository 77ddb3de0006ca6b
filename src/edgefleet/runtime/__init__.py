"""On-device inference as composable predictors: engines, batching, validation, cache, fallback,
escalation, hot swap and the local HTTP API (see DESIGN.md "Runtime").

Every predictor returns a :class:`Prediction` (a ``dict`` of output arrays) whose ``.tiers`` says which
tier answered each row and whose ``.events`` lists fallbacks, escalations and cache hits.

    rt = Runtime.from_bundle("digits.tar", backup="small.onnx", cloud_url="https://cloud/v1/predict")
    res = rt.predict([x], deadline=0.05)     # res.tier, res.labels, res.events
"""

from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._cache import AnswerCache, Cached, CacheTier
from edgefleet.runtime._cascade import Cascade, EscalationOutbox, confidence, resend_escalations
from edgefleet.runtime._cloud import CloudPredictor
from edgefleet.runtime._config import (
    ApiConfig,
    BatcherConfig,
    BreakerConfig,
    CacheConfig,
    CloudConfig,
    EngineConfig,
    EscalationConfig,
    FallbackConfig,
    RuntimeConfig,
    ValidationConfig,
)
from edgefleet.runtime._engines import LiteRtEngine, OrtEngine, load_engine
from edgefleet.runtime._fallback import Fallback, Heuristic
from edgefleet.runtime._guards import Breaker, CircuitBreaker, Timeout
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import (
    Event,
    Prediction,
    Predictor,
    PredictorMetadata,
    Priority,
    as_prediction,
    batch_rows,
    check_deadline,
    deadline_in,
    remaining,
)
from edgefleet.runtime._runtime import Result, Runtime
from edgefleet.runtime._validation import Validated, Validator

_API_NAMES = ("ApiServer", "PredictRequest", "create_app")


def __getattr__(name: str):
    # The HTTP layer imports FastAPI; load it only when asked for (the agent does not need it).
    if name in _API_NAMES:
        from edgefleet.runtime import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'edgefleet.runtime' has no attribute {name!r}")


__all__ = [
    "AnswerCache",
    "ApiConfig",
    "ApiServer",
    "BatcherConfig",
    "Batcher",
    "Breaker",
    "BreakerConfig",
    "CacheConfig",
    "CacheTier",
    "Cached",
    "Cascade",
    "CircuitBreaker",
    "CloudConfig",
    "CloudPredictor",
    "EngineConfig",
    "EscalationConfig",
    "EscalationOutbox",
    "Event",
    "Fallback",
    "FallbackConfig",
    "Heuristic",
    "LiteRtEngine",
    "OrtEngine",
    "Prediction",
    "PredictRequest",
    "Predictor",
    "PredictorMetadata",
    "Priority",
    "Result",
    "Runtime",
    "RuntimeConfig",
    "RuntimeMetrics",
    "Timeout",
    "Validated",
    "ValidationConfig",
    "Validator",
    "as_prediction",
    "batch_rows",
    "check_deadline",
    "confidence",
    "create_app",
    "deadline_in",
    "load_engine",
    "remaining",
    "resend_escalations",
]
