"""Boundary tests for the batcher's limits: the queue bound, the batch size, expiry when a request is popped.

Every test that blocks the worker on a gate releases it in ``finally`` and every wait has a timeout, so a
regression fails fast instead of hanging the run.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import DeadlineExceededError, OverloadedError
from edgefleet.runtime import BatcherConfig, OrtEngine
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._predictor import deadline_in

pytestmark = pytest.mark.timeout(120)

FEW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def engine(digits_mlp):
    """The model's path: every batcher gets its own engine (closing a batcher closes its model)."""
    return digits_mlp


class _Blocked:
    """A batcher whose only worker is stuck in a model call until ``release()``."""

    def __init__(self, engine, doubles, x, **cfg):
        self.gate = doubles.Gate(OrtEngine(engine))
        self.b = Batcher(self.gate, BatcherConfig(workers=1, **cfg))
        self.first = self.b.submit({"input": x[:1]})
        if not self.gate.entered.wait(5):
            self.close()
            raise AssertionError("the worker never reached the model")

    def close(self):
        self.gate.release()
        self.b.close()


def _marked(value: float) -> np.ndarray:
    return np.full((1, 64), value, dtype=np.float32)


def _seen(gate, arr) -> bool:
    return any(any(np.array_equal(row, arr[0]) for row in c["input"]) for c in gate.calls)


@FEW
@given(max_queue=st.integers(1, 6))
def test_queue_holds_exactly_max_queue_requests(engine, doubles, x_test, max_queue):
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=1, max_delay_ms=0, max_queue=max_queue)
    try:
        queued = [blocked.b.submit({"input": x_test[i : i + 1]}) for i in range(1, max_queue + 1)]
        assert blocked.b.queue_depth == max_queue
        with pytest.raises(OverloadedError, match=f"queue is full \\({max_queue} waiting\\)") as e:
            blocked.b.submit({"input": x_test[:1]})
        assert 0.05 <= e.value.retry_after <= 30
    finally:
        blocked.close()
    assert all(t.result(5)["label"].shape == (1,) for t in queued)
    assert blocked.first.result(5)["label"].shape == (1,)


def test_a_full_queue_refuses_and_its_expired_request_is_still_answered(engine, doubles, x_test):
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=1, max_delay_ms=0, max_queue=1)
    try:
        t = blocked.b.submit({"input": x_test[1:2]}, deadline=deadline_in(0.05))
        with pytest.raises(OverloadedError):
            blocked.b.submit({"input": x_test[2:3]})
        time.sleep(0.1)
    finally:
        blocked.close()
    assert isinstance(t.exception(5), DeadlineExceededError)


def test_expired_request_is_dropped_when_popped_without_the_caller_cancelling(engine, doubles, x_test):
    """submit() (not predict()): nobody cancels the ticket; the worker itself must refuse to run it."""
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=1, max_delay_ms=0)
    marker = _marked(0.25)
    try:
        late = blocked.b.submit({"input": marker}, deadline=deadline_in(0.05))
        time.sleep(0.15)
        assert not late.done()  # still queued: the worker is blocked
    finally:
        blocked.close()
    err = late.exception(5)
    assert isinstance(err, DeadlineExceededError) and "was not run" in str(err)
    assert not _seen(blocked.gate, marker)


def test_expired_request_is_dropped_while_a_batch_is_filled(engine, doubles, x_test):
    """The first request of the batch is live; an expired one behind it must not join the batch."""
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=8, max_delay_ms=0)
    marker = _marked(0.75)
    try:
        live = blocked.b.submit({"input": x_test[1:2]})
        late = blocked.b.submit({"input": marker}, deadline=deadline_in(0.05))
        also_live = blocked.b.submit({"input": x_test[2:3]})
        time.sleep(0.15)
    finally:
        blocked.close()
    assert live.result(5)["label"].shape == (1,)
    assert also_live.result(5)["label"].shape == (1,)
    assert isinstance(late.exception(5), DeadlineExceededError)
    assert not _seen(blocked.gate, marker)


def test_request_with_a_deadline_still_ahead_is_run(engine, doubles, x_test):
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=1, max_delay_ms=0)
    try:
        t = blocked.b.submit({"input": x_test[1:2]}, deadline=deadline_in(30))
    finally:
        blocked.close()
    assert t.result(5)["label"].shape == (1,)


@FEW
@given(size=st.integers(1, 6))
def test_batches_hold_at_most_max_batch_size_rows(engine, doubles, x_test, size):
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=size, max_delay_ms=0)
    try:
        tickets = [blocked.b.submit({"input": x_test[i : i + 1]}) for i in range(1, size + 2)]
        while blocked.b.queue_depth < size + 1:
            time.sleep(0.001)
    finally:
        blocked.close()
    for t in tickets:
        assert t.result(5)["label"].shape == (1,)
    sizes = [len(c["input"]) for c in blocked.gate.calls]
    assert sizes == [1, size, 1]  # the queued rows fill one batch exactly, the extra one waits


