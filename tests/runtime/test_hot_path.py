"""The runtime's hot path: lone requests on the caller's thread, watchdog timeouts, priority order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.errors import ModelTimeoutError
from edgefleet.runtime import BatcherConfig, FallbackConfig, OrtEngine, Priority, Runtime, RuntimeConfig
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._guards import Timeout


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """A real ONNX model that runs for seconds on a big batch: 300 chained 512x512 matrix products."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(512, dtype=np.float32), name="w")
    nodes, prev = [], "input"
    for i in range(300):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["output"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 512])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("slow") / "slow.onnx"
    onnx.save(model, path)
    return path


def _config(**kw) -> RuntimeConfig:
    # graph optimization off: ORT would otherwise fold the identity products away
    return RuntimeConfig(
        engine={"graph_optimization": "disable", "warmup_runs": 1},
        fallback=FallbackConfig(timeout_ms=200),
        **kw,
    )


@pytest.mark.parametrize("batching", [True, False])
def test_a_hung_ort_call_is_stopped_and_never_holds_its_caller(slow_model, batching):
    rt = Runtime.from_bundle(slow_model, _config(batcher=BatcherConfig(enabled=batching)))
    big = np.random.default_rng(0).random((1024, 512), dtype=np.float32)
    try:
        assert rt.predict({"input": big[:1]}).outputs["output"].shape == (1, 512)  # a small batch answers
        guard = rt.pipeline
        watchdog = guard._inline_watchdog if batching else guard._watchdog
        assert watchdog is not None
        t0 = time.monotonic()
        with pytest.raises(ModelTimeoutError, match="did not answer within 200 ms"):
            rt.predict({"input": big})
        assert time.monotonic() - t0 < 5  # a generous bound; the uncut call runs far longer
        assert watchdog.terminated == 1  # ORT stopped it (RunOptions.terminate), no thread was left behind
        # the runtime serves on, on the same thread, with a fresh RunOptions
        assert rt.predict({"input": big[:2]}).outputs["output"].shape == (2, 512)
        if not batching:
            assert isinstance(guard, Timeout) and guard.stuck == 0
    finally:
        rt.close()


class _HeldEngine:
    """A terminable engine (so the batcher may run lone requests inline) that holds calls until released."""

    terminable = True

    def __init__(self, inner: OrtEngine) -> None:
        self.inner = inner
        self.hold = threading.Event()
        self.entered: list[float] = []  # the first input value of each call, in the order calls began
        self.lock = threading.Lock()
        self.threads: list[str] = []

    @property
    def metadata(self):
        return self.inner.metadata

    def run_options(self):
        return self.inner.run_options()

    def predict(self, batch, **opts):
        with self.lock:
            self.entered.extend(float(v) for v in batch["input"][:, 0])
            self.threads.append(threading.current_thread().name)
        self.hold.wait(10)
        return self.inner.predict(batch, **opts)

    def close(self) -> None:
        self.inner.close()


def test_the_batcher_never_serves_a_lower_priority_request_first(digits_mlp):
    held = _HeldEngine(OrtEngine(digits_mlp))
    b = Batcher(held, BatcherConfig(max_batch_size=1, max_delay_ms=0))
    rows = {i: np.full((1, 64), i / 100, dtype=np.float32) for i in range(20)}
    threads: list[threading.Thread] = []

    def call(i: int, prio: int) -> None:
        b.predict({"input": rows[i]}, priority=prio)

    def start(i: int, prio: int) -> None:
        t = threading.Thread(target=call, args=(i, prio))
        t.start()
        threads.append(t)

    try:
        start(0, Priority.LOW)  # alone: runs on its caller's thread
        while len(held.entered) < 1:
            time.sleep(0.002)
        assert not held.threads[0].startswith("edgefleet-batcher")
        start(1, Priority.LOW)  # a call is running: queued, and the idle worker takes it
        while len(held.entered) < 2:
            time.sleep(0.002)
        assert held.threads[1].startswith("edgefleet-batcher")
        prios = [Priority.LOW, Priority.HIGH, Priority.NORMAL, Priority.URGENT, Priority.LOW, Priority.HIGH]
        prios += [Priority.NORMAL, Priority.URGENT, Priority.LOW, Priority.HIGH]
        for k, prio in enumerate(prios, start=2):
            start(k, prio)
        while b.queue_depth < len(prios):
            time.sleep(0.002)
        held.hold.set()
        for t in threads:
            t.join(10)
    finally:
        held.hold.set()
        b.close()
    served = [round(v * 100) for v in held.entered[2:]]
    assert sorted(served) == list(range(2, 2 + len(prios)))  # every queued request ran, none inline
    got = [prios[i - 2] for i in served]
    assert got == sorted(got, reverse=True)  # never a lower priority before a higher one
    # FIFO within a level
    for level in set(prios):
        ids = [i for i in served if prios[i - 2] == level]
        assert ids == sorted(ids)
