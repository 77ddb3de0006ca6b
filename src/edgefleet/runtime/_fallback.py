"""Fallback chains (primary → backup → cached or heuristic answer) and the heuristic tier."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgefleet.errors import DeadlineExceededError, EdgefleetError, InferenceError, InputError
from edgefleet.runtime._config import BreakerConfig, FallbackConfig
from edgefleet.runtime._guards import Breaker
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import (
    Event,
    Prediction,
    Predictor,
    PredictorMetadata,
    as_prediction,
    batch_rows,
)

__all__ = ["Fallback", "Heuristic"]

log = logging.getLogger(__name__)


class _MemoryProbe:
    """Available RAM in MB, read at most once per ``every_s`` (reading /proc costs ~10 µs)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._t = -1e9
        self._mb = float("inf")
        self._lock = threading.Lock()

    def available_mb(self) -> float:
        now = time.monotonic()
        if now - self._t >= self.every_s:
            with self._lock:
                try:
                    import psutil

                    self._mb = psutil.virtual_memory().available / 2**20
                except Exception:  # no psutil or no /proc: never claim pressure
                    self._mb = float("inf")
                self._t = now
        return self._mb


class Fallback:
    """Tries ``tiers`` in order; the first answer wins, and the answer says which tier gave it.

    A tier is skipped on any error from it (including timeouts and overload) and, when
    ``config.min_available_mb`` is set, the first tier is skipped under memory pressure. With
    ``config.breaker`` every tier but the last sits behind its own circuit breaker, so a broken
    primary is not even tried until its breaker lets a probe through. Errors that are the request's
    own fault (invalid input, deadline passed) are raised at once: another tier would fail the same.
    """

    def __init__(
        self,
        *tiers: Predictor,
        config: FallbackConfig | None = None,
        breaker: BreakerConfig | None = None,
        metrics: RuntimeMetrics | None = None,
        memory_probe: Callable[[], float] | None = None,
    ) -> None:
        if not tiers:
            raise ValueError("Fallback needs at least one tier")
        self.config = config or FallbackConfig()
        self._metrics = metrics
        wrapped: list[Predictor] = []
        for i, t in enumerate(tiers):
            last = i == len(tiers) - 1
            if self.config.breaker and not last and not isinstance(t, Breaker):
                t = Breaker(t, breaker, metrics=metrics)
            wrapped.append(t)
        self.tiers: tuple[Predictor, ...] = tuple(wrapped)
        self._memory = memory_probe or _MemoryProbe().available_mb

    @property
    def metadata(self) -> PredictorMetadata:
        return self.tiers[0].metadata

    def breakers(self) -> list[Breaker]:
        return [t for t in self.tiers if isinstance(t, Breaker)]

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        events: list[Event] = []
        errors: list[EdgefleetError] = []
        last = len(self.tiers) - 1
        for i, tier in enumerate(self.tiers):
            name = tier.metadata.tier
            if i == 0 and i < last and self._pressure():
                events.append(Event("memory_pressure", name, "skipped"))
                if self._metrics:
                    self._metrics.fallbacks.labels(name, "memory_pressure").inc()
                continue
            try:
                out = as_prediction(tier.predict(batch, **opts), name)
            except (InputError, DeadlineExceededError):
                raise
            except Exception as e:
                err = e if isinstance(e, EdgefleetError) else InferenceError(f"{type(e).__name__}: {e}")
                errors.append(err)
                if i < last:
                    events.append(Event("fallback", name, err.code, batch_rows(batch)))
                    if self._metrics:
                        self._metrics.fallbacks.labels(name, err.code).inc()
                    log.debug("tier %s failed (%s); falling back", name, err.code)
                continue
            return out.with_events(*events) if events else out
        causes = "; ".join(
            f"{t.metadata.tier}: {e.message}" for t, e in zip(self.tiers, errors, strict=False)
        )
        raise InferenceError(
            f"every tier failed ({causes})",
            hint="check the runtime log; the models may be broken or the device overloaded",
            tiers=[t.metadata.tier for t in self.tiers],
        ) from (errors[-1] if errors else None)

    def _pressure(self) -> bool:
        floor = self.config.min_available_mb
        return floor is not None and self._memory() < floor

    def close(self) -> None:
        for t in self.tiers:
            t.close()


class Heuristic:
    """A last-resort tier answering without a model: a function of the batch, or a constant row.

    Args:
        answer: ``fn(batch) -> outputs`` or a mapping of output name to one row (repeated per row),
            e.g. the class prior: ``{"probabilities": prior, "label": np.int64(prior.argmax())}``.
        metadata: what it serves (usually the primary's metadata); its tier becomes ``tier``.
    """

    def __init__(
        self,
        answer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]] | Mapping[str, Any],
        metadata: PredictorMetadata,
        *,
        tier: str = "heuristic",
    ) -> None:
        self._answer = answer
        self._meta = metadata.replace(tier=tier, max_batch_size=None)

    @property
    def metadata(self) -> PredictorMetadata:
        return self._meta

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        n = batch_rows(batch)
        if callable(self._answer):
            out = dict(self._answer(batch))
        else:
            out = {k: np.repeat(np.asarray(v)[None, ...], n, axis=0) for k, v in self._answer.items()}
        return Prediction(out, tiers=(self._meta.tier,) * n)

    def close(self) -> None:
        pass
