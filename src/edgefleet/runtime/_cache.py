"""Answer cache: LRU of output rows keyed by a hash of each input row, with a TTL and a byte cap."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from edgefleet.errors import InferenceError
from edgefleet.runtime._config import CacheConfig
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import (
    Event,
    Prediction,
    Predictor,
    PredictorMetadata,
    as_prediction,
    batch_rows,
)

__all__ = ["AnswerCache", "CacheTier", "Cached"]


def _row_keys(batch: dict[str, np.ndarray], salt: bytes) -> list[bytes]:
    n = batch_rows(batch)
    items = sorted(batch.items())
    keys = []
    for i in range(n):
        h = hashlib.blake2b(salt, digest_size=16)
        for name, arr in items:
            row = np.ascontiguousarray(arr[i])
            h.update(name.encode())
            h.update(row.dtype.str.encode())
            h.update(repr(row.shape).encode())
            if row.dtype == object:
                h.update(repr(row.tolist()).encode())
            else:
                h.update(row.tobytes())
        keys.append(h.digest())
    return keys


class AnswerCache:
    """Thread-safe LRU of ``{output: row}`` answers with a TTL and a byte cap.

    Keys include a ``salt`` (the model identity) so a hot swap never serves the old model's answers.
    """

    def __init__(
        self, config: CacheConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or CacheConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[bytes, tuple[float, dict[str, np.ndarray], str, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def keys_for(self, batch: dict[str, np.ndarray], salt: str) -> list[bytes]:
        return _row_keys(batch, salt.encode())

    def get(self, key: bytes, max_age: float | None = None) -> tuple[dict[str, np.ndarray], str] | None:
        """The cached row and the tier that produced it, if younger than ``max_age`` (default: TTL)."""
        max_age = self.config.ttl_s if max_age is None else max_age
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            t, row, tier, _ = hit
            if self._clock() - t > max_age:
                return None
            self._data.move_to_end(key)
            return row, tier

    def put(self, key: bytes, row: dict[str, np.ndarray], tier: str) -> None:
        row = {k: np.array(v, copy=True) for k, v in row.items()}  # never alias a caller's array
        size = sum(v.nbytes for v in row.values()) + 64
        if size > self.config.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[3]
            self._data[key] = (self._clock(), row, tier, size)
            self.bytes += size
            while len(self._data) > self.config.max_entries or self.bytes > self.config.max_bytes:
                _, (_, _, _, s) = self._data.popitem(last=False)
                self.bytes -= s

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0


def _salt(meta: PredictorMetadata) -> str:
    return f"{meta.name}/{meta.version}"


def _assemble(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class Cached:
    """Answers repeated input rows from ``cache``; computes the rest with ``inner`` and stores them."""

    def __init__(
        self, inner: Predictor, cache: AnswerCache, *, metrics: RuntimeMetrics | None = None
    ) -> None:
        self.inner = inner
        self.cache = cache
        self._metrics = metrics

    @property
    def metadata(self) -> PredictorMetadata:
        return self.inner.metadata

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        keys = self.cache.keys_for(batch, _salt(self.metadata))
        hits = [self.cache.get(k) for k in keys]
        miss = [i for i, h in enumerate(hits) if h is None]
        if self._metrics:
            self._metrics.cache.labels("hit").inc(len(keys) - len(miss))
            self._metrics.cache.labels("miss").inc(len(miss))
        if len(miss) == len(keys):
            out = as_prediction(self.inner.predict(batch, **opts), self.metadata.tier)
            for i, k in enumerate(keys):
                self.cache.put(k, {n: v[i] for n, v in out.items()}, out.tiers[i])
            return out
        rows: list[dict[str, np.ndarray] | None] = [h[0] if h else None for h in hits]
        tiers = ["cache" if h else "" for h in hits]
        events: tuple[Event, ...] = (Event("cache_hit", "cache", rows=len(keys) - len(miss)),)
        if miss:
            sub = {k: v[miss] for k, v in batch.items()}
            got = as_prediction(self.inner.predict(sub, **opts), self.metadata.tier)
            for j, i in enumerate(miss):
                rows[i] = {n: v[j] for n, v in got.items()}
                tiers[i] = got.tiers[j]
                self.cache.put(keys[i], rows[i], got.tiers[j])  # type: ignore[arg-type]
            events = got.events + events
        return Prediction(_assemble(rows), tiers=tiers, events=events)  # type: ignore[arg-type]

    def close(self) -> None:
        self.inner.close()


class CacheTier:
    """A fallback tier answering only from the cache (stale answers allowed: better than none)."""

    def __init__(
        self, cache: AnswerCache, metadata: PredictorMetadata, *, max_age_s: float = float("inf")
    ) -> None:
        self.cache = cache
        self.max_age_s = max_age_s
        self._meta = metadata.replace(tier="cache", max_batch_size=None)
        self._salt = _salt(metadata)

    @property
    def metadata(self) -> PredictorMetadata:
        return self._meta

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        rows = []
        for k in self.cache.keys_for(batch, self._salt):
            hit = self.cache.get(k, self.max_age_s)
            if hit is None:
                raise InferenceError(
                    "no cached answer for this input", hint="the cache answers only inputs seen before"
                )
            rows.append(hit[0])
        return Prediction(_assemble(rows), tiers=("cache",) * len(rows))

    def close(self) -> None:
        pass
