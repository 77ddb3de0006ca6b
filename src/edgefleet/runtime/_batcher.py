"""Dynamic batching: concurrent requests grouped into one model call, urgent first, with deadlines."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from edgefleet.errors import (
    DeadlineExceededError,
    EdgefleetError,
    InferenceError,
    ModelTimeoutError,
    OverloadedError,
)
from edgefleet.runtime._config import BatcherConfig
from edgefleet.runtime._engines import _zeros
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
from edgefleet.runtime._watchdog import Watchdog, is_terminable

__all__ = ["Batcher", "Ticket", "auto_workers"]

# A model call cheaper than this (CPU per row, run alone) costs less than handing a request to a
# worker and waking its caller: such models are run on their callers' threads even under load.
_CHEAP_CALL_S = 50e-6

log = logging.getLogger(__name__)


def auto_workers(threads_per_call: int = 1, most: int = 4) -> int:
    """Batch workers for ``workers=0``: one per usable core over the threads one model call uses.

    A batched call is compute-bound: with one worker, a model on one intra-op thread leaves the other
    cores idle while callers queue (Triton runs several instances of a CPU model for the same reason).
    It is not the default: smaller batches cost more CPU per request, which a battery pays for.
    ``threads_per_call`` 0 is ONNX Runtime's default, every core: then one worker.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    if threads_per_call <= 0:
        return 1
    return max(1, min(most, cores // threads_per_call))


def _solo_cpu(inner: Any) -> float:
    """CPU time of a one-row call on zeros, the least of five, for an engine that answers directly
    (an OrtEngine's ``answer``); infinity when it cannot be measured that way.

    Known from the start, a model cheaper than a hand-off runs on its callers' threads even when load
    arrives before any quiet moment: otherwise its cost is learnt only from a one-row call, which a
    steady stream of concurrent requests never leaves room for (they all queue and batch).
    """
    answer = getattr(inner, "answer", None)
    if answer is None:
        return float("inf")
    try:
        feed = {s.name: _zeros(s, 1) for s in inner.metadata.inputs}
        best = float("inf")
        for _ in range(5):
            t0 = time.thread_time()
            answer(feed)
            best = min(best, time.thread_time() - t0)
            # a first call runs cold (5x a warm one was seen): only a call far above the line ends it early
            if best >= 100 * _CHEAP_CALL_S:
                break
        return best
    except Exception:  # zeros the model refuses: learn the cost from real calls instead
        log.debug("could not time a one-row call on zeros", exc_info=True)
        return float("inf")


class Ticket:
    """The pending answer of one queued request (a one-shot, lock-based future).

    ``concurrent.futures.Future`` costs several microseconds per request (a Condition, callbacks);
    a pre-acquired lock released by the worker is the cheapest wake-up CPython offers.
    """

    __slots__ = (
        "batch",
        "rows",
        "key",
        "deadline",
        "priority",
        "enqueued",
        "cancelled",
        "_done",
        "_value",
        "_error",
        "_callback",
    )

    def __init__(self, batch: dict[str, np.ndarray], priority: int, deadline: float | None) -> None:
        self.batch = batch
        self.rows = batch_rows(batch)
        # Only requests whose inputs agree beyond the batch dimension can share a model call.
        self.key = tuple([(k, v.dtype.str, v.shape[1:]) for k, v in batch.items()])
        self.priority = priority
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.cancelled = False
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Prediction | None = None
        self._error: BaseException | None = None
        self._callback: Any = None

    def done(self) -> bool:
        return self._value is not None or self._error is not None

    def set_result(self, value: Prediction) -> None:
        if self._error is None and self._value is None:  # the watchdog may have answered first
            self._value = value
            self._finish()

    def set_exception(self, error: BaseException) -> None:
        if self._error is None and self._value is None:
            self._error = error
            self._finish()

    def _finish(self) -> None:
        try:
            self._done.release()
        except RuntimeError:  # answered twice in a race with the watchdog: the first answer stands
            return
        cb = self._callback
        if cb is not None:
            cb(self)

    def on_done(self, callback: Any) -> None:
        """Call ``callback(ticket)`` once answered (at once if it already is), from the answering thread."""
        self._callback = callback
        if self.done() and self.wait(0):
            callback(self)

    def wait(self, timeout: float | None = None) -> bool:
        """True once answered; False if ``timeout`` seconds passed first."""
        if self._done.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._done.release()  # stay 'done' for any later wait()
            return True
        return False

    def result(self, timeout: float | None = None) -> Prediction:
        """The Prediction (or its error raised); TimeoutError if not answered within ``timeout``."""
        if not self.wait(timeout):
            raise TimeoutError("the request is still queued or running")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.wait(timeout):
            raise TimeoutError("the request is still queued or running")
        return self._error


class Batcher:
    """Groups concurrent ``predict`` calls into batches for ``inner`` (a Predictor itself).

    A batch closes when it holds ``max_batch_size`` rows or ``max_delay_ms`` after its first request
    arrived. Higher ``priority`` is served first (FIFO within a level); a request whose ``deadline``
    passes while it waits is dropped with DeadlineExceededError and never run; a full queue refuses
    new requests at once with OverloadedError (and a retry-after estimate).

    With ``adaptive_delay`` the batcher waits only for as many rows as the previous batch held (the
    load it has just seen), never longer than ``max_delay_ms``; a lone caller pays no delay at all.

    With ``timeout_s`` a watchdog fails a model call that runs longer with ModelTimeoutError (so a
    Fallback can answer) and starts a replacement worker, without a thread hand-off per batch; once
    ``max_stuck`` calls hang, requests fail at once until one returns.

    When nothing is queued, no model call is running and no request had to queue in the last few
    batch delays, a request to a terminable model (an ORT engine) skips the queue and runs on the
    caller's thread (no other request could join its batch); so does every request, while nothing is
    queued, to a model whose calls cost less CPU than the hand-off (batching cannot pay for itself);
    its timeout is then enforced by a :class:`Watchdog` that stops the call. Requests that arrive
    meanwhile queue and batch as usual.
    """

    def __init__(
        self,
        inner: Predictor,
        config: BatcherConfig | None = None,
        *,
        metrics: RuntimeMetrics | None = None,
        adaptive_delay: bool = True,
        timeout_s: float | None = None,
        max_stuck: int = 4,
        threads_per_call: int = 1,
    ) -> None:
        self.inner = inner
        self.config = config or BatcherConfig()
        self.workers = self.config.workers or auto_workers(threads_per_call)
        self._metrics = metrics
        self._adaptive = adaptive_delay
        fixed = inner.metadata.max_batch_size
        self._max_rows = self.config.max_batch_size
        if fixed is not None and self.config.fixed_batch == "split":
            self._max_rows = min(self._max_rows, fixed)
        self._delay = self.config.max_delay_ms / 1000.0
        self._heap: list[tuple[int, int, Ticket]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()  # entering the raw lock is cheaper than the Condition
        self._cond = threading.Condition(self._lock)
        self._busy = 0  # model calls running or being assembled (inline and workers)
        self._queued_at = float("-inf")  # when a request last had to queue
        # how long after a queued request lone requests still queue (others are likely to join them)
        self._quiet_s = max(4 * self._delay, 0.005)
        self._inline_calls = 0
        self._inline = is_terminable(inner)
        # least CPU time seen for a one-row call alone (sampled): measured here first where the engine allows
        self._solo_cpu_s = _solo_cpu(inner) if self._inline else float("inf")
        self._inline_watchdog = (
            Watchdog(inner, timeout_s, name="edgefleet-inline-watchdog")
            if self._inline and timeout_s is not None
            else None
        )
        self._idle = 0  # workers waiting for work: only then does submit() pay for a notify
        self._closed = False
        self._last_rows = 1
        self._batch_s = 0.0  # moving average of one model call, for retry-after estimates
        self._tier = inner.metadata.tier
        self.timeout_s = timeout_s
        self.max_stuck = max_stuck
        self._running: dict[int, tuple[float, list[Ticket]]] = {}  # worker id -> (start, its batch)
        self._stuck: set[int] = set()
        self._ids = itertools.count()
        self._workers: list[threading.Thread] = []
        self._active = self.workers  # workers not stuck in a model call
        for _ in range(self.workers):
            self._spawn()
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        if timeout_s is not None:
            self._watchdog = threading.Thread(
                target=self._watch, name="edgefleet-batcher-watchdog", daemon=True
            )
            self._watchdog.start()

    def set_max_delay(self, ms: float | None) -> None:
        """Wait up to ``ms`` to fill a batch from now on (None: the configured ``max_delay_ms``); the
        device's power policy widens it to trade latency for fewer, fuller model calls."""
        delay = (self.config.max_delay_ms if ms is None else ms) / 1000.0
        with self._lock:
            self._delay = delay
            self._quiet_s = max(4 * delay, 0.005)

    @property
    def max_delay_ms(self) -> float:
        return self._delay * 1000.0

    def _spawn(self) -> None:
        self._workers = [t for t in self._workers if t.is_alive()]
        wid = next(self._ids)
        t = threading.Thread(target=self._loop, args=(wid,), name=f"edgefleet-batcher-{wid}", daemon=True)
        self._workers.append(t)
        t.start()

    @property
    def stuck(self) -> int:
        """Model calls abandoned by the watchdog that have not returned yet."""
        return len(self._stuck)

    def _hung_error(self) -> ModelTimeoutError:
        return ModelTimeoutError(
            f"model {self.inner.metadata.name} is hung: {len(self._stuck)} calls have not returned",
            hint="the runtime falls back until the model recovers or is swapped",
            tier=self._tier,
        )

    def _watch(self) -> None:
        assert self.timeout_s is not None
        period = min(self.timeout_s / 4, 0.05)
        while True:
            hung: list[list[Ticket]] = []
            drop: list[Ticket] = []
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                for wid, (t0, batch) in list(self._running.items()):
                    if wid not in self._stuck and now - t0 > self.timeout_s:
                        self._stuck.add(wid)
                        self._active -= 1
                        hung.append(batch)
                        if len(self._stuck) < self.max_stuck:
                            self._active += 1
                            self._spawn()  # keep the queue moving while the hung call lingers
                if len(self._stuck) >= self.max_stuck:
                    drop = [item[2] for item in self._heap]
                    self._heap.clear()
            if hung:
                log.warning("model call exceeded %.0f ms; %d stuck", self.timeout_s * 1000, len(self._stuck))
            for batch in hung:
                err = ModelTimeoutError(
                    f"model {self.inner.metadata.name} did not answer within {self.timeout_s * 1000:.0f} ms",
                    hint="raise EDGEFLEET_FALLBACK_TIMEOUT_MS or configure a backup model",
                    tier=self._tier,
                )
                for t in batch:
                    t.set_exception(err)
            if drop:
                err = self._hung_error()
                for t in drop:
                    t.set_exception(err)
            self._stop.wait(period)  # not on _cond: a notify() meant for a worker must reach it

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
    ) -> Ticket:
        """Queue ``batch`` and return its Ticket (``.result(timeout)``) without waiting."""
        if deadline is not None:
            check_deadline(deadline, "before it was queued")
        ticket = Ticket(batch, int(priority), deadline)
        with self._cond:
            if self._closed:
                raise InferenceError("the batcher is closed", hint="the runtime is shutting down; retry")
            if self._stuck and len(self._stuck) >= self.max_stuck:
                raise self._hung_error()
            if len(self._heap) >= self.config.max_queue:
                retry = self._retry_after()
                if self._metrics:
                    self._metrics.rejected.labels("overloaded").inc()
                raise OverloadedError(
                    f"request queue is full ({self.config.max_queue} waiting)",
                    hint=f"retry after {retry:.2f} s, or raise EDGEFLEET_BATCHER_MAX_QUEUE",
                    retry_after=retry,
                )
            heapq.heappush(self._heap, (-ticket.priority, next(self._seq), ticket))
            self._queued_at = ticket.enqueued
            if self._idle:
                self._cond.notify()
        return ticket

    def try_inline(
        self,
        batch: dict[str, np.ndarray],
        priority: int = Priority.NORMAL,
        deadline: float | None = None,
        *,
        cheap_only: bool = False,
    ) -> Prediction | None:
        """Answer ``batch`` on this thread when no queued request could share its model call (see the
        class notes); None, without waiting, when it has to queue. ``cheap_only``: only for a model
        whose calls cost less than a hand-off (an event loop may run those itself).
        """
        if not self._inline:
            return None
        now = time.monotonic()
        if deadline is not None and (self.timeout_s is None or deadline - now <= self.timeout_s):
            return None
        rows = batch_rows(batch)
        solo = self._solo_cpu_s
        cheap = solo < _CHEAP_CALL_S and solo * rows < _CHEAP_CALL_S
        with self._lock:
            if (
                self._heap
                or self._closed
                or self._stuck
                or not (
                    # a model call cheaper than a hand-off: batching cannot pay, run it here
                    cheap
                    # nothing running, and no request queued a moment ago (more would follow)
                    or (not cheap_only and not self._busy and now - self._queued_at > self._quiet_s)
                )
            ):
                return None
            self._busy += 1
        if self._metrics:
            self._metrics.batch(rows)
        cpu0 = None
        if rows == 1:
            self._inline_calls += 1
            # every 16th one-row call: this thread's CPU time for it (waits for the GIL do not count)
            if self._inline_calls % 16 == 1:
                cpu0 = time.thread_time()
        try:
            if self._inline_watchdog is not None:
                out = self._inline_watchdog.call(batch, {"priority": priority, "deadline": deadline})
            else:
                try:
                    out = self.inner.predict(batch, priority=priority, deadline=deadline)
                except EdgefleetError:
                    raise
                except Exception as e:
                    raise InferenceError(f"model call failed: {e}", hint="see the log") from e
        finally:
            took = time.monotonic() - now
            if cpu0 is not None:
                # the least seen: contention (cache misses, context switches) only ever adds to it
                self._solo_cpu_s = min(self._solo_cpu_s, time.thread_time() - cpu0)
            with self._lock:
                self._busy -= 1
                self._batch_s = 0.8 * self._batch_s + 0.2 * took
        return as_prediction(out, self._tier, rows)

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        deadline = opts.get("deadline")
        if self._inline:
            out = self.try_inline(batch, opts.get("priority", Priority.NORMAL), deadline)
            if out is not None:
                return out
        return self.queued(batch, opts.get("priority", Priority.NORMAL), deadline)

    def queued(self, batch: dict[str, np.ndarray], priority: int, deadline: float | None) -> Prediction:
        """Queue ``batch`` for a worker and wait for its answer (``predict`` when it cannot run inline)."""
        ticket = self.submit(batch, priority=priority, deadline=deadline)
        if ticket.wait(None if deadline is None else deadline - time.monotonic()):
            return ticket.result()
        self.cancel(ticket)
        if ticket.wait(0):
            return ticket.result()  # finished in the instant between the timeout and the cancel
        raise DeadlineExceededError(
            "request deadline passed while it waited for the model",
            hint="send a longer deadline, or lower the load on this device",
        )

    def cancel(self, ticket: Ticket) -> None:
        """Give up on ``ticket``: skipped if still queued, its answer discarded if running."""
        with self._cond:
            ticket.cancelled = True

    def _retry_after(self) -> float:
        batches_ahead = len(self._heap) / max(1, self._max_rows) / self.workers
        return round(min(30.0, max(0.05, batches_ahead * max(self._batch_s, self._delay))), 3)

    # --- workers ----------------------------------------------------------------------------------

    def _take(self) -> list[Ticket] | None:
        """Wait for work and return the next batch (None when closed and drained)."""
        with self._cond:
            while True:
                while not self._heap and not self._closed:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if not self._heap:
                    return None
                first = self._pop_live()
                if first is not None:
                    self._busy += 1  # until its batch has run (see _loop)
                    break
            batch = [first]
            rows = first.rows
            target = self._max_rows
            if self._adaptive:
                target = min(target, max(self._last_rows, 1))
            close_at = first.enqueued + self._delay
            while rows < self._max_rows:
                held: list[tuple[int, int, Ticket]] = []
                while self._heap and rows < self._max_rows:
                    item = heapq.heappop(self._heap)
                    t = item[2]
                    if t.cancelled:
                        continue
                    if t.key != first.key or rows + t.rows > self._max_rows:
                        held.append(item)
                        continue
                    if self._expired(t):
                        continue
                    batch.append(t)
                    rows += t.rows
                for item in held:
                    heapq.heappush(self._heap, item)
                if held or rows >= target or self._closed:
                    break  # full enough, or what is left cannot join this batch
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._idle += 1
                self._cond.wait(left)
                self._idle -= 1
            self._last_rows = rows
            if self._metrics:
                self._metrics.queue_depth.set(len(self._heap))
            return batch

    def _pop_live(self) -> Ticket | None:
        while self._heap:
            t = heapq.heappop(self._heap)[2]
            if not t.cancelled and not self._expired(t):
                return t
        return None

    def _expired(self, t: Ticket) -> bool:
        if t.deadline is not None and time.monotonic() >= t.deadline:
            if self._metrics:
                self._metrics.rejected.labels("deadline").inc()
            t.set_exception(
                DeadlineExceededError(
                    "request deadline passed while it was queued; it was not run",
                    hint="send a longer deadline, or lower the load on this device",
                )
            )
            return True
        return False

    def _loop(self, wid: int) -> None:
        watched = self.timeout_s is not None
        while True:
            batch = self._take()
            if batch is None:
                return
            if watched:
                with self._cond:
                    self._running[wid] = (time.monotonic(), batch)
            try:
                self._run(batch)
            except BaseException as e:  # never let a worker die with callers waiting
                log.exception("batcher worker error")
                for t in batch:
                    t.set_exception(InferenceError(f"batcher failed: {e}"))
            finally:
                with self._lock:
                    self._busy -= 1
            if watched and self._retire(wid):
                return  # replaced while it hung: the replacement serves on

    def _retire(self, wid: int) -> bool:
        """After a model call: True when this worker was replaced while it hung and should exit."""
        with self._cond:
            self._running.pop(wid, None)
            if wid not in self._stuck:
                return False
            self._stuck.discard(wid)
            if self._active >= self.workers:
                return True
            self._active += 1
            return False

    def _run(self, batch: list[Ticket]) -> None:
        n = len(batch)
        if n == 1:
            only = batch[0]
            inputs, rows = only.batch, only.rows
            priority, deadline = only.priority, only.deadline
        else:
            inputs = {k: np.concatenate([t.batch[k] for t in batch]) for k in batch[0].batch}
            rows = sum(t.rows for t in batch)
            priority = max(t.priority for t in batch)
            deadlines = [t.deadline for t in batch if t.deadline is not None]
            # the latest deadline: an earlier one's caller stops waiting on its own
            deadline = max(deadlines) if len(deadlines) == n else None
        if self._metrics:
            self._metrics.batch(rows)
        cpu0 = None
        if rows == 1 and self._inline:
            self._inline_calls += 1
            if self._inline_calls % 16 == 1:  # sampled as in try_inline: what one row costs alone
                cpu0 = time.thread_time()
        t0 = time.monotonic()
        try:
            out = as_prediction(
                self.inner.predict(inputs, priority=priority, deadline=deadline), self._tier, rows
            )
            if cpu0 is not None:
                self._solo_cpu_s = min(self._solo_cpu_s, time.thread_time() - cpu0)
        except Exception as e:
            err = (
                e
                if isinstance(e, EdgefleetError)
                else InferenceError(f"model call failed: {e}", hint="see the log")
            )
            for t in batch:
                t.set_exception(err)
            return
        finally:
            self._batch_s = 0.8 * self._batch_s + 0.2 * (time.monotonic() - t0)
        if n == 1:
            batch[0].set_result(out)
            return
        offset = 0
        items = list(out.items())
        for t in batch:
            end = offset + t.rows
            part = {k: (v[offset:end] if v.ndim and v.shape[0] == rows else v) for k, v in items}
            t.set_result(Prediction(part, tiers=out.tiers[offset:end], events=out.events))
            offset = end

    def close(self) -> None:
        """Stop taking requests, answer the queued ones, stop the workers; then close ``inner``."""
        self._stop.set()
        if self._inline_watchdog is not None:
            self._inline_watchdog.close()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            stuck = len(self._stuck)
        for t in list(self._workers):
            if t is not threading.current_thread():
                # a hung model call never returns; do not wait for it beyond its timeout
                t.join(None if not stuck else (self.timeout_s or 1.0))
        self.inner.close()
