"""``Sampler``: opt-in capture of a few inputs and outputs, biased toward the interesting ones.

Each row is kept with probability ``max(rate, low_confidence_rate if its confidence is low,
escalated_rate if a bigger model answered it)``. Kept rows go to the outbox as kind ``sample`` while the
samples already queued stay under ``byte_budget``; rows over the budget are skipped and counted. Per day
(UTC), at most ``per_class_daily_cap`` rows of each predicted class and ``daily_byte_budget`` bytes are kept.

Privacy switch (``privacy``): ``raw`` keeps the input bytes, ``hash`` keeps only a keyed BLAKE2b digest of
them (duplicates stay recognisable, content does not travel), ``features`` keeps neither but keeps the
feature summaries (the same the drift tests use), ``drop`` keeps only the answer (scores, predicted class,
confidence). The default, ``hash``, sends nothing a person could be recognised from.

Each sample carries the ``request_id`` it was offered with (feedback refers to it) and the ``predicted``
class. :meth:`Sampler.update` swaps the settings in place (a server-sent policy), keeping the counters.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.errors import ConfigError, PayloadTooLargeError

if TYPE_CHECKING:
    from edgefleet.telemetry._outbox import Outbox

__all__ = ["Sampler", "SamplerConfig"]

log = logging.getLogger(__name__)


class SamplerConfig(BaseSettings):
    """Sampling rates, budget and privacy (``EDGEFLEET_SAMPLER_*``). Off unless ``enabled``."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_SAMPLER_", extra="ignore")

    enabled: bool = Field(False, description="opt-in: nothing is sampled unless true")
    rate: float = Field(0.01, ge=0, le=1, description="probability of keeping any row")
    low_confidence_threshold: float = Field(
        0.6, ge=0, le=1, description="confidence below which a row is 'low'"
    )
    low_confidence_rate: float = Field(
        0.2, ge=0, le=1, description="probability of keeping a low-confidence row"
    )
    escalated_rate: float = Field(0.5, ge=0, le=1, description="probability of keeping an escalated row")
    privacy: Literal["raw", "hash", "features", "drop"] = Field(
        "hash", description="what is kept of raw inputs"
    )
    hash_key: str = Field("", description="secret key of the input digest (set one per fleet)")
    byte_budget: int = Field(8 << 20, ge=0, description="most bytes of samples queued in the outbox")
    max_sample_bytes: int = Field(64 * 1024, ge=256, description="largest single sample (bigger: skipped)")
    max_output_values: int = Field(1024, ge=0, description="output values kept per row")
    per_class_daily_cap: int | None = Field(None, ge=0, description="rows kept per predicted class per day")
    daily_byte_budget: int | None = Field(None, ge=0, description="sample bytes kept per day")
    allow_metered: bool = Field(False, description="upload samples over a metered link too (the agent's)")
    seed: int | None = Field(None, description="random seed (tests, benchmarks)")


