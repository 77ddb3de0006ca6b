"""Model-call timeouts without a thread hand-off: the call runs on the caller's thread, a watchdog ends it.

A predictor that can be stopped from another thread says so with ``terminable = True`` and accepts a
``run_options`` keyword (an object with a ``terminate`` attribute, made by its ``run_options()``):
:class:`~edgefleet.runtime.OrtEngine` passes it to ONNX Runtime, whose ``RunOptions.terminate`` makes
the running call raise between two operators. :class:`Watchdog` keeps the calls in flight in a dict
(registering and finishing a call is one dict store and one pop, no lock) and a single polling thread
sets ``terminate`` on any call that outlives its deadline. Predictors that cannot be stopped keep the
hand-off to a worker thread (the batcher's or the ``Timeout`` guard's pool), so a hung call never holds
its caller past the deadline either way.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

from edgefleet.errors import EdgefleetError, InferenceError, ModelTimeoutError

__all__ = ["Watchdog", "is_terminable"]

log = logging.getLogger(__name__)


def is_terminable(p: Any) -> bool:
    """Whether ``p`` can be stopped mid-call through ``run_options`` (e.g. an ORT engine)."""
    return getattr(p, "terminable", False) is True and callable(getattr(p, "run_options", None))


class Watchdog:
    """Runs terminable model calls on the caller's thread and stops those that outlive ``timeout_s``."""

    def __init__(self, inner: Any, timeout_s: float, *, name: str = "edgefleet-watchdog") -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self.period = min(timeout_s / 4, 0.05)
        self._calls: dict[int, tuple[float, Any]] = {}
        self._ids = itertools.count()
        self._local = threading.local()  # one reusable RunOptions per calling thread
        self._stop = threading.Event()
        self._name = name
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.terminated = 0  # calls stopped by the watchdog
        self._answer = getattr(inner, "answer", None)  # OrtEngine.answer: predict without keywords

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._watch, name=self._name, daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.period):
            if not self._calls:
                continue
            now = time.monotonic()
            for token, (expires, options) in list(self._calls.items()):
                # pop first: whoever pops the entry (the caller or this thread) owns its outcome
                if now >= expires and self._calls.pop(token, None) is not None:
                    options.terminate = True
                    self.terminated += 1

    def call(self, batch: dict[str, Any], opts: dict[str, Any]) -> Any:
        """``inner.predict(batch, **opts)`` on this thread; ModelTimeoutError if the watchdog stopped it.

        A predictor with ``answer(batch, run_options, deadline)`` (an OrtEngine: the other options do not
        concern it) is called that way, without building keyword arguments.
        """
        if self._thread is None:
            self._ensure_thread()
        options = getattr(self._local, "options", None)
        if options is None:
            options = self._local.options = self.inner.run_options()
        token = next(self._ids)
        self._calls[token] = (time.monotonic() + self.timeout_s, options)
        try:
            answer = self._answer
            if answer is not None:
                out = answer(batch, options, opts.get("deadline"))
            else:
                out = self.inner.predict(batch, run_options=options, **opts)
        except BaseException as e:
            if self._calls.pop(token, None) is None:  # the watchdog stopped it: that is a timeout
                self._local.options = None  # its terminate flag is set; the next call takes a fresh one
                raise self._timeout() from None
            if isinstance(e, EdgefleetError) or not isinstance(e, Exception):
                raise
            raise InferenceError(f"model call failed: {e}", hint="see the log") from e
        if self._calls.pop(token, None) is None:
            # stopped in the instant after it answered: the answer stands; drop the flagged options
            self._local.options = None
        return out

    def _timeout(self) -> ModelTimeoutError:
        meta = self.inner.metadata
        log.warning("model call exceeded %.0f ms; stopped", self.timeout_s * 1000)
        return ModelTimeoutError(
            f"model {meta.name} did not answer within {self.timeout_s * 1000:.0f} ms",
            hint="raise EDGEFLEET_FALLBACK_TIMEOUT_MS or configure a backup model",
            tier=meta.tier,
        )

    def close(self) -> None:
        """Stop the watchdog thread (calls still running finish unwatched)."""
        self._stop.set()