def test_a_request_that_would_overflow_the_batch_waits_for_the_next(engine, doubles, x_test):
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=4, max_delay_ms=0)
    try:
        a = blocked.b.submit({"input": x_test[1:4]})  # 3 rows
        b = blocked.b.submit({"input": x_test[4:6]})  # 2 rows: 3 + 2 > 4
        c = blocked.b.submit({"input": x_test[6:7]})  # 1 row: 3 + 1 == 4 joins
    finally:
        blocked.close()
    assert [len(t.result(5)["label"]) for t in (a, b, c)] == [3, 2, 1]
    assert [len(call["input"]) for call in blocked.gate.calls] == [1, 4, 2]


def test_an_oversized_request_runs_alone(engine, doubles, x_test):
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=2, max_delay_ms=0)
    try:
        big = blocked.b.submit({"input": x_test[1:6]})
        small = blocked.b.submit({"input": x_test[6:7]})
    finally:
        blocked.close()
    assert len(big.result(5)["label"]) == 5 and len(small.result(5)["label"]) == 1
    assert [len(call["input"]) for call in blocked.gate.calls] == [1, 5, 1]


def test_cancelled_request_is_skipped(engine, doubles, x_test):
    blocked = _Blocked(engine, doubles, x_test, max_batch_size=1, max_delay_ms=0)
    marker = _marked(0.5)
    try:
        t = blocked.b.submit({"input": marker})
        blocked.b.cancel(t)
        other = blocked.b.submit({"input": x_test[2:3]})
    finally:
        blocked.close()
    assert other.result(5)["label"].shape == (1,)
    assert not _seen(blocked.gate, marker)


def test_gate_is_released_even_when_the_body_fails(engine, doubles, x_test):
    """The helper's own contract: a failing body cannot leave a worker blocked (close() would hang)."""
    done = threading.Event()
    with pytest.raises(ZeroDivisionError):
        blocked = _Blocked(engine, doubles, x_test, max_batch_size=1, max_delay_ms=0)
        try:
            1 / 0  # noqa: B018
        finally:
            blocked.close()
            done.set()
    assert done.is_set() and blocked.first.result(5)["label"].shape == (1,)


def test_max_delay_holds_a_batch_open_for_a_late_arrival(engine, doubles, x_test):
    rec = doubles.Recording(OrtEngine(engine))
    b = Batcher(rec, BatcherConfig(max_batch_size=4, max_delay_ms=400), adaptive_delay=False)
    try:
        first = b.submit({"input": x_test[:1]})
        time.sleep(0.05)  # well inside the 400 ms the first request's batch stays open
        second = b.submit({"input": x_test[1:2]})
        assert first.result(5)["label"].shape == (1,) and second.result(5)["label"].shape == (1,)
    finally:
        b.close()
    assert [len(c["input"]) for c in rec.calls] == [2]


def test_hung_calls_never_hold_more_than_max_stuck_threads(engine, doubles, x_test):
    before = set(threading.enumerate())
    gate = doubles.Gate(OrtEngine(engine))
    b = Batcher(gate, BatcherConfig(max_batch_size=1, max_delay_ms=0), timeout_s=0.1, max_stuck=2)
    try:
        for _ in range(2):
            t = b.submit({"input": x_test[:1]})
            assert t.exception(5) is not None  # timed out by the watchdog
        assert b.stuck == 2
        workers = [
            t
            for t in set(threading.enumerate()) - before
            if t.name.startswith("edgefleet-batcher-") and t.name.rsplit("-", 1)[1].isdigit()
        ]
        assert len(workers) == 2, sorted(t.name for t in workers)  # both hung; no third one spawned
    finally:
        gate.release()
        b.close()


def test_outputs_that_are_not_per_row_go_whole_to_every_request(engine, doubles, x_test):
    from edgefleet.runtime import Prediction

    class WithVocabulary(doubles.Gate):
        def predict(self, batch, **opts):
            out = super().predict(batch, **opts)
            return Prediction({**out, "vocabulary": np.arange(10)}, tiers=out.tiers, events=out.events)

    gate = WithVocabulary(OrtEngine(engine))
    b = Batcher(gate, BatcherConfig(workers=1, max_batch_size=4, max_delay_ms=0))
    try:
        first = b.submit({"input": x_test[:1]})
        assert gate.entered.wait(5)
        a = b.submit({"input": x_test[1:3]})  # 2 rows
        c = b.submit({"input": x_test[3:4]})  # 1 row: batched with a (3 rows in all)
    finally:
        gate.release()
        b.close()
    assert [len(call["input"]) for call in gate.calls] == [1, 3]
    for t, rows in ((first, 1), (a, 2), (c, 1)):
        out = t.result(5)
        assert len(out["label"]) == rows and len(out.tiers) == rows
        assert out["vocabulary"].tolist() == list(range(10))


