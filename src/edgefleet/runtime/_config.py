"""Runtime configuration: one settings object per component, each read from ``EDGEFLEET_<PART>_*``.

Every limit has a documented default; ``RuntimeConfig`` composes them (each part still reads its own
environment prefix, e.g. ``EDGEFLEET_BATCHER_MAX_BATCH_SIZE=16``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ApiConfig",
    "BatcherConfig",
    "BreakerConfig",
    "CacheConfig",
    "CloudConfig",
    "EngineConfig",
    "EscalationConfig",
    "FallbackConfig",
    "RuntimeConfig",
    "ValidationConfig",
]


def _cfg(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=f"EDGEFLEET_{prefix}_", extra="forbid", validate_default=True)


class EngineConfig(BaseSettings):
    """How an inference engine (ONNX Runtime, LiteRT) is set up."""

    model_config = _cfg("ENGINE")

    intra_op_threads: int = Field(1, ge=0, description="threads inside one op (0: ORT's default)")
    inter_op_threads: int = Field(1, ge=0, description="threads across ops (0: ORT's default)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimization level"
    )
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="execution providers in order of preference; missing ones are skipped",
    )
    warmup_runs: int = Field(3, ge=0, description="inference runs on zeros at load, before serving")
    warmup_batch_size: int = Field(1, ge=1, description="rows per warm-up run (dynamic batch only)")


class BatcherConfig(BaseSettings):
    """Dynamic batching: group concurrent requests into one model call."""

    model_config = _cfg("BATCHER")

    enabled: bool = Field(True, description="batch concurrent requests")
    max_batch_size: int = Field(32, ge=1, description="most rows in one model call")
    max_delay_ms: float = Field(2.0, ge=0, description="longest wait for more rows after the first")
    max_queue: int = Field(1024, ge=1, description="most waiting requests; beyond it: overloaded")
    workers: int = Field(
        1,
        ge=0,
        le=64,
        description="threads running batches in parallel (0: one per usable core over the engine's threads, at most 4)",
    )
    fixed_batch: Literal["pad", "split"] = Field(
        "pad", description="models with a fixed batch dimension: pad with zeros or run one by one"
    )


class ValidationConfig(BaseSettings):
    """Input checks against the manifest before a model sees a request."""

    model_config = _cfg("VALIDATION")

    enabled: bool = Field(True, description="check inputs against the manifest")
    max_payload_bytes: int = Field(16 << 20, ge=1, description="largest request body / input bytes")
    max_rows: int = Field(1024, ge=1, description="most rows (batch dimension) in one request")
    check_finite: bool = Field(True, description="refuse NaN and Inf")
    check_range: bool = Field(True, description="refuse values outside a spec's value_range")
    allow_unknown_inputs: bool = Field(False, description="ignore (rather than refuse) unknown names")


class CacheConfig(BaseSettings):
    """Optional answer cache keyed by a hash of each input row."""

    model_config = _cfg("CACHE")

    enabled: bool = Field(False, description="serve repeated inputs from the cache")
    max_entries: int = Field(10_000, ge=1, description="most cached rows")
    max_bytes: int = Field(32 << 20, ge=1, description="most bytes of cached outputs")
    ttl_s: float = Field(300.0, gt=0, description="seconds a cached answer stays valid")


class BreakerConfig(BaseSettings):
    """Circuit breaker: stop calling a failing tier, probe it again after an exponential backoff."""

    model_config = _cfg("BREAKER")

    failure_threshold: int = Field(5, ge=1, description="failures within the window that open it")
    window: int = Field(20, ge=1, description="most recent calls considered")
    backoff_s: float = Field(1.0, gt=0, description="first open period")
    backoff_max_s: float = Field(60.0, gt=0, description="longest open period")
    backoff_factor: float = Field(2.0, ge=1, description="growth of the open period per re-open")
    jitter: float = Field(0.2, ge=0, le=1, description="random +/- fraction on each open period")
    half_open_calls: int = Field(1, ge=1, description="probe calls allowed while half-open")

    @model_validator(mode="after")
    def _threshold_fits(self) -> BreakerConfig:
        if self.failure_threshold > self.window:
            raise ValueError("failure_threshold cannot exceed window")
        return self


class FallbackConfig(BaseSettings):
    """The chain primary → backup → cache/heuristic."""

    model_config = _cfg("FALLBACK")

    timeout_ms: float | None = Field(
        1000.0, gt=0, description="a tier slower than this is abandoned (None: no timeout)"
    )
    max_stuck_calls: int = Field(4, ge=1, description="hung model calls tolerated before failing fast")
    breaker: bool = Field(True, description="put a circuit breaker in front of every tier but the last")
    min_available_mb: float | None = Field(
        None, ge=0, description="skip the primary when less RAM than this is available (None: off)"
    )


class CloudConfig(BaseSettings):
    """The HTTP endpoint escalations go to (another edgefleet serve, or any compatible API)."""

    model_config = _cfg("CLOUD")

    url: str | None = Field(None, description="POST endpoint, e.g. https://cloud.example/v1/predict")
    timeout_s: float = Field(2.0, gt=0, description="longest wait for one cloud call")
    token: str | None = Field(None, description="bearer token for the cloud endpoint")
    max_response_bytes: int = Field(8 << 20, ge=1, description="largest response read")


class EscalationConfig(BaseSettings):
    """Confidence-based escalation to a larger model or the cloud."""

    model_config = _cfg("ESCALATION")

    enabled: bool = Field(True, description="escalate low-confidence answers when a target exists")
    metric: Literal["max_prob", "margin", "entropy"] = Field(
        "max_prob", description="confidence measure on the score output"
    )
    threshold: float = Field(0.6, description="escalate when confidence is below (entropy: above) this")
    score_output: str | None = Field(None, description="output holding class scores (default: manifest)")
    softmax: bool = Field(False, description="scores are logits: apply softmax before measuring")
    min_budget_ms: float = Field(
        20.0, ge=0, description="escalate only when the deadline leaves at least this much time"
    )
    outbox_kind: str = Field("escalation", description="outbox record kind for queued escalations")
    outbox_priority: int = Field(5, description="outbox priority of queued escalations")


class ApiConfig(BaseSettings):
    """The local HTTP API."""

    model_config = _cfg("API")

    host: str = Field("127.0.0.1", description="interface to bind (loopback by default)")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    uds: str | None = Field(None, description="serve on this Unix socket instead of TCP")
    token: str | None = Field(None, description="bearer token required on every call but /healthz")
    rate_limit_rps: float | None = Field(
        None, gt=0, description="requests per second allowed per client (None: unlimited)"
    )
    rate_limit_burst: int = Field(50, ge=1, description="requests a client may send at once")
    max_body_bytes: int = Field(16 << 20, ge=1, description="largest request body")
    max_concurrency: int = Field(64, ge=1, description="requests handled at once; more wait")
    max_clients: int = Field(10_000, ge=1, description="rate-limit buckets kept (oldest evicted)")
    tls_cert: str | None = Field(None, description="PEM certificate: serve HTTPS (with tls_key)")
    tls_key: str | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: str | None = Field(
        None,
        description="CA whose client certificates are required (mutual TLS); None: no client certificate",
    )
    insecure_http: bool = Field(
        False, description="allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy)"
    )


class RuntimeConfig(BaseSettings):
    """Everything the Runtime needs; each part reads its own ``EDGEFLEET_<PART>_*`` variables."""

    model_config = _cfg("RUNTIME")

    engine: EngineConfig = Field(default_factory=EngineConfig)
    batcher: BatcherConfig = Field(default_factory=BatcherConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    preprocess: bool = Field(True, description="apply the bundle's preprocessing contract")
    postprocess: bool = Field(True, description="apply the bundle's postprocessing (softmax, labels)")
    metrics: bool = Field(True, description="record Prometheus metrics")
    drain_timeout_s: float = Field(30.0, gt=0, description="longest wait for in-flight calls on swap")
    golden_check: bool = Field(True, description="run the bundle's golden set before serving it")
    trigger: str | None = Field(
        None,
        description="a cheap gate in front of the model, e.g. energy:-40dBFS[:HANGOVER] (None: none); "
        "inputs it rejects are answered triggered=false without running the model",
    )
    trigger_input: str | None = Field(None, description="input the trigger looks at (default: first float)")
    power_watts: float | None = Field(
        None, gt=0, description="the device's CPU power figure in W, for energy estimates (None: none)"
    )
