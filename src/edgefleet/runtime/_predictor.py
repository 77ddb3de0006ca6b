"""The one seam of the runtime: a ``Predictor`` maps a batch of named arrays to a batch of named arrays.

Engines, batchers, caches, fallbacks and cascades are all predictors, so they compose::

    Cascade(Batcher(OrtEngine(small)), Fallback(OrtEngine(big), CloudPredictor(url)))

Every predictor returns a :class:`Prediction`: a ``dict[str, np.ndarray]`` (so it *is* the plain
outputs) that also says which tier produced each row (``.tiers``) and what happened on the way
(``.events``: fallbacks, escalations, cache hits). Wrappers pass both through and add their own.

Options travel as keyword arguments, which every predictor accepts and passes on:

* ``priority`` (int, higher is served first; see :class:`Priority`),
* ``deadline`` (absolute ``time.monotonic()`` seconds, or None for no deadline),
* ``escalate`` (None: by confidence, True: always, False: never).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgefleet.errors import DeadlineExceededError
from edgefleet.protocol import TensorSpec

__all__ = [
    "Event",
    "Prediction",
    "Predictor",
    "PredictorMetadata",
    "Priority",
    "as_prediction",
    "batch_rows",
    "check_deadline",
    "deadline_in",
    "remaining",
]


class Priority(IntEnum):
    """Request priority: the batcher serves higher values first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3


@dataclass(frozen=True, slots=True)
class Event:
    """Something a predictor did on the way to an answer.

    ``kind`` is one of ``fallback`` (``tier`` failed with error code ``detail``), ``escalated``
    (rows answered by ``tier``), ``escalation_queued`` (the escalation went to the outbox),
    ``escalation_skipped`` (``detail`` says why: deadline, breaker, error), ``cache_hit``,
    ``memory_pressure`` (``tier`` was skipped).
    """

    kind: str
    tier: str
    detail: str = ""
    rows: int = 0


@dataclass(frozen=True)
class PredictorMetadata:
    """What a predictor serves: model identity, tensor specs and the tier label of its answers."""

    name: str
    version: str
    tier: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int | None = None  # a fixed batch dimension (e.g. 1), None when dynamic
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> PredictorMetadata:
        from dataclasses import replace

        return replace(self, **changes)


@runtime_checkable
class Predictor(Protocol):
    """Anything that answers a batch: ``predict(batch, **opts) -> outputs``."""

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> dict[str, np.ndarray]: ...

    @property
    def metadata(self) -> PredictorMetadata: ...

    def close(self) -> None: ...


class Prediction(dict):
    """Named output arrays (a real ``dict``) plus the tier of each row and the events on the way."""

    __slots__ = ("tiers", "events")

    def __init__(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        tiers: Sequence[str],
        events: Iterable[Event] = (),
    ) -> None:
        super().__init__(outputs)
        self.tiers: tuple[str, ...] = tiers if type(tiers) is tuple else tuple(tiers)
        self.events: tuple[Event, ...] = events if type(events) is tuple else tuple(events)

    @property
    def tier(self) -> str:
        """The tier that answered every row, or ``"mixed"`` when rows came from different tiers."""
        if not self.tiers:
            return "none"
        first = self.tiers[0]
        return first if self.tiers.count(first) == len(self.tiers) else "mixed"

    def with_events(self, *events: Event) -> Prediction:
        return Prediction(self, tiers=self.tiers, events=self.events + events)

    def __repr__(self) -> str:
        shapes = {k: getattr(v, "shape", None) for k, v in self.items()}
        return f"Prediction({shapes}, tier={self.tier!r}, events={list(self.events)!r})"

    def __reduce__(self):  # keep tiers/events through pickling (process pools, caches)
        return (_rebuild_prediction, (dict(self), self.tiers, self.events))


def _rebuild_prediction(outputs: dict, tiers: tuple[str, ...], events: tuple[Event, ...]) -> Prediction:
    return Prediction(outputs, tiers=tiers, events=events)


def batch_rows(batch: Mapping[str, np.ndarray]) -> int:
    """Rows in a batch: the leading dimension of its first input (0-d inputs count as one row)."""
    for v in batch.values():
        shape = getattr(v, "shape", ())
        return int(shape[0]) if len(shape) else 1
    return 0


def as_prediction(outputs: Mapping[str, np.ndarray], tier: str, rows: int | None = None) -> Prediction:
    """Wrap plain outputs from ``tier``; a Prediction passes through unchanged."""
    if isinstance(outputs, Prediction):
        return outputs
    n = batch_rows(outputs) if rows is None else rows
    return Prediction(outputs, tiers=(tier,) * n)


def deadline_in(seconds: float | None) -> float | None:
    """An absolute deadline ``seconds`` from now (None stays None)."""
    return None if seconds is None else time.monotonic() + seconds


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (negative when past), or None without a deadline."""
    return None if deadline is None else deadline - time.monotonic()


def check_deadline(deadline: float | None, where: str = "before inference") -> None:
    """Raise DeadlineExceededError when ``deadline`` has passed."""
    if deadline is not None:
        late = time.monotonic() - deadline
        if late >= 0:
            raise DeadlineExceededError(
                f"request deadline passed {late * 1000:.1f} ms ago {where}; it was not run",
                hint="send a longer deadline, or retry when the device is less busy",
                late_ms=round(late * 1000, 3),
            )
