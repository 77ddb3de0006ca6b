"""Fleet scenarios as YAML: the fleet's make-up, how each release behaves per device class, the faults
injected and the outcome asserted. Shipped ones live in ``edgefleet/sim/scenarios/`` (``edgefleet sim
good-rollout``); any file path works too."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.errors import ConfigError

__all__ = ["SimScenario", "load_scenario", "shipped_scenarios"]

MAX_SCENARIO_BYTES = 256 * 1024


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceClass(_M):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    share: float = Field(gt=0)
    ram_mb: tuple[int, int] = (1024, 4096)  # drawn uniformly per device
    cores: tuple[int, int] = (2, 8)
    arch: str = "aarch64"


class Behavior(_M):
    """What a release reports on a device (its telemetry's latency, confidence, errors)."""

    error_rate: float = Field(0.01, ge=0, le=1)
    latency_p95_ms: float = Field(5.0, gt=0)
    mean_confidence: float = Field(0.95, ge=0, le=1)
    drift_score: float = Field(0.05, ge=0)
    install_fails: bool = False


class ReleaseSpec(_M):
    version: str = Field(min_length=1, max_length=32)
    behavior: Behavior = Field(default_factory=Behavior)
    classes: dict[str, Behavior] = Field(default_factory=dict)  # a release bad on some classes only


class Fault(_M):
    """One fault. ``kill_server``: kill -9 of the server the devices talk to; ``crash_loop``: the candidate
    crashes on start (on ``device_class`` only, when given) and the devices roll themselves back after the
    assignment's ``crash_loop_failures`` restarts; ``clock_skew``: the devices' clocks are ``skew_s`` off;
    ``offline_mid_update``: a device that starts a download vanishes for ``offline_s``, then resumes it;
    ``drift``: the region's inputs are shifted (``shift``, ``strength``) in the telemetry windows its
    devices upload (the scenario's ``telemetry_every_s`` must be set)."""

    kind: Literal[
        "partition",
        "latency",
        "loss",
        "herd",
        "kill_server",
        "crash_loop",
        "clock_skew",
        "offline_mid_update",
        "drift",
    ]
    at_s: float = Field(ge=0)  # seconds after the rollout starts
    for_s: float = Field(0.0, ge=0)  # crash_loop, clock_skew, drift: 0 is until the end of the run
    region: str | None = None  # None: every region
    device_class: str | None = None  # crash_loop, clock_skew, offline_mid_update: this class only
    latency_ms: float = Field(0.0, ge=0, le=60_000)
    loss: float = Field(0.0, ge=0, le=1)
    spread_s: float = Field(0.0, ge=0)  # herd: nudges spread over this long (0: all at once)
    skew_s: float = Field(0.0, ge=-30 * 86_400, le=30 * 86_400)  # clock_skew: + ahead, - behind
    offline_s: float = Field(2.0, ge=0, le=86_400)  # offline_mid_update: how long a device is away
    shift: Literal["noise", "brightness", "contrast"] = "noise"  # drift: what the inputs suffer
    strength: float = Field(0.35, gt=0, le=5)  # drift: its size (edgefleet.telemetry._shifts)


class Expect(_M):
    rollout_state: Literal["completed", "rolled_back"] | None = None
    all_on: Literal["baseline", "candidate"] | None = None
    max_bad_share: float | None = Field(None, ge=0, le=1)  # devices that ever ran the candidate / fleet
    max_server_errors: int = 0  # 5xx answers the devices saw
    max_peak_over_mean: float | None = Field(None, gt=0)  # herd: peak request rate over the mean
    max_p99_ms: float | None = Field(None, gt=0)  # server's heartbeat p99 over the run (its /metrics)
    max_io_errors: int | None = Field(None, ge=0)  # connection errors the devices saw (resets, timeouts)
    drift_alert_regions: list[str] | None = None  # exactly the regions with an open drift alert at the end


class SimScenario(_M):
    name: str
    description: str = ""
    devices: int = Field(ge=1, le=200_000)
    poll_interval_s: float = Field(gt=0)
    jitter: float = Field(0.2, ge=0, le=1)
    install_delay_s: float = Field(0.2, ge=0)
    classes: list[DeviceClass] = Field(min_length=1)
    regions: dict[str, float] = Field(default_factory=lambda: {"default": 1.0}, min_length=1)
    baseline: ReleaseSpec
    candidate: ReleaseSpec
    soak_s: float = Field(2.0, ge=0)
    gates: dict[str, float] = Field(default_factory=dict)
    faults: list[Fault] = Field(default_factory=list)
    timeout_s: float = Field(120.0, gt=0)
    workers: int | None = Field(None, ge=1, le=256)  # device processes (default: by fleet size and cores)
    telemetry_every_s: float = Field(0.0, ge=0)  # >0: every device uploads a telemetry window this often
    telemetry_rows: int = Field(120, ge=1, le=10_000)  # input rows (real inferences) per window
    expect: Expect = Field(default_factory=Expect)

    @model_validator(mode="after")
    def _consistent(self) -> SimScenario:
        names = {c.name for c in self.classes}
        for f in self.faults:
            if f.region is not None and f.region not in self.regions:
                raise ValueError(
                    f"fault {f.kind} names region {f.region!r}, not one of {sorted(self.regions)}"
                )
            if f.device_class is not None and f.device_class not in names:
                raise ValueError(
                    f"fault {f.kind} names device class {f.device_class!r}, not one of {sorted(names)}"
                )
            if f.kind == "drift" and not self.telemetry_every_s:
                raise ValueError("a drift fault needs telemetry_every_s > 0 (the windows it shifts)")
        for r in self.expect.drift_alert_regions or []:
            if r not in self.regions:
                raise ValueError(
                    f"expect.drift_alert_regions names region {r!r}, not one of {sorted(self.regions)}"
                )
        if self.expect.drift_alert_regions is not None and not self.telemetry_every_s:
            raise ValueError("expect.drift_alert_regions needs telemetry_every_s > 0")
        for rel in (self.baseline, self.candidate):
            unknown = set(rel.classes) - names
            if unknown:
                raise ValueError(f"release {rel.version} names unknown device classes {sorted(unknown)}")
        if self.baseline.version == self.candidate.version:
            raise ValueError("baseline and candidate must be different versions")
        return self


def shipped_scenarios() -> list[str]:
    """Names of the scenarios shipped in the package."""
    d = resources.files("edgefleet.sim") / "scenarios"
    return sorted(p.name.removesuffix(".yaml") for p in d.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str | Path) -> SimScenario:
    """Read a scenario: a shipped name (``good-rollout``) or a YAML file.

    Raises:
        ConfigError: missing, oversized, not YAML, or not a valid scenario (the message says which field).
    """
    p = Path(name_or_path)
    if not p.exists() and str(name_or_path) in shipped_scenarios():
        p = Path(str(resources.files("edgefleet.sim") / "scenarios" / f"{name_or_path}.yaml"))
    if not p.is_file():
        raise ConfigError(
            f"no scenario file {str(name_or_path)!r}",
            hint=f"give a YAML file or one of the shipped scenarios: {', '.join(shipped_scenarios())}",
        )
    with p.open("rb") as fh:
        raw = fh.read(MAX_SCENARIO_BYTES + 1)
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ConfigError(
            f"{p} is larger than {MAX_SCENARIO_BYTES} bytes", hint="a scenario is a short YAML file"
        )
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}", hint="fix the file's syntax") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p} does not hold a mapping", hint="see the shipped scenarios for the layout")
    try:
        return SimScenario.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top)"
        raise ConfigError(
            f"{p}: {where}: {first['msg']}", hint="see the shipped scenarios (edgefleet sim --list)"
        ) from e
