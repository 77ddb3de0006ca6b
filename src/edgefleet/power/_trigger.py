"""Two-stage inference: a cheap always-on stage gates the expensive model.

:class:`EnergyGate` is the cheap stage for audio or any signal: a chunk passes when its RMS level is above a
threshold (dBFS), and the gate stays open ``hangover`` chunks after the last loud one so the ends of words
reach the model. :class:`TwoStage` runs the big model only on chunks the gate passes, answers ``idle``
otherwise, and counts how often the big model ran. :func:`parse_trigger` reads the ``energy:-40dBFS[:8]``
form ``edgefleet serve --trigger`` and ``RuntimeConfig.trigger`` take; the runtime's stage is
``edgefleet.runtime.Runtime(..., trigger=EnergyGate(...))``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from edgefleet.errors import ConfigError

__all__ = ["EnergyGate", "TwoStage", "parse_trigger"]

_SPEC = re.compile(r"^energy:(-?\d+(?:\.\d+)?)\s*(?:dbfs|db)?(?::(\d+))?$", re.IGNORECASE)


class EnergyGate:
    """Pass a chunk when its RMS is above ``threshold_db`` dBFS (full scale = 1.0), plus a hangover."""

    def __init__(self, threshold_db: float = -40.0, hangover: int = 8) -> None:
        if hangover < 0:
            raise ValueError("hangover must be >= 0 chunks")
        self.threshold = 10 ** (threshold_db / 20)
        self.hangover = hangover
        self._open_for = 0

    def __repr__(self) -> str:
        return f"EnergyGate({20 * np.log10(self.threshold):g} dBFS, hangover {self.hangover})"

    def __call__(self, chunk: np.ndarray) -> bool:
        """One chunk (1-D), or a batch of chunks (rows on axis 0): open when any row is loud."""
        x = np.asarray(chunk, dtype=np.float32)
        if x.ndim >= 2 and x.shape[0] > 1:
            rows = x.reshape(x.shape[0], -1)
            rms = float(np.sqrt((rows * rows).mean(axis=1)).max()) if rows.size else 0.0
        else:
            x = x.reshape(-1)
            rms = float(np.sqrt(x @ x / x.size)) if x.size else 0.0
        if rms >= self.threshold:
            self._open_for = self.hangover
            return True
        if self._open_for > 0:
            self._open_for -= 1
            return True
        return False


class TwoStage:
    """``big(x)`` when ``gate(x)`` passes, else ``idle``; counts calls of each stage."""

    def __init__(self, gate: Callable[[Any], bool], big: Callable[[Any], Any], idle: Any) -> None:
        self.gate = gate
        self.big = big
        self.idle = idle
        self.total = 0
        self.big_runs = 0

    def __call__(self, x: Any, gate_input: Any = None) -> Any:
        self.total += 1
        if self.gate(x if gate_input is None else gate_input):
            self.big_runs += 1
            return self.big(x)
        return self.idle

    @property
    def share(self) -> float:
        """Share of inputs that reached the big model."""
        return self.big_runs / self.total if self.total else 0.0


def parse_trigger(spec: str) -> EnergyGate:
    """``energy:-40dBFS`` or ``energy:-40dBFS:8`` (hangover in chunks, default 8) -> an :class:`EnergyGate`;
    anything else is a ConfigError naming the form."""
    m = _SPEC.match(spec.strip())
    if m is None:
        raise ConfigError(
            f"trigger {spec!r} is not understood",
            hint="use energy:THRESHOLD_DBFS[:HANGOVER_CHUNKS], e.g. energy:-40dBFS or energy:-40dBFS:8",
        )
    db = float(m.group(1))
    if db > 0:
        raise ConfigError(
            f"trigger threshold {db:g} dBFS is above full scale", hint="dBFS thresholds are <= 0, e.g. -40"
        )
    return EnergyGate(db, int(m.group(2)) if m.group(2) is not None else 8)
