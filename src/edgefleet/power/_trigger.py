"""Two-stage inference: a cheap always-on stage gates the expensive model.

:class:`EnergyGate` is the cheap stage for audio or any signal: a chunk passes when its RMS level is above a
threshold (dBFS), and the gate stays open ``hangover`` chunks after the last loud one so the ends of words
reach the model. :class:`TwoStage` runs the big model only on chunks the gate passes, answers ``idle``
otherwise, and counts how often the big model ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["EnergyGate", "TwoStage"]


class EnergyGate:
    """Pass a chunk when its RMS is above ``threshold_db`` dBFS (full scale = 1.0), plus a hangover."""

    def __init__(self, threshold_db: float = -40.0, hangover: int = 8) -> None:
        if hangover < 0:
            raise ValueError("hangover must be >= 0 chunks")
        self.threshold = 10 ** (threshold_db / 20)
        self.hangover = hangover
        self._open_for = 0

    def __call__(self, chunk: np.ndarray) -> bool:
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
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
