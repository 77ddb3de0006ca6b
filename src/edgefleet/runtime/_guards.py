"""Guards around a predictor: a timeout for hung models and a circuit breaker for failing ones."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from edgefleet.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    InputError,
    ModelTimeoutError,
)
from edgefleet.runtime._config import BreakerConfig
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import Prediction, Predictor, PredictorMetadata, check_deadline
from edgefleet.runtime._watchdog import Watchdog, is_terminable

__all__ = ["Breaker", "CircuitBreaker", "Timeout"]

log = logging.getLogger(__name__)


class Timeout:
    """Gives up on ``inner`` after ``timeout_s`` (or the request's deadline, whichever is sooner).

    A terminable ``inner`` (an ORT engine) runs on the caller's thread and a :class:`Watchdog` stops a
    call that outlives ``timeout_s``, when no request deadline is sooner. Otherwise the call goes to a
    worker thread: it cannot be interrupted, so an abandoned call keeps its thread until it returns;
    once ``max_stuck`` calls are stuck, new calls fail at once instead of piling up more threads.
    """

    def __init__(self, inner: Predictor, timeout_s: float, *, max_stuck: int = 4, concurrency: int = 8):
        self.inner = inner
        self.timeout_s = timeout_s
        self.max_stuck = max_stuck
        self._pool = ThreadPoolExecutor(
            max_workers=max_stuck + concurrency, thread_name_prefix="edgefleet-call"
        )
        self._lock = threading.Lock()
        self._stuck = 0
        self._watchdog = (
            Watchdog(inner, timeout_s, name="edgefleet-timeout-watchdog") if is_terminable(inner) else None
        )

    @property
    def metadata(self) -> PredictorMetadata:
        return self.inner.metadata

    @property
    def stuck(self) -> int:
        """Calls abandoned after their timeout that have not returned yet."""
        return self._stuck

    def _unstick(self, _: Future) -> None:
        with self._lock:
            self._stuck -= 1

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        deadline = opts.get("deadline")
        check_deadline(deadline)
        watchdog = self._watchdog
        if watchdog is not None and (deadline is None or deadline - time.monotonic() > self.timeout_s):
            return watchdog.call(batch, opts)  # type: ignore[no-any-return]
        if self._stuck >= self.max_stuck:
            raise ModelTimeoutError(
                f"model {self.metadata.name} is hung: {self._stuck} calls have not returned",
                hint="the model stopped answering; the runtime falls back until it recovers or is swapped",
                tier=self.metadata.tier,
            )
        wait = self.timeout_s
        by_deadline = False
        if deadline is not None and deadline - time.monotonic() < wait:
            wait, by_deadline = max(0.0, deadline - time.monotonic()), True
        fut = self._pool.submit(self.inner.predict, batch, **opts)
        try:
            return fut.result(timeout=wait)
        except FutureTimeout:
            with self._lock:
                late = not fut.done()
                if late:
                    self._stuck += 1
            if not late:  # finished in the instant between the timeout and here
                return fut.result()
            fut.add_done_callback(self._unstick)
            if by_deadline:
                raise DeadlineExceededError(
                    "request deadline passed while the model was running",
                    hint="send a longer deadline, or use a faster model",
                ) from None
            raise ModelTimeoutError(
                f"model {self.metadata.name} did not answer within {self.timeout_s * 1000:.0f} ms",
                hint="raise EDGEFLEET_FALLBACK_TIMEOUT_MS or configure a backup model",
                tier=self.metadata.tier,
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._watchdog is not None:
            self._watchdog.close()
        self.inner.close()


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` failures among the last ``window`` calls; open for an
    exponentially growing, jittered period; then half-open: a probe call closes it or re-opens it.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        metrics: RuntimeMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._window: deque[bool] = deque(maxlen=self.config.window)
        self._state = "closed"
        self._open_until = 0.0
        self._reopens = 0
        self._probes = 0
        self.opened = 0  # times it opened
        self.failures_when_opened: list[int] = []  # failures in the window at each opening
        if metrics:
            metrics.breaker(name, "closed")

    @property
    def state(self) -> str:
        with self._lock:
            self._tick()
            return self._state

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 when closed or half-open)."""
        with self._lock:
            self._tick()
            return max(0.0, self._open_until - self._clock()) if self._state == "open" else 0.0

    def _tick(self) -> None:
        if self._state == "open" and self._clock() >= self._open_until:
            self._set("half_open")
            self._probes = 0

    def _set(self, state: str) -> None:
        opened = state == "open" and self._state != "open"
        self._state = state
        if self._metrics:
            self._metrics.breaker(self.name, state, opened=opened)

    def allow(self) -> bool:
        """Whether a call may go through now (a half-open breaker lets ``half_open_calls`` probes)."""
        with self._lock:
            self._tick()
            if self._state == "closed":
                return True
            if self._state == "half_open" and self._probes < self.config.half_open_calls:
                self._probes += 1
                return True
            return False

    def record(self, ok: bool) -> None:
        """Report the outcome of a call that ``allow()`` let through."""
        with self._lock:
            if self._state == "half_open":
                if ok:
                    self._window.clear()
                    self._reopens = 0
                    self._set("closed")
                else:
                    self._open(self._reopens + 1)
                return
            if self._state == "open":  # a call let through before it opened
                return
            self._window.append(ok)
            failures = self._window.count(False)
            if failures >= self.config.failure_threshold:
                self.failures_when_opened.append(failures)
                self._open(0)

    def release(self) -> None:
        """A let-through call ended without a verdict (e.g. the caller's own bad input)."""
        with self._lock:
            if self._state == "half_open" and self._probes > 0:
                self._probes -= 1

    def _open(self, reopens: int) -> None:
        c = self.config
        period = min(c.backoff_max_s, c.backoff_s * c.backoff_factor**reopens)
        period *= 1 + c.jitter * (2 * self._rng() - 1)
        self._reopens = reopens
        self._open_until = self._clock() + period
        self._window.clear()
        self.opened += 1
        self._set("open")
        log.warning("circuit breaker %s opened for %.2f s", self.name, period)


# Errors that say the *request* was wrong or late, not the tier: they never trip a breaker.
_CALLER_ERRORS = (InputError, DeadlineExceededError)


class Breaker:
    """A predictor behind a :class:`CircuitBreaker`: while open, calls fail fast with CircuitOpenError."""

    def __init__(
        self,
        inner: Predictor,
        breaker: CircuitBreaker | BreakerConfig | None = None,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.inner = inner
        if not isinstance(breaker, CircuitBreaker):
            breaker = CircuitBreaker(inner.metadata.tier, breaker, metrics=metrics)
        self.breaker = breaker

    @property
    def metadata(self) -> PredictorMetadata:
        return self.inner.metadata

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        if not self.breaker.allow():
            retry = self.breaker.retry_in()
            raise CircuitOpenError(
                f"circuit breaker for {self.breaker.name} is open after repeated failures",
                hint=f"it will be probed again in {retry:.1f} s",
                retry_after=round(retry, 3),
                tier=self.metadata.tier,
            )
        try:
            out = self.inner.predict(batch, **opts)
        except _CALLER_ERRORS:
            self.breaker.release()
            raise
        except BaseException:
            self.breaker.record(False)
            raise
        self.breaker.record(True)
        return out

    def close(self) -> None:
        self.inner.close()
