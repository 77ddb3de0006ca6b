"""On-device inference as composable predictors: engines, batching, validation, cache, fallback,
escalation, hot swap and the local HTTP API (see DESIGN.md "Runtime").

Every predictor returns a :class:`Prediction` (a ``dict`` of output arrays) whose ``.tiers`` says which
tier answered each row and whose ``.events`` lists fallbacks, escalations and cache hits.

    rt = Runtime.from_bundle("digits.tar", backup="small.onnx", cloud_url="https://cloud/v1/predict")
    res = rt.predict([x], deadline=0.05)     # res.tier, res.labels, res.events
"""

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
from edgefleet.runtime._engines import OrtEngine
from edgefleet.runtime._predictor import Event, Prediction, Predictor, PredictorMetadata, Priority
from edgefleet.runtime._runtime import Result, Runtime

_API_NAMES = {"ApiServer": "_server", "create_app": "_api"}


def __getattr__(name: str):
    # The HTTP layer imports FastAPI; load it only when asked for (the agent does not need it).
    if name in _API_NAMES:
        import importlib

        return getattr(importlib.import_module(f"edgefleet.runtime.{_API_NAMES[name]}"), name)
    raise AttributeError(f"module 'edgefleet.runtime' has no attribute {name!r}")


# What callers use: the runtime and its settings (one section per stage), what predict takes and returns
# (Priority, Result; a Prediction with its Events), the predictor protocol a custom backup implements, the ONNX Runtime engine, and the local HTTP API.
# Stages (batcher, cache, guards, fallback, cascade...) are composed by Runtime; import them from
# their modules when composing by hand.
__all__ = [
    "ApiConfig",
    "ApiServer",
    "BatcherConfig",
    "BreakerConfig",
    "CacheConfig",
    "CloudConfig",
    "EngineConfig",
    "EscalationConfig",
    "Event",
    "FallbackConfig",
    "OrtEngine",
    "Prediction",
    "Predictor",
    "PredictorMetadata",
    "Priority",
    "Result",
    "Runtime",
    "RuntimeConfig",
    "ValidationConfig",
    "create_app",
]
