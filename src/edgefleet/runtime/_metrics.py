"""Prometheus metrics of one Runtime, in its own registry (never the global one)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["RuntimeMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


def _cumulative(bounds: tuple, counts: list) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one +Inf) as the cumulative buckets of a histogram family."""
    cum, buckets = 0, []
    for bound, n in zip([*(str(float(b)) for b in bounds), "+Inf"], counts, strict=True):
        cum += n
        buckets.append((bound, cum))
    return buckets


class _RequestCollector(Collector):
    """``requests_total``, ``request_seconds`` and ``batch_size``: the per-request hot path.

    prometheus_client's labelled metrics cost a few microseconds per request (label lookup, a lock
    per value); here one raw lock guards plain counters, and the families are built at scrape time.
    """

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.lock = threading.Lock()
        self.outcomes: dict[tuple[str, str], int] = {}
        self.hist: dict[str, list] = {}  # tier -> [bucket counts..., +Inf count, sum]
        self.batches = [0] * (len(_BATCH_BUCKETS) + 1) + [0]  # rows per model call: buckets, +Inf, sum

    def batch(self, rows: int) -> None:
        i = bisect_left(_BATCH_BUCKETS, rows)
        with self.lock:
            b = self.batches
            b[i] += 1
            b[-1] += rows

    def answered(self, tier: str, seconds: float) -> None:
        i = bisect_left(_LATENCY_BUCKETS, seconds)
        with self.lock:
            h = self.hist.get(tier)
            if h is None:
                h = self.hist[tier] = [0] * (len(_LATENCY_BUCKETS) + 1) + [0.0]
            h[i] += 1
            h[-1] += seconds
            key = ("ok", tier)
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def refused(self, outcome: str) -> None:
        with self.lock:
            key = (outcome, "none")
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def collect(self) -> Iterator:
        with self.lock:
            outcomes = dict(self.outcomes)
            hist = {k: list(v) for k, v in self.hist.items()}
            batches = list(self.batches)
        c = CounterMetricFamily(
            f"{self.ns}_requests",
            "Requests answered or refused, by outcome and answering tier",
            labels=["outcome", "tier"],
        )
        for (outcome, tier), n in sorted(outcomes.items()):
            c.add_metric([outcome, tier], n)
        yield c
        h = HistogramMetricFamily(
            f"{self.ns}_request_seconds", "Request latency through the runtime", labels=["tier"]
        )
        for tier, v in sorted(hist.items()):
            h.add_metric([tier], _cumulative(_LATENCY_BUCKETS, v[:-1]), v[-1])
        yield h
        b = HistogramMetricFamily(f"{self.ns}_batch_size", "Rows per model call made by the batcher")
        b.add_metric([], _cumulative(_BATCH_BUCKETS, batches[:-1]), batches[-1])
        yield b

    def describe(self) -> Iterator:
        return iter(())


class RuntimeMetrics:
    """Counters, histograms and gauges for requests, batches, queue, fallbacks, escalations, breakers."""

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "edgefleet_runtime"):
        self.registry = registry or CollectorRegistry()
        r, ns = self.registry, namespace
        self._req = _RequestCollector(ns)
        # the hot path's calls go straight to the collector (instance attributes shadow the methods below)
        self.answered = self._req.answered  # type: ignore[method-assign]
        self.batch = self._req.batch  # type: ignore[method-assign]
        r.register(self._req)
        self.queue_depth = Gauge(f"{ns}_queue_depth", "Requests waiting in the batcher", registry=r)
        self.inflight = Gauge(f"{ns}_inflight", "Requests being answered", registry=r)
        self.fallbacks = Counter(
            f"{ns}_fallbacks",
            "Times a tier failed and the next tier answered",
            ["tier", "reason"],
            registry=r,
        )
        self.escalations = Counter(
            f"{ns}_escalations",
            "Escalation attempts by outcome (sent, queued, skipped, failed)",
            ["outcome"],
            registry=r,
        )
        self.breaker_state = Gauge(
            f"{ns}_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open)",
            ["name"],
            registry=r,
        )
        self.breaker_opens = Counter(f"{ns}_breaker_opens", "Times a breaker opened", ["name"], registry=r)
        self.cache = Counter(f"{ns}_cache", "Cache lookups by result", ["result"], registry=r)
        self.rejected = Counter(
            f"{ns}_rejected", "Requests refused before inference, by reason", ["reason"], registry=r
        )
        self.model_info = Gauge(
            f"{ns}_model_info",
            "The model being served (value 1)",
            ["name", "version", "variant"],
            registry=r,
        )
        self.swaps = Counter(f"{ns}_swaps", "Hot swaps completed", registry=r)
        self.trigger = Counter(
            f"{ns}_trigger",
            "Requests by the trigger stage's decision: model (the big model ran) or gated",
            ["decision"],
            registry=r,
        )
        self.trigger_energy_saved = Gauge(
            f"{ns}_trigger_energy_saved_mj",
            "Energy the trigger saved, estimated: gated requests x mean model latency x power_watts (mJ)",
            registry=r,
        )

    def answered(self, tier: str, seconds: float) -> None:
        """Count one answered request and its latency (the hot path)."""
        self._req.answered(tier, seconds)

    def batch(self, rows: int) -> None:
        """Count one model call of ``rows`` rows made by the batcher (``batch_size`` histogram)."""
        self._req.batch(rows)

    def refused(self, outcome: str) -> None:
        """Count one request that got an error (``outcome`` is the error code)."""
        self._req.refused(outcome)

    def breaker(self, name: str, state: str, opened: bool = False) -> None:
        self.breaker_state.labels(name).set(_BREAKER_STATE[state])
        if opened:
            self.breaker_opens.labels(name).inc()

    def serving(self, name: str, version: str, variant: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, variant).set(1)

    def exposition(self) -> bytes:
        """The text format served at ``GET /metrics``."""
        return generate_latest(self.registry)
