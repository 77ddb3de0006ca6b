"""Request and response bodies of the operator API (device messages live in ``edgefleet.protocol``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.protocol import GateThresholds

__all__ = [
    "DEFAULT_WAVES",
    "RolloutGates",
    "RolloutCreate",
    "RolloutAction",
    "ReleaseRegister",
    "EnrollmentTokenCreate",
    "OperatorTokenCreate",
    "DevicePatch",
]

DEFAULT_WAVES = [1.0, 5.0, 25.0, 100.0]

_TAG_KEY = r"^[A-Za-z0-9_.\-/]{1,64}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutGates(_In):
    """Per-wave gates. ML gates compare the wave's devices (on the new release) with the control group
    (selected devices still on the previous release); without a control group they compare with the
    baseline recorded when the rollout started, or use the absolute limit where one exists.
    """

    min_devices: int = Field(
        3, ge=1, description="devices on the new release reporting health before a wave passes"
    )
    min_requests: int = Field(
        100, ge=0, description="requests the wave must have served before the ML gates judge it"
    )
    min_control_requests: int = Field(
        100, ge=0, description="requests a control group needs before it serves as the reference"
    )
    max_install_failure_rate: float = Field(0.2, ge=0, le=1, description="failed installs / attempted")
    max_error_rate_increase: float = Field(0.02, ge=0, le=1, description="wave error rate minus control's")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="absolute limit when there is no reference")
    error_rate_alpha: float = Field(
        0.01,
        gt=0,
        le=1,
        description="an error rate above its limit fails the gate once a one-sided binomial test says the "
        "excess is not chance at this level; until then the wave waits for more requests (1 = fail at once)",
    )
    max_latency_p95_ratio: float = Field(1.5, gt=0, description="wave p95 latency / control p95 latency")
    latency_looks: int = Field(
        3,
        ge=1,
        description="consecutive looks with p95 over its limit before the latency gate fails (1: first)",
    )
    latency_look_s: float = Field(
        60.0,
        gt=0,
        description="seconds between looks; each compares the wave with the control group from the heartbeats "
        "both sent in the last latency_look_s seconds",
    )
    latency_floor_ms: float = Field(
        5.0, ge=0, description="a wave p95 within this many ms of the reference never fails the latency gate"
    )
    min_confidence_ratio: float = Field(0.9, ge=0, description="wave mean confidence / control's")
    min_golden_pass_rate: float = Field(
        1.0, ge=0, le=1, description="share of devices passing the golden set"
    )
    min_shadow_agreement: float = Field(0.9, ge=0, le=1, description="mean agreement of shadow runs")
    max_drift_increase: float = Field(0.2, ge=0, description="wave drift score minus control's")
    min_labelled: int = Field(
        0,
        ge=0,
        description="live accuracy gate (issue 13): labelled samples the wave needs before it is judged "
        "(0: gate off); see server/_accuracy.accuracy_gate",
    )
    max_accuracy_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="non-inferiority margin: how much lower than control's live accuracy may be",
    )
    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="live accuracy floor when the control group has too few labels, or only labels "
        "from before the switch that are too few to decide",
    )


class RolloutCreate(_In):
    name: str = Field(min_length=1, max_length=64, description="model name of the release")
    version: str = Field(min_length=1, max_length=64)
    selector: str = Field("*", max_length=1024, description="e.g. 'class=pi4 region=eu-*'")
    waves: list[float] = Field(default_factory=lambda: list(DEFAULT_WAVES), min_length=1, max_length=20)
    soak_s: float | list[float] = Field(
        600.0, description="seconds each wave soaks before it can pass (one value, or one per wave)"
    )
    policy: Literal["auto", "approval"] = Field(
        "auto", description="advance passed waves, or wait for approve"
    )
    on_fail: Literal["rollback", "halt"] = Field(
        "rollback", description="what a failed gate does to the wave"
    )
    gates: RolloutGates = Field(default_factory=RolloutGates)
    device_gates: GateThresholds | None = Field(
        None, description="device-side health gate sent with each assignment (default: GateThresholds())"
    )
    force: bool = Field(
        False, description="a forced update (security fix): ignores the devices' update policies"
    )

    @field_validator("waves")
    @classmethod
    def _waves(cls, v: list[float]) -> list[float]:
        for p in v:
            if not 0 < p <= 100:
                raise ValueError(f"wave {p} is not a percentage in (0, 100]")
        for a, b in zip(v, v[1:], strict=False):
            if b <= a:
                raise ValueError(f"waves must increase strictly: {a} is followed by {b}")
        return v

    @field_validator("soak_s")
    @classmethod
    def _soak(cls, v: float | list[float]) -> float | list[float]:
        values = v if isinstance(v, list) else [v]
        if any(s < 0 for s in values):
            raise ValueError("soak times cannot be negative")
        return v

    def soak_list(self) -> list[float]:
        if isinstance(self.soak_s, list):
            if len(self.soak_s) != len(self.waves):
                from edgefleet.errors import ValidationError

                raise ValidationError(
                    f"{len(self.soak_s)} soak times for {len(self.waves)} waves",
                    hint="give one soak time, or one per wave",
                )
            return list(self.soak_s)
        return [float(self.soak_s)] * len(self.waves)


class RolloutAction(_In):
    reason: str | None = Field(None, max_length=1024)


class ReleaseRegister(_In):
    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    device_classes: dict[str, list[str]] | None = Field(
        None,
        description="variant -> device classes it serves; default: the variant's name and its prefix "
        "before '-' (cpu-int8 serves cpu-int8 and cpu)",
    )


class EnrollmentTokenCreate(_In):
    tags: dict[str, str] = Field(default_factory=dict, description="tags every device enrolled with it gets")
    expires_in_s: float | None = Field(None, gt=0, description="lifetime (default: server setting)")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_tags(v)


class OperatorTokenCreate(_In):
    name: str = Field(min_length=1, max_length=128)
    role: Literal["viewer", "deployer", "admin"]


class DevicePatch(_In):
    tags: dict[str, str] | None = Field(None, description="replace the device's tags")
    name: str | None = Field(None, max_length=128)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return None if v is None else _check_tags(v)


def _check_tags(v: dict[str, Any]) -> dict[str, str]:
    import re

    if len(v) > 64:
        raise ValueError("at most 64 tags")
    for k, val in v.items():
        if not re.match(_TAG_KEY, k):
            raise ValueError(f"tag key {k!r} must be 1-64 of letters, digits, '_', '.', '-', '/'")
        if (
            not isinstance(val, str)
            or not 0 < len(val) <= 256
            or any(c.isspace() or c in "=!,*?[" for c in val)
        ):
            raise ValueError(f"tag {k!r} needs a value of 1-256 characters without spaces or = ! , * ? [")
    return v