def test_a_ticket_keeps_its_first_answer(engine, x_test):
    from edgefleet.errors import ModelTimeoutError
    from edgefleet.runtime import Prediction
    from edgefleet.runtime._batcher import Ticket

    answer = Prediction({"label": np.array([1])}, tiers=("primary",))
    late = ModelTimeoutError("too late", hint="the watchdog answered after the model")
    t = Ticket({"input": x_test[:1]}, 0, None)
    t.set_result(answer)
    t.set_exception(late)  # the watchdog fires after the answer: the answer stands
    assert t.result(0) is answer and t.exception(0) is None
    t2 = Ticket({"input": x_test[:1]}, 0, None)
    t2.set_exception(late)
    t2.set_result(answer)  # the model returns after the watchdog failed the call: the failure stands
    with pytest.raises(ModelTimeoutError):
        t2.result(0)


def test_split_policy_on_a_dynamic_batch_model_batches_normally(engine, doubles, x_test):
    gate = doubles.Gate(OrtEngine(engine))
    b = Batcher(gate, BatcherConfig(workers=1, max_batch_size=8, max_delay_ms=0, fixed_batch="split"))
    try:
        first = b.submit({"input": x_test[:1]})
        assert gate.entered.wait(5)
        rest = [b.submit({"input": x_test[i : i + 1]}) for i in range(1, 4)]
    finally:
        gate.release()
        b.close()
    assert all(t.result(5)["label"].shape == (1,) for t in [first, *rest])
    assert [len(c["input"]) for c in gate.calls] == [1, 3]


class _HangOnce:
    """A model whose first call hangs until ``release()``; every later call answers at once."""

    def __init__(self, inner):
        self.inner, self.open, self.calls = inner, threading.Event(), 0

    @property
    def metadata(self):
        return self.inner.metadata

    def predict(self, batch, **opts):
        self.calls += 1
        if self.calls == 1:
            self.open.wait(30)
        return self.inner.predict(batch, **opts)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("max_stuck", [1, 2])
def test_queued_requests_are_dropped_only_once_max_stuck_calls_hang(engine, x_test, max_stuck):
    from edgefleet.errors import ModelTimeoutError

    model = _HangOnce(OrtEngine(engine))
    b = Batcher(model, BatcherConfig(max_batch_size=1, max_delay_ms=0), timeout_s=0.1, max_stuck=max_stuck)
    try:
        hung = b.submit({"input": x_test[:1]})
        queued = b.submit({"input": x_test[1:2]})
        assert isinstance(hung.exception(5), ModelTimeoutError)
        if max_stuck == 1:  # no worker left: the queue fails at once instead of waiting forever
            with pytest.raises(ModelTimeoutError, match="hung"):
                queued.result(5)
        else:  # a replacement worker serves the queue while the hung call lingers
            assert queued.result(5)["label"].shape == (1,)
    finally:
        model.open.set()
        b.close()


def test_a_lone_request_pays_no_batching_delay(engine, doubles, x_test):
    """Adaptive delay: the batch closes as soon as it holds what the last one did, not after max_delay."""
    rec = doubles.Recording(OrtEngine(engine))
    b = Batcher(rec, BatcherConfig(max_batch_size=8, max_delay_ms=3000))
    try:
        for i in range(3):
            t0 = time.monotonic()
            assert b.submit({"input": x_test[i : i + 1]}).result(10)["label"].shape == (1,)
            assert time.monotonic() - t0 < 1.5  # far under the 3 s a batch may stay open
    finally:
        b.close()


@pytest.mark.parametrize(
    ("cores", "threads_per_call", "expected"),
    [(1, 1, 1), (2, 1, 2), (4, 1, 4), (16, 1, 4), (4, 2, 2), (2, 4, 1), (8, 0, 1)],
)
def test_batch_workers_by_default_follow_the_usable_cores(monkeypatch, cores, threads_per_call, expected):
    from edgefleet.runtime import _batcher

    monkeypatch.setattr(_batcher.os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert _batcher.auto_workers(threads_per_call) == expected


def test_workers_0_runs_two_batches_at_once_on_two_cores(monkeypatch, engine, doubles, x_test):
    """Batched calls are compute-bound: with one worker a second core stays idle while callers wait."""
    from edgefleet.runtime import _batcher

    monkeypatch.setattr(_batcher.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    gate = doubles.Gate(OrtEngine(engine))
    b = Batcher(gate, BatcherConfig(workers=0, max_batch_size=1, max_delay_ms=0))
    try:
        assert b.workers == 2
        tickets = [b.submit({"input": x_test[i : i + 1]}) for i in range(3)]
        deadline = time.monotonic() + 30
        while gate.entries < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.entries == 2, "a second batch did not start while the first was running"
    finally:
        gate.release()
    assert [t.result(10)["label"].shape for t in tickets] == [(1,)] * 3
    b.close()
