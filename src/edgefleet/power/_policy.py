"""Power and thermal policies on the device: declarative rules over its state, with hysteresis and dwell.

A policy is YAML (a file beside the agent, or ``device_policy.yaml`` inside the release bundle)::

    min_dwell_s: 60            # a rule changes state (on or off) at most once per this many seconds
    rules:
      - name: low-battery
        when: {battery_below: 30, power_source: battery}
        actions: {variant: smaller, rate_limit_rps: 2, defer: [download, train]}
      - name: hot
        when: {headroom_below: 8}          # degrees before the first passive/hot trip point
        actions: {variant: smaller, duty_cycle: 0.5, pause_escalation: true}
      - name: metered-link
        when: {link: metered}
        actions: {defer: [download, upload]}
      - name: night
        when: {hours: [22, 6]}             # local time, wraps midnight
        actions: {batch_delay_ms: 20}

A rule turns on when every condition of ``when`` holds. It turns off only when a condition fails by more
than its hysteresis margin (``battery_below: 30`` releases at 30 + ``hysteresis.battery_percent``,
``headroom_below: 8`` at 8 + ``hysteresis.temp_c``) and only once ``min_dwell_s`` has passed since it
turned on; it turns on again no sooner than ``min_dwell_s`` after it turned off. The actions of every
active rule are merged: the smaller variant if any asks, the lowest rate and duty cycle, the longest batch
delay, the union of what is deferred.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydValidationError

from edgefleet.errors import ConfigError
from edgefleet.power._state import DeviceState

__all__ = ["Policy", "PolicyRule", "PolicyActions", "PolicyEngine", "Decision", "Switch", "POLICY_FILE"]

log = logging.getLogger(__name__)

POLICY_FILE = "device_policy.yaml"  # the policy's name inside a release bundle
_MAX_POLICY_BYTES = 256 << 10
Activity = Literal["download", "upload", "train", "escalate"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Conditions(_Strict):
    """What must all hold for a rule to turn on (a rule with none never does)."""

    battery_below: float | None = Field(None, ge=0, le=100, description="battery percent below this")
    power_source: list[Literal["ac", "usb", "battery"]] | None = None
    temp_above: float | None = Field(None, description="hottest zone above this many °C")
    headroom_below: float | None = Field(None, description="fewer degrees than this left to the trip point")
    link: Literal["metered", "unmetered"] | None = None
    hours: tuple[float, float] | None = Field(None, description="[start, end) local hours; may wrap midnight")
    cpu_pressure_above: float | None = Field(None, ge=0, le=100, description="cgroup PSI cpu some avg10 %")

    @field_validator("power_source", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(0 <= h <= 24 for h in v):
            raise ValueError("hours must be two local hours between 0 and 24, e.g. [22, 6]")
        return v


class Hysteresis(_Strict):
    battery_percent: float = Field(5.0, ge=0, description="battery_below releases this many percent higher")
    temp_c: float = Field(3.0, ge=0, description="temp_above / headroom_below release this many °C later")
    cpu_pressure: float = Field(5.0, ge=0)


class PolicyActions(_Strict):
    """What a rule does while it is on."""

    variant: Literal["smaller"] | None = Field(None, description="serve the smaller kept variant")
    rate_limit_rps: float | None = Field(None, gt=0, description="most inferences per second")
    duty_cycle: float | None = Field(None, gt=0, le=1, description="share of time inference runs")
    batch_delay_ms: float | None = Field(None, ge=0, description="wait this long to fill a batch")
    pause_escalation: bool = Field(False, description="no cloud escalation while on")
    defer: list[Activity] = Field(default_factory=list, description="download, upload, train, escalate")


class PolicyRule(_Strict):
    name: str = Field(min_length=1, max_length=64)
    when: Conditions
    actions: PolicyActions
    hysteresis: Hysteresis = Field(default_factory=Hysteresis)


class Policy(_Strict):
    min_dwell_s: float = Field(60.0, ge=0, description="least seconds between two changes of one rule")
    rules: list[PolicyRule] = Field(default_factory=list, max_length=64)

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[PolicyRule]) -> list[PolicyRule]:
        names = [r.name for r in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"rule names must be unique: {', '.join(sorted(dup))}")
        return v

    @classmethod
    def from_yaml(cls, path: str | Path) -> Policy:
        """Read a policy file; every problem is a ConfigError naming the field."""
        import yaml

        p = Path(path)
        try:
            size = p.stat().st_size
            if size > _MAX_POLICY_BYTES:
                raise ConfigError(
                    f"device policy {p} is {size} bytes; the limit is {_MAX_POLICY_BYTES}",
                    hint="a policy is a few rules of YAML",
                )
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"device policy {p} cannot be read: {e.strerror}", hint="check the path") from e
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"device policy {p} is not valid YAML: {e}", hint="fix the YAML syntax") from e
        return cls.from_data(data, origin=str(p))

    @classmethod
    def from_data(cls, data: Any, *, origin: str = "device policy") -> Policy:
        if not isinstance(data, dict):
            raise ConfigError(
                f"{origin} must be a mapping with rules:", hint="see `edgefleet device policy --help`"
            )
        try:
            return cls.model_validate(data)
        except PydValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, x['loc'])) or '<root>'}: {x['msg']}" for x in e.errors()
            )
            raise ConfigError(
                f"{origin} is invalid: {problems}", hint="fields: min_dwell_s, rules[name, when, actions]"
            ) from e


def _in_hours(hour: float, span: tuple[float, float]) -> bool:
    start, end = span
    return start <= hour < end if start <= end else hour >= start or hour < end


def _holds(c: Conditions, s: DeviceState, margin: Hysteresis | None) -> bool:
    """Whether the conditions hold; with ``margin``, the release test (thresholds moved by the hysteresis)."""
    m = margin or Hysteresis(battery_percent=0, temp_c=0, cpu_pressure=0)
    tests: list[bool] = []
    if c.battery_below is not None:
        tests.append(
            s.battery_percent is not None and s.battery_percent < c.battery_below + m.battery_percent
        )
    if c.power_source is not None:
        tests.append(s.power_source in c.power_source)
    if c.temp_above is not None:
        tests.append(s.temp_c is not None and s.temp_c > c.temp_above - m.temp_c)
    if c.headroom_below is not None:
        h = s.headroom_c
        tests.append(h is not None and h < c.headroom_below + m.temp_c)
    if c.link is not None:
        tests.append(s.link == c.link)
    if c.hours is not None:
        tests.append(s.hour is not None and _in_hours(s.hour, c.hours))
    if c.cpu_pressure_above is not None:
        tests.append(s.cpu_pressure is not None and s.cpu_pressure > c.cpu_pressure_above - m.cpu_pressure)
    return bool(tests) and all(tests)


@dataclass
class Switch:
    """A rule turning on or off: logged, counted in heartbeats and shown on the dashboard."""

    rule: str
    on: bool
    at: float  # wall clock
    state: dict[str, Any]


@dataclass
class Decision:
    """The merged actions of the active rules."""

    active: list[str] = field(default_factory=list)
    variant: str | None = None
    rate_limit_rps: float | None = None
    duty_cycle: float | None = None
    batch_delay_ms: float | None = None
    pause_escalation: bool = False
    deferred: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": list(self.active),
            "variant": self.variant,
            "rate_limit_rps": self.rate_limit_rps,
            "duty_cycle": self.duty_cycle,
            "batch_delay_ms": self.batch_delay_ms,
            "pause_escalation": self.pause_escalation,
            "deferred": sorted(self.deferred),
        }


def _merge(rules: list[PolicyRule]) -> Decision:
    d = Decision(active=[r.name for r in rules])
    for r in rules:
        a = r.actions
        if a.variant:
            d.variant = a.variant
        if a.rate_limit_rps is not None:
            d.rate_limit_rps = min(d.rate_limit_rps or a.rate_limit_rps, a.rate_limit_rps)
        if a.duty_cycle is not None:
            d.duty_cycle = min(d.duty_cycle or a.duty_cycle, a.duty_cycle)
        if a.batch_delay_ms is not None:
            d.batch_delay_ms = max(d.batch_delay_ms or 0.0, a.batch_delay_ms)
        d.pause_escalation = d.pause_escalation or a.pause_escalation
        d.deferred.update(a.defer)
    if d.pause_escalation:
        d.deferred.add("escalate")
    return d


class PolicyEngine:
    """Evaluates a :class:`Policy` over successive device states; remembers which rules are on.

    Args:
        policy: the rules.
        clock: monotonic seconds (dwell times); tests pass the trace's own clock.
        keep_switches: switches remembered for heartbeats and ``agent status``.
    """

    def __init__(
        self, policy: Policy, *, clock: Callable[[], float] = time.monotonic, keep_switches: int = 100
    ) -> None:
        self.policy = policy
        self.clock = clock
        self._on: dict[str, bool] = {r.name: False for r in policy.rules}
        self._changed_at: dict[str, float | None] = {r.name: None for r in policy.rules}
        self.switch_count = 0
        self.switches: collections.deque[Switch] = collections.deque(maxlen=keep_switches)
        self.decision = Decision()
        self.state: DeviceState | None = None

    def evaluate(self, state: DeviceState) -> Decision:
        """Apply one reading; returns the merged decision (also kept in :attr:`decision`)."""
        now = self.clock()
        self.state = state
        for r in self.policy.rules:
            on = self._on[r.name]
            want = not _holds(r.when, state, r.hysteresis) if on else _holds(r.when, state, None)
            if not want:
                continue
            last = self._changed_at[r.name]
            if last is not None and now - last < self.policy.min_dwell_s:
                continue  # too soon after its last change: dwell
            self._on[r.name] = not on
            self._changed_at[r.name] = now
            self.switch_count += 1
            sw = Switch(rule=r.name, on=not on, at=time.time(), state=state.to_dict())
            self.switches.append(sw)
            log.info(
                "device policy %s %s", r.name, "on" if sw.on else "off", extra={"device_state": sw.state}
            )
        self.decision = _merge([r for r in self.policy.rules if self._on[r.name]])
        return self.decision

    def may(self, activity: Activity) -> bool:
        """Whether the active rules let this activity (download, upload, train, escalate) run now."""
        return activity not in self.decision.deferred

    def may_train(self) -> bool:
        """Whether federated training may run now (no active rule defers ``train``)."""
        return self.may("train")

    @property
    def deferred(self) -> set[str]:
        return set(self.decision.deferred)
