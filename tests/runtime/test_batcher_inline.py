"""The batcher's inline path keeps its books: lone requests keep running on their callers' threads, and a
call in progress sends the next request to the queue (issue 18: a mutant of this accounting survived)."""

from __future__ import annotations

import threading
import time

import numpy as np

from edgefleet.runtime import BatcherConfig, OrtEngine
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._predictor import batch_rows


class _CostlyEngine:
    """A terminable engine whose calls cost ~1 ms of CPU (not "cheaper than a hand-off") and can be held."""

    terminable = True

    def __init__(self, inner: OrtEngine) -> None:
        self.inner = inner
        self.hold = threading.Event()
        self.hold.set()
        self.threads: list[str] = []
        self.lock = threading.Lock()

    @property
    def metadata(self):
        return self.inner.metadata

    def run_options(self):
        return self.inner.run_options()

    def predict(self, batch, **opts):
        with self.lock:
            self.threads.append(threading.current_thread().name)
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.001:  # CPU, not sleep: the batcher samples thread CPU time
            pass
        self.hold.wait(30)
        return self.inner.predict(batch, **opts)

    def close(self) -> None:
        self.inner.close()


def _until(cond, what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.002)


def test_lone_requests_stay_inline_and_a_running_call_queues_the_next(digits_mlp):
    eng = _CostlyEngine(OrtEngine(digits_mlp))
    b = Batcher(eng, BatcherConfig(max_batch_size=8, max_delay_ms=1))
    x = {"input": np.zeros((1, 64), dtype=np.float32)}
    me = threading.current_thread().name
    threads: list[threading.Thread] = []
    try:
        for _ in range(5):  # one after another, each alone: every one runs on this thread
            time.sleep(0.05)  # past the quiet time after any queued request
            out = b.predict(x)
            assert out["probabilities"].shape == (1, 10)
        assert eng.threads == [me] * 5, eng.threads

        eng.hold.clear()
        first = threading.Thread(target=b.predict, args=(x,), name="first-caller")
        first.start()
        threads.append(first)
        _until(lambda: len(eng.threads) == 6, "the first call to start")
        assert eng.threads[5] == "first-caller"  # alone: inline
        second = threading.Thread(target=b.predict, args=(x,), name="second-caller")
        second.start()
        threads.append(second)
        _until(lambda: len(eng.threads) == 7, "the second call to start")
        assert eng.threads[6].startswith("edgefleet-batcher"), eng.threads  # a call was running: queued
        eng.hold.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)

        time.sleep(0.05)  # both done, the queue quiet again: back on the caller's thread
        b.predict(x)
        assert eng.threads[-1] == me, eng.threads
    finally:
        eng.hold.set()
        for t in threads:
            t.join(30)
        b.close()


def test_a_cheap_model_runs_inline_even_when_load_arrives_all_at_once(digits_mlp, x_test):
    """The batcher times a one-row call on zeros when it starts: a model cheaper than a hand-off then runs
    on its callers' threads from the first request, with no quiet moment needed to learn its cost (eight
    callers starting together used to queue and batch behind the first call)."""
    eng = OrtEngine(digits_mlp)
    calls: list[tuple[int, str]] = []  # rows of each model call and the thread that made it
    real = eng.answer

    def answer(batch, options=None, deadline=None):
        calls.append((batch_rows(batch), threading.current_thread().name))
        return real(batch, options, deadline)

    eng.answer = answer  # the inline watchdog and OrtEngine.predict (the batch workers) both call it
    b = Batcher(eng, BatcherConfig(max_delay_ms=20), timeout_s=5.0)
    try:
        calls.clear()  # the batcher's own timing calls, on zeros
        barrier = threading.Barrier(8)
        answers: list[int] = []

        def client() -> None:
            barrier.wait()
            for j in range(30):
                answers.append(int(b.predict({"input": x_test[j : j + 1]})["label"][0]))

        threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 240
        assert len(calls) == 240 and {rows for rows, _ in calls} == {1}
        assert all(name.startswith("client-") for _, name in calls)  # no call went through a batch worker
    finally:
        b.close()
