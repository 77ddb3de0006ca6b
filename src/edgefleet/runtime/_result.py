"""``Result``: what ``Runtime.predict`` answers, with the manifest's postprocessing applied lazily."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.protocol import Postprocess
from edgefleet.runtime._predictor import (
    Event,
)

__all__ = ["Result", "softmax"]


class Result:
    """One answer of the runtime: outputs, where each row came from, and the postprocessed view.

    ``classes``, ``labels`` and ``confidence`` (the manifest's postprocessing) are worked out on first
    use, so a caller that reads only the outputs never pays for them.
    """

    __slots__ = (
        "outputs",
        "tiers",
        "events",
        "model",
        "version",
        "variant",
        "latency_ms",
        "triggered",
        "_classes",
        "_labels",
        "_confidence",
        "_post",
    )

    def __init__(
        self,
        outputs: dict[str, np.ndarray],
        tiers: tuple[str, ...],
        events: tuple[Event, ...],
        model: str,
        version: str,
        variant: str,
        latency_ms: float,
        classes: np.ndarray | None = None,
        labels: list[str] | None = None,
        confidence: np.ndarray | None = None,
        triggered: bool | None = None,
    ) -> None:
        self.outputs = outputs
        # with a trigger stage: True when the model ran, False when the gate answered (no outputs)
        self.triggered = triggered
        self.tiers = tiers
        self.events = events
        self.model = model
        self.version = version
        self.variant = variant
        self.latency_ms = latency_ms
        self._classes = classes
        self._labels = labels
        self._confidence = confidence
        self._post: tuple[Postprocess, np.ndarray] | None = None  # (postprocess, scores) still to apply

    def __repr__(self) -> str:
        shapes = {k: getattr(v, "shape", None) for k, v in self.outputs.items()}
        return f"Result({shapes}, model={self.model!r}, tier={self.tier!r}, latency_ms={self.latency_ms:.3f})"

    def _postprocess(self) -> None:
        post, probs = self._post  # type: ignore[misc]
        self._post = None
        self._confidence = probs.max(axis=1)
        if post.argmax:
            self._classes = probs.argmax(axis=1)
            labels = post.labels
            if labels:
                self._labels = [labels[i] if i < len(labels) else str(i) for i in self._classes]

    @property
    def classes(self) -> np.ndarray | None:
        if self._post is not None:
            self._postprocess()
        return self._classes

    @classes.setter
    def classes(self, value: np.ndarray | None) -> None:
        self._classes = value

    @property
    def labels(self) -> list[str] | None:
        if self._post is not None:
            self._postprocess()
        return self._labels

    @labels.setter
    def labels(self, value: list[str] | None) -> None:
        self._labels = value

    @property
    def confidence(self) -> np.ndarray | None:
        if self._post is not None:
            self._postprocess()
        return self._confidence

    @confidence.setter
    def confidence(self, value: np.ndarray | None) -> None:
        self._confidence = value

    @property
    def tier(self) -> str:
        """The tier that answered every row, or ``mixed``."""
        tiers = self.tiers
        if not tiers:
            return "none"
        first = tiers[0]
        return first if len(tiers) == 1 or tiers.count(first) == len(tiers) else "mixed"

    @property
    def fallback(self) -> bool:
        return any(e.kind == "fallback" for e in self.events)

    @property
    def escalated(self) -> bool:
        return any(e.kind == "escalated" for e in self.events)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the body of ``POST /v1/predict``)."""
        rows = []
        for i, tier in enumerate(self.tiers):
            row: dict[str, Any] = {"tier": tier}
            if self.classes is not None:
                row["class"] = int(self.classes[i])
            if self.labels is not None:
                row["label"] = self.labels[i]
            if self.confidence is not None:
                row["confidence"] = round(float(self.confidence[i]), 6)
            rows.append(row)
        return {
            "model": {"name": self.model, "version": self.version, "variant": self.variant},
            "outputs": {k: _jsonable(v) for k, v in self.outputs.items()},
            "predictions": rows,
            "tier": self.tier,
            "events": [
                {"kind": e.kind, "tier": e.tier, "detail": e.detail, "rows": e.rows} for e in self.events
            ],
            "latency_ms": round(self.latency_ms, 3),
            **({} if self.triggered is None else {"triggered": self.triggered}),
        }


def _jsonable(v: np.ndarray) -> Any:
    # JSON has no NaN/Inf; a model that emits them gets null rather than an invalid document
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        return np.where(np.isfinite(v), v, None).tolist()
    return v.tolist()


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in the scores' own dtype."""
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
