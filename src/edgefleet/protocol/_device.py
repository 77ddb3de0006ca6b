"""Messages between a device agent and the control plane (director)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PROTOCOL_VERSION",
    "HardwareProfile",
    "EnrollRequest",
    "EnrollResponse",
    "ActiveModel",
    "Resources",
    "ModelHealth",
    "Heartbeat",
    "ShadowSettings",
    "GateThresholds",
    "Assignment",
    "HeartbeatResponse",
    "RenewRequest",
    "RenewResponse",
    "SignedDirective",
    "TelemetryBatch",
    "ErrorBody",
]

PROTOCOL_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HardwareProfile(_Msg):
    """What a device reports about itself at enrollment and in heartbeats."""

    arch: str
    cores: int = Field(ge=1)
    ram_mb: int = Field(ge=0)
    disk_free_mb: int = Field(ge=0)
    isa_flags: list[str] = Field(default_factory=list)
    onnxruntime_version: str | None = None
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    device_class: str = "cpu"
    tags: dict[str, str] = Field(default_factory=dict)


class EnrollRequest(_Msg):
    token: str = Field(min_length=8, max_length=256, description="one-time enrollment token")
    name: str | None = Field(None, max_length=128)
    hardware: HardwareProfile
    csr: str | None = Field(
        None,
        max_length=16384,
        description="PEM certificate signing request for the device's own key (mutual TLS); the key never "
        "leaves the device",
    )


class EnrollResponse(_Msg):
    device_id: str
    device_token: str
    poll_interval_s: float
    repository_url: str = Field(description="base URL of the TUF image repository (metadata/, targets/)")
    root_json_sha256: str | None = Field(
        None,
        description="sha256 of the repository's current root.json (reached from the pinned one by TUF's chain)",
    )
    device_cert: str | None = Field(
        None, description="PEM client certificate for the CSR (subject = device id)"
    )
    ca_cert: str | None = Field(None, description="PEM CA certificate of the control plane (pin it)")
    director_key: str | None = Field(
        None, description="PEM Ed25519 public key that signs the director's answers (pin it)"
    )


class ActiveModel(_Msg):
    name: str
    version: str
    variant: str
    target_path: str
    sha256: str


class Resources(_Msg):
    cpu_percent: float | None = None
    rss_mb: float | None = None
    disk_free_mb: float | None = None
    temperature_c: float | None = None
    battery_percent: float | None = None
    power_source: str | None = Field(None, max_length=16, description="ac, usb or battery")
    power_rules: list[str] | None = Field(
        None, max_length=64, description="device policy rules on now (edgefleet.power)"
    )
    power_switches: int | None = Field(None, ge=0, description="policy rule switches since the agent started")
    metered: bool | None = Field(None, description="the device's link is metered (None: cannot tell)")
    cpu_ms_per_inference: float | None = Field(
        None, ge=0, description="process CPU time per inference since the last heartbeat"
    )
    energy_mj: float | None = Field(None, ge=0, description="energy per inference since the last heartbeat")
    energy_method: str | None = Field(
        None, max_length=16, description="rapl (package counters) or estimate (CPU time x cpu_watts)"
    )


class ModelHealth(_Msg):
    """Summary of the active model since the last heartbeat; feeds the rollout gates."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    requests: int = Field(0, ge=0)
    errors: int = Field(0, ge=0)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    mean_confidence: float | None = None
    golden_pass: bool | None = None
    shadow_agreement: float | None = None
    drift_score: float | None = None


class Heartbeat(_Msg):
    device_id: str
    sent_at: datetime = Field(default_factory=_now)
    protocol_version: int = PROTOCOL_VERSION
    active: ActiveModel | None = None
    state: str = Field("idle", description="agent state machine step: idle, downloading, staged, ...")
    progress: float | None = Field(None, ge=0.0, le=1.0, description="download progress of a pending target")
    health: ModelHealth = Field(default_factory=ModelHealth)
    resources: Resources = Field(default_factory=Resources)
    hardware: HardwareProfile | None = None
    last_error: str | None = Field(None, max_length=4096)
    events: list[dict[str, Any]] = Field(default_factory=list, max_length=100)


class ShadowSettings(_Msg):
    sample_rate: float = Field(0.1, ge=0.0, le=1.0)
    min_samples: int = Field(20, ge=0)
    min_agreement: float = Field(0.9, ge=0.0, le=1.0)


class GateThresholds(_Msg):
    """Device-side health gate and watch window, sent with each assignment."""

    require_golden: bool = True
    latency_budget_ms: float | None = None
    memory_budget_mb: float | None = None
    watch_window_s: float = 60.0
    max_error_rate: float = 0.05
    max_latency_ratio: float = 1.5
    min_confidence_ratio: float = 0.9
    crash_loop_failures: int = 3
    crash_loop_window_s: float = 300.0
    shadow: ShadowSettings | None = None


class Assignment(_Msg):
    """What the director says a device should run. The device also requires TUF to agree."""

    rollout_id: str | None = None
    name: str
    version: str
    variant: str
    target_path: str
    length: int = Field(ge=0)
    hashes: dict[str, str] = Field(description="e.g. {'sha256': '...'}")
    gates: GateThresholds = Field(default_factory=GateThresholds)
    reason: str | None = None


class SignedDirective(_Msg):
    """A director decision's exact JSON bytes (as a string) and their Ed25519 signature (see ``_directive``)."""

    payload: str = Field(max_length=64 << 10)
    signature: str = Field(max_length=256, description="base64 Ed25519 signature of payload's UTF-8 bytes")
    key_id: str = Field(max_length=128, description="sha256 of the raw public key, hex")


class FederatedJob(_Msg):
    """A federated job the device is asked to take part in (issue 14): it starts a Flower SuperNode for
    ``superlink`` while its state allows, and leaves when the job is no longer named or ``until`` passed."""

    job_id: str = Field(max_length=64)
    superlink: str = Field(max_length=256, description="host:port of the job's Flower SuperLink")
    until: float = Field(description="UNIX seconds: the device leaves the job then")


class HeartbeatResponse(_Msg):
    assignment: Assignment | None = None
    poll_interval_s: float = 60.0
    commands: list[str] = Field(default_factory=list, description="e.g. 'rollback', 'rollback:1.2.0'")
    server_time: datetime = Field(default_factory=_now)
    signed: SignedDirective | None = Field(
        None,
        description="the assignment and commands, signed by the director key with a sequence number and an "
        "expiry; a device that pinned the key acts only on this",
    )
    wait_reason: str | None = Field(
        None,
        max_length=1024,
        description="why the device gets no new assignment now (its group's update policy holds it)",
    )
    federated: FederatedJob | None = Field(
        None, description="a federated job this device is selected for (also in the signed directive)"
    )


class RenewRequest(_Msg):
    """A device asks for a new certificate (for a new key) before its current one expires."""

    csr: str = Field(max_length=16384, description="PEM CSR for the device's new key")


class RenewResponse(_Msg):
    device_cert: str = Field(description="PEM client certificate (subject = device id)")


class TelemetryBatch(_Msg):
    """An upload of aggregated telemetry windows; ``batch_id`` makes retries idempotent."""

    batch_id: str = Field(min_length=8, max_length=128)
    device_id: str
    created: datetime = Field(default_factory=_now)
    windows: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)
    events: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)


class ErrorBody(BaseModel):
    error: str
    message: str
    hint: str | None = None
    details: dict[str, Any] | None = None
    kind: Literal["error"] = "error"
