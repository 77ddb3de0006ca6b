"""The device's governor: reads the state seam, runs the policy, and holds what the serving path obeys.

The agent calls :meth:`DeviceGovernor.tick` on each pass of its loop; the host's serving path asks the
:class:`PowerGate` before each request (rate limit, paused escalation); downloads, uploads and federated
training ask :meth:`DeviceGovernor.may` (or :meth:`may_train`) before they start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgefleet.errors import RateLimitedError
from edgefleet.power._policy import Decision, Policy, PolicyEngine, Switch
from edgefleet.power._state import DeviceState, StateSource

__all__ = ["DeviceGovernor", "PowerGate"]

log = logging.getLogger(__name__)


class PowerGate:
    """What the serving path obeys while a policy is on: a token-bucket rate and paused escalation.

    ``rate_limit_rps`` x ``duty_cycle`` requests per second are admitted (the duty cycle scales the rate:
    a device serving on a 25 % duty cycle answers a quarter as often); the bucket holds one second's worth.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.rate: float | None = None
        self.pause_escalation = False
        self._tokens = 0.0
        self._last = clock()
        self.refused = 0

    def configure(self, decision: Decision) -> None:
        rate = decision.rate_limit_rps
        if decision.duty_cycle is not None and rate is not None:
            rate *= decision.duty_cycle
        with self._lock:
            if rate != self.rate:
                self._tokens = max(1.0, rate or 0.0)
                self._last = self._clock()
            self.rate = rate
            self.pause_escalation = decision.pause_escalation

    def admit(self) -> None:
        """Take one token or raise RateLimitedError (HTTP 429 with Retry-After on the local API)."""
        with self._lock:
            if self.rate is None:
                return
            now = self._clock()
            self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            self.refused += 1
            wait = (1.0 - self._tokens) / self.rate
        raise RateLimitedError(
            f"the device's power policy limits inference to {self.rate:g} per second",
            hint="retry later; the limit lifts when the device is charged or cooler",
            retry_after=round(wait, 3),
        )


class DeviceGovernor:
    """The state source, the policy engine over it, and the gate the serving path obeys.

    Args:
        source: where the state is read (``SysfsSource``, or a ``ScriptedSource`` stand-in).
        policy: the rules; None: state is still read and reported, nothing is ever deferred.
        clock: monotonic seconds for dwell times and the rate bucket.
    """

    def __init__(
        self,
        source: StateSource,
        policy: Policy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.clock = clock
        self.gate = PowerGate(clock)
        self.state: DeviceState | None = None
        self.read_errors = 0
        self.engine: PolicyEngine | None = None
        self.policy_origin: str | None = None
        self.set_policy(policy)

    def set_policy(self, policy: Policy | None, origin: str | None = None) -> None:
        """Replace the rules (a new bundle brought its own); rule states start over, all off."""
        if policy is None:
            self.engine, self.policy_origin = None, None
        elif self.engine is None or policy != self.engine.policy:
            old = self.engine
            self.engine = PolicyEngine(policy, clock=self.clock)
            if old is not None:  # switch counts are cumulative over the agent's run
                self.engine.switch_count = old.switch_count
                self.engine.switches.extend(old.switches)
            self.policy_origin = origin
        self.gate.configure(self.decision)

    @property
    def decision(self) -> Decision:
        return self.engine.decision if self.engine is not None else Decision()

    def tick(self) -> list[Switch]:
        """Read the state once and evaluate the policy; returns the switches this reading caused."""
        try:
            self.state = self.source.read()
        except Exception as e:  # noqa: BLE001 - a sensor failure must not stop the device
            self.read_errors += 1
            log.warning("device state unreadable: %s", e)
            return []
        if self.engine is None:
            return []
        before = self.engine.switch_count
        self.engine.evaluate(self.state)
        self.gate.configure(self.engine.decision)
        new = self.engine.switch_count - before
        return list(self.engine.switches)[-new:] if new else []

    def may(self, activity: str) -> bool:
        """Whether the active rules let ``activity`` (download, upload, train, escalate) run now."""
        return activity not in self.decision.deferred

    def may_train(self) -> bool:
        """The hook federated training asks before a round: False while a rule defers ``train``."""
        return self.may("train")

    @property
    def deferred(self) -> set[str]:
        return set(self.decision.deferred)

    @property
    def switch_count(self) -> int:
        return self.engine.switch_count if self.engine is not None else 0

    def summary(self) -> dict[str, Any]:
        """What heartbeats and ``agent status`` show: the reading, the active rules and the switch count."""
        out: dict[str, Any] = {
            "source": getattr(self.state, "source", None),
            "policy": self.policy_origin,
            "switches": self.switch_count,
            "refused_requests": self.gate.refused,
            **self.decision.to_dict(),
        }
        if self.state is not None:
            with contextlib.suppress(Exception):
                out["state"] = self.state.to_dict()
        return out
