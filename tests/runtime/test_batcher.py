"""The batcher: grouping, result routing, priorities, deadlines, bounded queue, shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgefleet.errors import DeadlineExceededError, InferenceError, ModelTimeoutError, OverloadedError
from edgefleet.runtime import BatcherConfig, OrtEngine, Priority
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import deadline_in


@pytest.fixture
def engine(digits_mlp):
    return OrtEngine(digits_mlp)


def test_concurrent_requests_share_model_calls_and_get_their_own_rows(engine, doubles, x_test):
    rec = doubles.Recording(engine)
    metrics = RuntimeMetrics()
    b = Batcher(rec, BatcherConfig(max_batch_size=16, max_delay_ms=20), metrics=metrics)
    n = 64
    want = engine.predict({"input": x_test[:n]})
    try:
        with ThreadPoolExecutor(32) as ex:
            outs = list(ex.map(lambda i: b.predict({"input": x_test[i : i + 1]}), range(n)))
    finally:
        b.close()
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out["probabilities"][0], want["probabilities"][i], rtol=1e-5, atol=1e-6)
        assert out["label"][0] == want["label"][i]
        assert out.tiers == ("primary",)
    sizes = [len(c["input"]) for c in rec.calls]
    assert sum(sizes) == n
    assert max(sizes) > 1 and len(rec.calls) < n  # requests were batched
    assert max(sizes) <= 16
    text = metrics.exposition().decode()
    assert "edgefleet_runtime_batch_size_count" in text


def test_multi_row_requests_are_split_back(engine, x_test):
    b = Batcher(engine, BatcherConfig(max_batch_size=32, max_delay_ms=30))
    sizes = [3, 1, 5, 2]
    offsets = np.cumsum([0] + sizes)
    want = engine.predict({"input": x_test[: offsets[-1]]})["label"]
    try:
        with ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(b.predict, {"input": x_test[offsets[i] : offsets[i + 1]]}) for i in range(4)]
            outs = [f.result() for f in futs]
    finally:
        b.close()
    for i, out in enumerate(outs):
        assert out["label"].tolist() == want[offsets[i] : offsets[i + 1]].tolist()


def test_urgent_requests_are_served_first(engine, doubles, x_test):
    gate = doubles.Gate(engine)
    b = Batcher(gate, BatcherConfig(max_batch_size=1, max_delay_ms=0))
    order: list[str] = []
    lock = threading.Lock()

    def call(tag: str, prio: int, i: int) -> None:
        b.predict({"input": x_test[i : i + 1]}, priority=prio)
        with lock:
            order.append(tag)

    try:
        first = threading.Thread(target=call, args=("first", Priority.NORMAL, 0))
        first.start()
        assert gate.entered.wait(5)  # the worker is now stuck on 'first'; the rest queue up
        threads = [threading.Thread(target=call, args=(f"low{i}", Priority.LOW, i + 1)) for i in range(3)] + [
            threading.Thread(target=call, args=("urgent", Priority.URGENT, 9))
        ]
        for t in threads:
            t.start()
            time.sleep(0.02)
        while b.queue_depth < 4:
            time.sleep(0.005)
        gate.release()
        for t in [first, *threads]:
            t.join(10)
    finally:
        gate.release()  # never leave the worker blocked: close() would wait for it
        b.close()
    assert sorted(order) == ["first", "low0", "low1", "low2", "urgent"]  # everyone was answered
    # The order the model ran them in (callers may wake up in any order after their answers).
    rows = {0: "first", 1: "low0", 2: "low1", 3: "low2", 9: "urgent"}
    served = [
        next(tag for i, tag in rows.items() if np.array_equal(call["input"][0], x_test[i]))
        for call in gate.calls
    ]
    assert served[0] == "first"
    assert served[1] == "urgent"
    assert sorted(served[2:]) == ["low0", "low1", "low2"]


def test_expired_requests_are_dropped_and_never_run(engine, doubles, x_test):
    gate = doubles.Gate(engine)
    b = Batcher(gate, BatcherConfig(max_batch_size=1, max_delay_ms=0))
    marker = np.full((1, 64), 0.5, dtype=np.float32)
    try:
        t = threading.Thread(target=b.predict, args=({"input": x_test[:1]},))
        t.start()
        assert gate.entered.wait(5)
        with pytest.raises(DeadlineExceededError) as e:
            b.predict({"input": marker}, deadline=deadline_in(0.05))
        assert e.value.status_code == 504 and e.value.hint
        gate.release()
        t.join(5)
        b.predict({"input": x_test[1:2]})  # the worker moved on past the expired request
    finally:
        gate.release()  # never leave the worker blocked: close() would wait for it
        b.close()
    assert not any(np.array_equal(c["input"], marker) for c in gate.calls)


def test_deadline_already_past_is_refused_at_once(engine, doubles, x_test):
    rec = doubles.Recording(engine)
    b = Batcher(rec)
    try:
        with pytest.raises(DeadlineExceededError):
            b.predict({"input": x_test[:1]}, deadline=time.monotonic() - 1)
    finally:
        b.close()
    assert rec.calls == []


def test_full_queue_is_an_immediate_overloaded_error(engine, doubles, x_test):
    gate = doubles.Gate(engine)
    b = Batcher(gate, BatcherConfig(max_batch_size=1, max_delay_ms=0, max_queue=3))
    try:
        running = threading.Thread(target=b.predict, args=({"input": x_test[:1]},))
        running.start()
        assert gate.entered.wait(5)
        futs = [b.submit({"input": x_test[i : i + 1]}) for i in range(1, 4)]
        t0 = time.monotonic()
        with pytest.raises(OverloadedError) as e:
            b.submit({"input": x_test[5:6]})
        assert time.monotonic() - t0 < 0.5
        assert e.value.status_code == 503 and e.value.retry_after > 0
        gate.release()
        running.join(5)
        assert all(f.result(5)["label"].shape == (1,) for f in futs)  # the queued ones still answered
    finally:
        gate.release()  # never leave the worker blocked: close() would wait for it
        b.close()


def test_requests_of_different_shapes_are_not_mixed(fixed_batch_model, rng):
    # A dynamic model would accept both; shapes [N,4] and [N,4] mix, a different trailing dim must not.
    from edgefleet.runtime import OrtEngine

    eng = OrtEngine(fixed_batch_model)
    ref = OrtEngine(fixed_batch_model)
    b = Batcher(eng, BatcherConfig(max_batch_size=8, max_delay_ms=20, fixed_batch="pad"))
    try:
        xs = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(6)]
        with ThreadPoolExecutor(6) as ex:
            outs = list(ex.map(lambda x: b.predict({"x": x}), xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_allclose(out["y"], ref.predict({"x": x})["y"], rtol=1e-6)
        with pytest.raises(InferenceError):  # wrong trailing dim: its own batch, a clear model error
            b.predict({"x": rng.normal(size=(1, 5)).astype(np.float32)})
    finally:
        b.close()


def test_split_policy_limits_batches_to_the_fixed_size(fixed_batch_model, doubles, rng):
    rec = doubles.Recording(OrtEngine(fixed_batch_model))
    b = Batcher(rec, BatcherConfig(max_batch_size=8, max_delay_ms=10, fixed_batch="split"))
    try:
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda _: b.predict({"x": rng.normal(size=(1, 4)).astype(np.float32)}), range(16)))
    finally:
        b.close()
    assert all(len(c["x"]) == 1 for c in rec.calls)


def test_a_failing_model_fails_its_batch_not_the_batcher(engine, doubles, x_test):
    bad = doubles.Raising(engine, InferenceError("model exploded"))
    b = Batcher(bad, BatcherConfig(max_delay_ms=1))
    try:
        for _ in range(3):
            with pytest.raises(InferenceError, match="exploded"):
                b.predict({"input": x_test[:1]})
        assert all(t.is_alive() for t in b._workers)
    finally:
        b.close()


def test_close_answers_queued_requests_then_refuses(engine, doubles, x_test):
    gate = doubles.Gate(engine)
    b = Batcher(gate, BatcherConfig(max_batch_size=1, max_delay_ms=0))
    t = threading.Thread(target=b.predict, args=({"input": x_test[:1]},))
    t.start()
    try:
        assert gate.entered.wait(5)
        futs = [b.submit({"input": x_test[i : i + 1]}) for i in range(1, 4)]
        closer = threading.Thread(target=b.close)
        closer.start()
        time.sleep(0.05)
    finally:
        gate.release()  # never leave the worker blocked, even when an assertion above fails
    closer.join(10)
    assert all(f.result(1)["label"].shape == (1,) for f in futs)
    with pytest.raises(InferenceError, match="closed"):
        b.submit({"input": x_test[:1]})


def test_watchdog_times_out_a_hung_model_without_blocking_the_queue(engine, doubles, x_test):
    gate = doubles.Gate(engine)
    b = Batcher(gate, BatcherConfig(max_batch_size=1, max_delay_ms=0), timeout_s=0.1, max_stuck=2)
    try:
        for _ in range(2):
            t0 = time.monotonic()
            with pytest.raises(ModelTimeoutError) as e:
                b.predict({"input": x_test[:1]})
            assert time.monotonic() - t0 < 2 and e.value.status_code == 504
        assert b.stuck == 2 and gate.entries == 2
        with pytest.raises(ModelTimeoutError, match="hung"):  # fails fast once max_stuck calls hang
            b.predict({"input": x_test[:1]})
        assert gate.entries == 2  # the model was not called again
        gate.release()
        deadline = time.monotonic() + 5
        while b.stuck and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.stuck == 0
        assert b.predict({"input": x_test[:1]})["label"].shape == (1,)  # the replacement worker serves
        assert sum(t.is_alive() for t in b._workers) == 1  # the recovered hung workers retired
    finally:
        gate.release()
        b.close()