class Sampler:
    """Decide which rows to keep and queue them (see module docstring).

    Args:
        config: rates, budget and privacy.
        outbox: where samples go (kind ``sample``); its queued sample bytes count against the budget.
        sink: alternatively, a callable taking each sample dict (then the sampler counts its own bytes).
    """

    def __init__(
        self,
        config: SamplerConfig | None = None,
        *,
        outbox: Outbox | None = None,
        sink: Callable[[dict[str, Any]], Any] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or SamplerConfig()
        if outbox is not None and sink is not None:
            raise ConfigError("give the Sampler an outbox or a sink, not both")
        self.outbox, self.sink, self._wall = outbox, sink, wall
        self._rng = np.random.default_rng(self.config.seed)
        self._lock = threading.Lock()
        self._sink_bytes = 0
        self.counters: dict[str, int] = {
            "offered": 0,
            "kept": 0,
            "kept_random": 0,
            "kept_low_confidence": 0,
            "kept_escalated": 0,
            "skipped_budget": 0,
            "skipped_size": 0,
            "skipped_class_cap": 0,
            "skipped_daily_budget": 0,
            "bytes": 0,
        }
        self._day = -1
        self._day_bytes = 0
        self._day_classes: dict[str, int] = {}

    def update(self, config: SamplerConfig) -> None:
        """Use new settings from now on (rates, caps, privacy); counters and today's tallies are kept."""
        with self._lock:
            self.config = config

    def _roll_day(self) -> None:
        day = int(self._wall() // 86_400)
        if day != self._day:
            self._day, self._day_bytes, self._day_classes = day, 0, {}

    def probabilities(self, confidence: np.ndarray, escalated: np.ndarray | None = None) -> np.ndarray:
        """Per-row keep probability."""
        c = self.config
        p = np.full(len(confidence), c.rate)
        low = np.asarray(confidence) < c.low_confidence_threshold
        p = np.where(low, np.maximum(p, c.low_confidence_rate), p)
        if escalated is not None:
            p = np.where(np.asarray(escalated, dtype=bool), np.maximum(p, c.escalated_rate), p)
        return p

    def _queued_bytes(self) -> int:
        if self.outbox is not None:
            return self.outbox.bytes_of("sample")
        return self._sink_bytes

    def offer(
        self,
        *,
        confidence: np.ndarray,
        inputs: np.ndarray | None = None,
        scores: np.ndarray | None = None,
        labels: Sequence[str] | None = None,
        escalated: np.ndarray | None = None,
        features: np.ndarray | None = None,
        tags: Mapping[str, str] | None = None,
        request_ids: Sequence[str] | None = None,
        raw: Sequence[bytes | None] | None = None,
    ) -> int:
        """Offer a batch of rows; return how many were kept.

        ``raw``: the encoded input of each row as the caller sent it (an image file...), kept with privacy
        ``raw`` (or hashed with ``hash``) instead of ``inputs``' array bytes when given.
        """
        if not self.config.enabled:
            return 0
        conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
        n = len(conf)
        with self._lock:
            self.counters["offered"] += n
            keep = self._rng.random(n) < self.probabilities(conf, escalated)
            idx = np.flatnonzero(keep)
            if not len(idx):
                return 0
            kept = 0
            budget_left = self.config.byte_budget - self._queued_bytes()
            self._roll_day()
            cap, day_budget = self.config.per_class_daily_cap, self.config.daily_byte_budget
            for i in idx.tolist():
                sample = self._build(
                    i, conf, inputs, scores, labels, escalated, features, tags, request_ids, raw
                )
                predicted = sample.get("predicted", "")
                if cap is not None and self._day_classes.get(predicted, 0) >= cap:
                    self.counters["skipped_class_cap"] += 1
                    continue
                blob = json.dumps(sample, separators=(",", ":"), allow_nan=False).encode()
                if len(blob) > self.config.max_sample_bytes:
                    self.counters["skipped_size"] += 1
                    continue
                if day_budget is not None and self._day_bytes + len(blob) > day_budget:
                    self.counters["skipped_daily_budget"] += 1
                    continue
                if len(blob) > budget_left:
                    self.counters["skipped_budget"] += 1
                    continue
                if not self._put(sample, len(blob)):
                    self.counters["skipped_budget"] += 1
                    continue
                budget_left -= len(blob)
                self._day_bytes += len(blob)
                self._day_classes[predicted] = self._day_classes.get(predicted, 0) + 1
                kept += 1
                self.counters["kept"] += 1
                self.counters[f"kept_{sample['reason']}"] += 1
                self.counters["bytes"] += len(blob)
            return kept

    def _put(self, sample: dict[str, Any], size: int) -> bool:
        if self.outbox is not None:
            try:
                return self.outbox.put("sample", sample) is not None
            except PayloadTooLargeError:
                return False
        if self.sink is not None:
            self.sink(sample)
            self._sink_bytes += size
        return True

    def release(self, nbytes: int) -> None:
        """With a sink (no outbox): tell the sampler that ``nbytes`` of samples left the device."""
        with self._lock:
            self._sink_bytes = max(0, self._sink_bytes - nbytes)

    def _build(
        self, i, conf, inputs, scores, labels, escalated, features, tags, request_ids, raw
    ) -> dict[str, Any]:
        c = self.config
        if escalated is not None and bool(escalated[i]):
            reason = "escalated"
        elif conf[i] < c.low_confidence_threshold:
            reason = "low_confidence"
        else:
            reason = "random"
        s: dict[str, Any] = {
            "t": round(self._wall(), 3),
            "reason": reason,
            "confidence": round(float(conf[i]), 6),
            "privacy": c.privacy,
        }
        if request_ids is not None:
            s["request_id"] = str(request_ids[i])
        if labels is not None:
            s["predicted"] = str(labels[i])
        if tags:
            s["tags"] = dict(tags)
        if scores is not None:
            row = np.asarray(scores[i]).reshape(-1)[: c.max_output_values]
            s["scores"] = [round(float(v), 6) for v in row]
        if features is not None and c.privacy != "drop":
            s["features"] = [round(float(v), 6) for v in np.asarray(features[i]).reshape(-1)]
        data = raw[i] if raw is not None else None
        if data is None and inputs is not None:
            x = np.ascontiguousarray(inputs[i])
            s["input_meta"] = {"dtype": str(x.dtype), "shape": list(x.shape)}
            data = x.tobytes()
        if data is not None:
            if c.privacy == "raw":
                s["input_b64"] = base64.b64encode(data).decode("ascii")
            elif c.privacy == "hash":
                h = hashlib.blake2b(data, digest_size=16, key=c.hash_key.encode()[:64])
                s["input_hash"] = h.hexdigest()
        return s
