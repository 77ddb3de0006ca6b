"""Prometheus metrics of one Runtime, in its own registry (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["RuntimeMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


class RuntimeMetrics:
    """Counters, histograms and gauges for requests, batches, queue, fallbacks, escalations, breakers."""

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "edgefleet_runtime"):
        self.registry = registry or CollectorRegistry()
        r, ns = self.registry, namespace
        self.requests = Counter(
            f"{ns}_requests", "Requests answered or refused, by outcome and answering tier",
            ["outcome", "tier"], registry=r,
        )
        self.latency = Histogram(
            f"{ns}_request_seconds", "Request latency through the runtime", ["tier"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            f"{ns}_batch_size", "Rows per model call made by the batcher", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(f"{ns}_queue_depth", "Requests waiting in the batcher", registry=r)
        self.inflight = Gauge(f"{ns}_inflight", "Requests being answered", registry=r)
        self.fallbacks = Counter(
            f"{ns}_fallbacks", "Times a tier failed and the next tier answered", ["tier", "reason"],
            registry=r,
        )
        self.escalations = Counter(
            f"{ns}_escalations", "Escalation attempts by outcome (sent, queued, skipped, failed)",
            ["outcome"], registry=r,
        )
        self.breaker_state = Gauge(
            f"{ns}_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", ["name"],
            registry=r,
        )
        self.breaker_opens = Counter(f"{ns}_breaker_opens", "Times a breaker opened", ["name"], registry=r)
        self.cache = Counter(f"{ns}_cache", "Cache lookups by result", ["result"], registry=r)
        self.rejected = Counter(
            f"{ns}_rejected", "Requests refused before inference, by reason", ["reason"], registry=r
        )
        self.model_info = Gauge(
            f"{ns}_model_info", "The model being served (value 1)", ["name", "version", "variant"],
            registry=r,
        )
        self.swaps = Counter(f"{ns}_swaps", "Hot swaps completed", registry=r)

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
