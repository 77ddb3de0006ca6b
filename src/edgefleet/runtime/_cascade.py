"""Confidence-based escalation: the small model answers when sure, a larger one (or the cloud) when not.

Escalation never fails a request: if the large tier cannot answer (down, breaker open, no time left),
the small model's answer is returned and, when an outbox is given, the escalation is queued there
to be sent later (:func:`resend_escalations`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np

from edgefleet.errors import EdgefleetError, InputError
from edgefleet.runtime._config import EscalationConfig
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import (
    Event,
    Prediction,
    Predictor,
    PredictorMetadata,
    as_prediction,
    remaining,
)
from edgefleet.runtime._result import softmax as softmax_scores

__all__ = ["Cascade", "EscalationOutbox", "confidence", "resend_escalations", "score_output_of"]

log = logging.getLogger(__name__)


class EscalationOutbox(Protocol):
    """Where escalations wait: ``edgefleet.telemetry.Outbox`` or anything with this ``put``."""

    def put(self, kind: str, payload: bytes | dict[str, Any], priority: int | None = ...) -> Any: ...


def confidence(scores: np.ndarray, metric: str = "max_prob", *, softmax: bool = False) -> np.ndarray:
    """Per-row confidence of class scores ``[N, K]``.

    ``max_prob``: the top probability; ``margin``: top minus runner-up; ``entropy``: entropy divided
    by log(K), in [0, 1], where *higher means less sure*.
    """
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    p = p.reshape(p.shape[0], -1)
    if softmax:
        p = softmax_scores(p)
    if metric == "max_prob":
        return p.max(axis=1)
    if metric == "margin":
        if p.shape[1] < 2:
            return p[:, 0]
        top2 = np.partition(p, -2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    if metric == "entropy":
        q = np.clip(p, 1e-12, 1.0)
        return -(q * np.log(q)).sum(axis=1) / max(np.log(p.shape[1]), 1e-12)
    raise ValueError(f"unknown confidence metric {metric!r} (max_prob, margin, entropy)")


def score_output_of(meta: PredictorMetadata, configured: str | None = None) -> str | None:
    """The output that holds class scores: configured, from metadata, or the first 2-D float output."""
    if configured:
        return configured
    hinted = meta.extra.get("score_output") if meta.extra else None
    if hinted:
        return str(hinted)
    for spec in meta.outputs:
        if spec.dtype.startswith("float") and len(spec.shape) == 2:
            return spec.name
    return None


class Cascade:
    """``small`` answers; rows it is unsure of (or all, with ``escalate=True``) go to ``large``.

    Per-request ``escalate``: None decides by confidence, True always escalates, False never does.
    Escalation only happens when the request's deadline leaves ``config.min_budget_ms``.
    """

    def __init__(
        self,
        small: Predictor,
        large: Predictor,
        *,
        config: EscalationConfig | None = None,
        outbox: EscalationOutbox | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.small = small
        self.large = large
        self.config = config or EscalationConfig()
        self.outbox = outbox
        self._metrics = metrics
        self.score_output = score_output_of(small.metadata, self.config.score_output)

    @property
    def metadata(self) -> PredictorMetadata:
        return self.small.metadata

    def _count(self, outcome: str, n: int = 1) -> None:
        if self._metrics:
            self._metrics.escalations.labels(outcome).inc(n)

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        escalate = opts.get("escalate")
        out = as_prediction(self.small.predict(batch, **opts), self.small.metadata.tier)
        if escalate is False or (escalate is None and not self.config.enabled):
            return out
        conf = None
        if escalate is True:
            rows = np.arange(len(out.tiers))
        else:
            if self.score_output is None or self.score_output not in out:
                return out
            conf = confidence(out[self.score_output], self.config.metric, softmax=self.config.softmax)
            low = (
                conf > self.config.threshold
                if self.config.metric == "entropy"
                else conf < self.config.threshold
            )
            rows = np.flatnonzero(low)
        if rows.size == 0:
            return out
        large_tier = self.large.metadata.tier
        left = remaining(opts.get("deadline"))
        if left is not None and left * 1000 < self.config.min_budget_ms:
            self._count("skipped_deadline", int(rows.size))
            events = [Event("escalation_skipped", large_tier, "deadline", int(rows.size))]
            events += self._queue(batch, out, rows, conf, "deadline")
            return out.with_events(*events)
        sub = {k: v[rows] for k, v in batch.items()}
        try:
            big = as_prediction(self.large.predict(sub, **{**opts, "escalate": False}), large_tier)
        except InputError:
            raise
        except Exception as e:
            code = e.code if isinstance(e, EdgefleetError) else "error"
            self._count("failed", int(rows.size))
            log.info("escalation to %s failed (%s); answering locally", large_tier, code)
            events = [Event("escalation_skipped", large_tier, code, int(rows.size))]
            events += self._queue(batch, out, rows, conf, code)
            return out.with_events(*events)
        self._count("sent", int(rows.size))
        return self._merge(out, big, rows).with_events(
            *big.events, Event("escalated", big.tier, rows=int(rows.size))
        )

    def _merge(self, out: Prediction, big: Prediction, rows: np.ndarray) -> Prediction:
        merged: dict[str, np.ndarray] = {}
        for k, v in out.items():
            b = big.get(k)
            if b is None or b.shape[1:] != v.shape[1:] or b.shape[0] != rows.size:
                merged[k] = v
                continue
            v = v.copy()
            v[rows] = b.astype(v.dtype, copy=False)
            merged[k] = v
        tiers = list(out.tiers)
        for j, i in enumerate(rows):
            tiers[int(i)] = big.tiers[j]
        return Prediction(merged, tiers=tiers, events=out.events)

    def _queue(
        self,
        batch: dict[str, np.ndarray],
        out: Prediction,
        rows: np.ndarray,
        conf: np.ndarray | None,
        reason: str,
    ) -> list[Event]:
        if self.outbox is None:
            return []
        meta = self.small.metadata
        payload = {
            "model": meta.name,
            "version": meta.version,
            "reason": reason,
            "created": time.time(),
            "inputs": {k: v[rows].tolist() for k, v in batch.items()},
            "dtypes": {k: str(v.dtype) for k, v in batch.items()},
            "local": {k: v[rows].tolist() for k, v in out.items() if v.dtype != object},
            "confidence": None if conf is None else conf[rows].round(6).tolist(),
        }
        try:
            queued = self.outbox.put(self.config.outbox_kind, payload, self.config.outbox_priority)
        except Exception as e:  # a full disk must not fail the request that is being answered
            log.warning("escalation not queued: %s", e)
            self._count("dropped", int(rows.size))
            return []
        if queued is None:  # the outbox refused it (full of more important items)
            self._count("dropped", int(rows.size))
            return []
        self._count("queued", int(rows.size))
        return [Event("escalation_queued", self.large.metadata.tier, reason, int(rows.size))]

    def close(self) -> None:
        self.small.close()
        self.large.close()


def resend_escalations(outbox: Any, target: Predictor, *, kind: str = "escalation", limit: int = 100) -> int:
    """Send queued escalations to ``target`` (usually the cloud), acking each one it accepted.

    Stops at the first failure (the target is still down). Needs an outbox with ``batch`` and ``ack``
    (``edgefleet.telemetry.Outbox``). Returns how many were sent.
    """
    sent = 0
    specs = {s.name: s for s in target.metadata.inputs}
    while sent < limit:
        items = outbox.batch(kinds=[kind])[: limit - sent]
        if not items:
            break
        for item in items:
            payload = item.payload if isinstance(item.payload, dict) else None
            try:
                if payload is None:
                    raise ValueError("payload is not an escalation record")
                dtypes = payload.get("dtypes", {})
                batch = {
                    k: np.asarray(v, dtype=dtypes.get(k) or (specs[k].dtype if k in specs else None))
                    for k, v in payload["inputs"].items()
                }
            except (KeyError, ValueError, TypeError) as e:
                log.warning("dropping unreadable escalation %s: %s", item.id, e)
                outbox.ack([item.id])
                continue
            try:
                target.predict(batch, escalate=False)
            except InputError as e:  # the target will never take it: do not retry forever
                log.warning("escalation %s refused by %s: %s", item.id, target.metadata.tier, e)
                outbox.ack([item.id])
                continue
            except Exception as e:
                log.info("escalations stay queued: %s", e)
                return sent
            outbox.ack([item.id])
            sent += 1
    return sent
