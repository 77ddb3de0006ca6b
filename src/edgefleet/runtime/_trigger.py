"""The two-stage trigger as a runtime stage: a cheap always-on gate in front of the model.

After an input is prepared and validated, the gate (``power.EnergyGate`` or any ``fn(array) -> bool``)
looks at one input tensor. When it rejects, the runtime answers at once with ``triggered: false``, no
outputs and tier ``gated``, and the model never runs; otherwise the request goes through the pipeline
and its answer says ``triggered: true``. Counted in ``edgefleet_runtime_trigger_total{decision}`` and in
``Runtime.status()["trigger"]``; with a power figure (``RuntimeConfig.power_watts``) the energy saved is
estimated as gated requests x the mean latency of requests the model answered x the watts (labelled an
estimate: wall time, not a measurement of the package).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from edgefleet.errors import ConfigError
from edgefleet.runtime._predictor import Event
from edgefleet.runtime._result import Result

__all__ = ["TriggerStage"]


class TriggerStage:
    """The gate, the input it watches, and the counts (thread-safe: a stateful gate runs under a lock)."""

    def __init__(
        self, gate: Any, *, input_name: str | None = None, watts: float | None = None, metrics: Any = None
    ) -> None:
        if isinstance(gate, str):
            from edgefleet.power._trigger import parse_trigger

            gate = parse_trigger(gate)
        if not callable(gate):
            raise ConfigError(
                f"trigger {gate!r} is not callable", hint="pass an EnergyGate or a function array -> bool"
            )
        self.gate = gate
        self.input_name = input_name
        self.watts = watts
        self._m = metrics
        self._lock = threading.Lock()
        self.requests = 0
        self.model_runs = 0
        self.gated = 0
        self._model_ms = 0.0  # summed latency of the requests the model answered

    def watched(self, manifest: Any) -> str:
        """The input the gate looks at: ``input_name``, else the model's first float input."""
        names = [s.name for s in manifest.inputs]
        if self.input_name is not None:
            if self.input_name not in names:
                raise ConfigError(
                    f"trigger input {self.input_name!r} is not an input of {manifest.name} ({names})",
                    hint="set trigger_input to one of the model's inputs",
                )
            return self.input_name
        for s in manifest.inputs:
            if str(s.dtype).startswith("float"):
                return s.name
        raise ConfigError(
            f"{manifest.name} has no float input for the trigger to look at ({names})",
            hint="set trigger_input to the signal input",
        )

    def check(self, served: Any, tensors: dict[str, np.ndarray], t0: float) -> Result | None:
        """None when the model should run; else the gated answer (the model does not run)."""
        x = tensors[self.watched(served.manifest)]
        with self._lock:
            passed = bool(self.gate(x))
            self.requests += 1
            if passed:
                self.model_runs += 1
            else:
                self.gated += 1
        if self._m is not None:
            self._m.trigger.labels("model" if passed else "gated").inc()
        if passed:
            return None
        rows = int(x.shape[0]) if x.ndim else 1
        m = served.manifest
        return Result(
            outputs={},
            tiers=("gated",) * max(rows, 1),
            events=(
                Event("gated", "trigger", f"{self.gate!r} did not pass the input; the model did not run"),
            ),
            model=m.name,
            version=m.version,
            variant=m.variant,
            latency_ms=(time.perf_counter() - t0) * 1000,
            triggered=False,
        )

    def answered(self, res: Result) -> None:
        """A request the model answered: mark it and add its latency to the saved-energy basis."""
        res.triggered = True
        with self._lock:
            self._model_ms += res.latency_ms

    def energy_saved_mj(self) -> float | None:
        """Gated requests x mean model latency (ms) x watts = mJ; None without a power figure or a model run."""
        with self._lock:
            if not self.watts or not self.model_runs:
                return None
            return self.gated * (self._model_ms / self.model_runs) * self.watts

    def stats(self) -> dict[str, Any]:
        with self._lock:
            total, runs, gated, ms = self.requests, self.model_runs, self.gated, self._model_ms
        saved = self.energy_saved_mj()
        return {
            "gate": repr(self.gate),
            "requests": total,
            "model_runs": runs,
            "gated": gated,
            "share_to_model": runs / total if total else None,
            "mean_model_ms": ms / runs if runs else None,
            "energy_saved_mj": saved,
            "energy_method": "estimate" if saved is not None else None,
        }
