"""Dynamic batching: concurrent requests grouped into one model call, urgent first, with deadlines."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from edgefleet.errors import DeadlineExceededError, EdgefleetError, InferenceError, OverloadedError
from edgefleet.runtime._config import BatcherConfig
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import (
    Prediction,
    Predictor,
    PredictorMetadata,
    Priority,
    as_prediction,
    batch_rows,
    check_deadline,
)

__all__ = ["Batcher"]

log = logging.getLogger(__name__)


class _Request:
    __slots__ = ("batch", "rows", "key", "deadline", "future", "enqueued", "priority", "cancelled")

    def __init__(self, batch: dict[str, np.ndarray], priority: int, deadline: float | None) -> None:
        self.batch = batch
        self.rows = batch_rows(batch)
        # Only requests whose inputs agree beyond the batch dimension can share a model call.
        self.key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in batch.items())
        self.priority = priority
        self.deadline = deadline
        self.future: Future[Prediction] = Future()
        self.enqueued = time.monotonic()
        self.cancelled = False


class Batcher:
    """Groups concurrent ``predict`` calls into batches for ``inner`` (a Predictor itself).

    A batch closes when it holds ``max_batch_size`` rows or ``max_delay_ms`` after its first request
    arrived. Higher ``priority`` is served first (FIFO within a level); a request whose ``deadline``
    passes while it waits is dropped with DeadlineExceededError and never run; a full queue refuses
    new requests at once with OverloadedError (and a retry-after estimate).

    With ``adaptive_delay`` the batcher does not wait for company when the last batch held a single
    request and nothing else is queued, so a lone caller pays no batching delay.
    """

    def __init__(
        self,
        inner: Predictor,
        config: BatcherConfig | None = None,
        *,
        metrics: RuntimeMetrics | None = None,
        adaptive_delay: bool = True,
    ) -> None:
        self.inner = inner
        self.config = config or BatcherConfig()
        self._metrics = metrics
        self._adaptive = adaptive_delay
        fixed = inner.metadata.max_batch_size
        self._max_rows = self.config.max_batch_size
        if fixed is not None and self.config.fixed_batch == "split":
            self._max_rows = min(self._max_rows, fixed)
        self._delay = self.config.max_delay_ms / 1000.0
        self._heap: list[tuple[int, int, _Request]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._last_batch_requests = 1
        self._batch_s = 0.0  # moving average of one model call, for retry-after estimates
        self._workers = [
            threading.Thread(target=self._loop, name=f"edgefleet-batcher-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for t in self._workers:
            t.start()

    @property
    def metadata(self) -> PredictorMetadata:
        return self.inner.metadata

    @property
    def queue_depth(self) -> int:
        return len(self._heap)

    # --- callers ----------------------------------------------------------------------------------

    def submit(
        self,
        batch: dict[str, np.ndarray],
        *,
        priority: int = Priority.NORMAL,
        deadline: float | None = None,
        **_: Any,
    ) -> Future[Prediction]:
        """Queue ``batch`` and return a Future of its Prediction (for async callers)."""
        check_deadline(deadline, "before it was queued")
        req = _Request(batch, int(priority), deadline)
        with self._cond:
            if self._closed:
                raise InferenceError("the batcher is closed", hint="the runtime is shutting down; retry")
            if len(self._heap) >= self.config.max_queue:
                retry = self._retry_after()
                if self._metrics:
                    self._metrics.rejected.labels("overloaded").inc()
                raise OverloadedError(
                    f"request queue is full ({self.config.max_queue} waiting)",
                    hint=f"retry after {retry:.2f} s, or raise EDGEFLEET_BATCHER_MAX_QUEUE",
                    retry_after=retry,
                )
            heapq.heappush(self._heap, (-req.priority, next(self._seq), req))
            if self._metrics:
                self._metrics.queue_depth.set(len(self._heap))
            self._cond.notify()
        return req.future

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        deadline = opts.get("deadline")
        fut = self.submit(batch, **opts)
        if deadline is None:
            return fut.result()
        try:
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            self._cancel(fut)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()  # finished in the instant between timeout and cancel
            raise DeadlineExceededError(
                "request deadline passed while it waited for the model",
                hint="send a longer deadline, or lower the load on this device",
            ) from None

    def _cancel(self, fut: Future[Prediction]) -> None:
        with self._cond:
            for _, _, req in self._heap:
                if req.future is fut:
                    req.cancelled = True
                    break

    def _retry_after(self) -> float:
        batches_ahead = len(self._heap) / max(1, self._max_rows) / max(1, self.config.workers)
        return round(min(30.0, max(0.05, batches_ahead * max(self._batch_s, self._delay))), 3)

    # --- workers ----------------------------------------------------------------------------------

    def _take(self) -> list[_Request] | None:
        """Wait for work and return the next batch (None when closed and drained). Holds no lock."""
        with self._cond:
            while True:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return None
                first = self._pop_live()
                if first is not None:
                    break
            batch = [first]
            rows = first.rows
            if rows >= self._max_rows:
                return batch
            wait = not (self._adaptive and self._last_batch_requests <= 1 and not self._heap)
            close_at = first.enqueued + self._delay
            while rows < self._max_rows:
                if self._heap:
                    held: list[tuple[int, int, _Request]] = []
                    while self._heap and rows < self._max_rows:
                        item = heapq.heappop(self._heap)
                        req = item[2]
                        if req.cancelled:
                            continue
                        if req.key != first.key or rows + req.rows > self._max_rows:
                            held.append(item)
                            continue
                        if self._expired(req):
                            continue
                        batch.append(req)
                        rows += req.rows
                    for item in held:
                        heapq.heappush(self._heap, item)
                    if held:  # the rest cannot join this batch; do not wait for it
                        break
                if rows >= self._max_rows or not wait or self._closed:
                    break
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._metrics:
                self._metrics.queue_depth.set(len(self._heap))
            self._last_batch_requests = len(batch)
            return batch

    def _pop_live(self) -> _Request | None:
        while self._heap:
            req = heapq.heappop(self._heap)[2]
            if req.cancelled:
                continue
            if not self._expired(req):
                return req
        return None

    def _expired(self, req: _Request) -> bool:
        if req.deadline is not None and time.monotonic() >= req.deadline:
            if self._metrics:
                self._metrics.rejected.labels("deadline").inc()
            req.future.set_exception(
                DeadlineExceededError(
                    "request deadline passed while it was queued; it was not run",
                    hint="send a longer deadline, or lower the load on this device",
                )
            )
            return True
        return False

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # never let a worker die with callers waiting
                log.exception("batcher worker error")
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(InferenceError(f"batcher failed: {e}"))

    def _run(self, batch: list[_Request]) -> None:
        deadlines = [r.deadline for r in batch if r.deadline is not None]
        priority = max(r.priority for r in batch)
        deadline = max(deadlines) if len(deadlines) == len(batch) else None
        if len(batch) == 1:
            inputs = batch[0].batch
        else:
            inputs = {k: np.concatenate([r.batch[k] for r in batch]) for k in batch[0].batch}
        rows = sum(r.rows for r in batch)
        if self._metrics:
            self._metrics.batch_size.observe(rows)
        t0 = time.monotonic()
        try:
            out = as_prediction(
                self.inner.predict(inputs, priority=priority, deadline=deadline),
                self.inner.metadata.tier,
                rows,
            )
        except EdgefleetError as e:
            for r in batch:
                r.future.set_exception(e)
            return
        except Exception as e:
            err = InferenceError(f"model call failed: {e}", hint="see the runtime log")
            for r in batch:
                r.future.set_exception(err)
            return
        finally:
            self._batch_s = 0.8 * self._batch_s + 0.2 * (time.monotonic() - t0)
        if len(batch) == 1:
            batch[0].future.set_result(out)
            return
        offset = 0
        for r in batch:
            sl = slice(offset, offset + r.rows)
            part = {k: (v[sl] if getattr(v, "ndim", 0) and v.shape[0] == rows else v) for k, v in out.items()}
            r.future.set_result(Prediction(part, tiers=out.tiers[sl], events=out.events))
            offset += r.rows

    def close(self) -> None:
        """Stop taking requests, answer the queued ones, stop the workers; then close ``inner``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._workers:
            if t is not threading.current_thread():
                t.join()
        self.inner.close()
