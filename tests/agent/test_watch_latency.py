"""The watch window judges latency against the previous version measured side by side, not a stale baseline.

Real ONNX models: 2.0.0 and 2.1.0 are MLPs of the same shape (two 1024-wide hidden layers, other weights),
2.2.0 has six such layers (five 1024x1024 matmuls: really ~4x the work, with margin over the 1.5x limit on
a loaded machine). The looks time the new and the
previous model interleaved on the golden inputs; a busy CPU slows both alike.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest
from agenttools import GOLDEN, PRE, assert_valid_active, run_until

from edgefleet.protocol import GateThresholds


def _mlp(path: Path, hidden: int, seed: int, width: int = 1024) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, prev, dim = [], [], "input", 64
    for i in range(hidden):
        w = rng.normal(0, 1 / np.sqrt(dim), (dim, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i}"]),
        ]
        prev, dim = f"h{i}", width
    inits.append(numpy_helper.from_array(rng.normal(0, 0.01, (dim, 10)).astype(np.float32), "wo"))
    nodes += [
        helper.make_node("MatMul", [prev, "wo"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def heavy_bundles(tmp_path_factory, digits_split) -> dict[str, Path]:
    from edgefleet.bundle import create_bundle

    d = tmp_path_factory.mktemp("heavy")
    x = digits_split.x_test[:GOLDEN]
    spec = {"2.0.0": (2, 1), "2.1.0": (2, 2), "2.2.0": (6, 3)}
    return {
        v: create_bundle(
            _mlp(d / f"{v}.onnx", hidden, seed),
            d / f"digits-{v}.tar",
            name="digits",
            version=v,
            variant="cpu",
            inputs_raw=x,
            preprocess=PRE,
        )
        for v, (hidden, seed) in spec.items()
    }


@pytest.fixture
def heavy_world(world, heavy_bundles):
    repo = world.repository()
    for v in ("2.0.0", "2.1.0", "2.2.0"):
        repo.publish(heavy_bundles[v], delta=False)
    return world


def _events(agent, kind: str) -> list[dict]:
    return [e for e in agent.journal.state.history if e["event"] == kind]


def _spin(deadline: float) -> None:
    x = 0
    while time.time() < deadline:  # bounded: never outlives the test
        x += 1


def test_first_install_says_latency_was_not_compared(world):
    a = world.agent()
    world.install(a, "1.0.0")
    (ev,) = _events(a, "committed")
    assert "no previous version" in ev["latency"]


def test_really_slower_release_is_rolled_back_by_paired_looks(heavy_world):
    """4x the work: every look is slow, so the window fails after `watch_look_persistence` looks. The window
    is shorter than the looks' interval: the final check takes the looks its verdict needs. The slack is
    lowered to 0.05 ms: these models take a fraction of a millisecond here."""
    w = heavy_world
    a = w.agent(watch_look_slack_ms=0.05)
    w.install(a, "2.0.0")
    w.standin.assign(w.target("2.2.0"), gates=GateThresholds(watch_window_s=0.3, max_latency_ratio=1.5))
    run_until(a, lambda: w.sha("2.2.0") in a.journal.state.failed, timeout=60)
    reason = a.journal.state.failed[w.sha("2.2.0")]
    assert "latency" in reason and "3 looks in a row" in reason and "side by side" in reason
    assert_valid_active(w.state, w.sha("2.0.0"))
    assert a._watch_looks is None  # the previous version's runner was released with the window


def test_same_speed_release_is_committed_while_a_cpu_hog_runs(heavy_world):
    """Two busy processes (both cores) during the whole window: the paired looks see new and previous
    slowed alike, so the good release is committed after many looks (behaviour, not a timing figure). The
    slack is as low as in the slow-release test, so it is the pairing, not the slack, that keeps it."""
    w = heavy_world
    a = w.agent(watch_look_interval_s=0.05, watch_look_slack_ms=0.05)
    w.install(a, "2.0.0")
    deadline = time.time() + 60
    hogs = [mp.get_context("spawn").Process(target=_spin, args=(deadline,), daemon=True) for _ in range(2)]
    for p in hogs:
        p.start()
    try:
        time.sleep(0.5)  # the hogs are spinning
        w.standin.assign(w.target("2.1.0"), gates=GateThresholds(watch_window_s=4, max_latency_ratio=1.5))
        run_until(a, lambda: a.journal.state.committed == w.sha("2.1.0"), timeout=60)
        assert all(p.is_alive() for p in hogs), "the hog stopped before the window ended"
    finally:
        for p in hogs:
            p.terminate()
        for p in hogs:
            p.join(10)
    assert_valid_active(w.state, w.sha("2.1.0"))
    (ev,) = [e for e in _events(a, "committed") if e["version"] == "2.1.0"]
    n = int(ev["latency"].split(" over ")[1].split()[0])
    assert n >= a.config.watch_look_persistence, ev
    assert w.sha("2.1.0") not in a.journal.state.failed


def test_looks_are_rate_limited_and_counted_in_the_journal(heavy_world):
    w = heavy_world
    a = w.agent(watch_look_interval_s=3600)
    w.install(a, "2.0.0")
    w.standin.assign(w.target("2.1.0"), gates=GateThresholds(watch_window_s=300))
    run_until(a, lambda: a.journal.state.watch is not None)
    for _ in range(5):
        assert a.check_watch() is None
    ws = a.journal.state.watch
    assert ws.looks == 1 and ws.last_ratio is not None  # one look, then none for an hour
    assert a.check_watch(final=True) == "committed"  # the end tops the looks up to the persistence
    (ev,) = [e for e in _events(a, "committed") if e["version"] == "2.1.0"]
    assert f"over {a.config.watch_look_persistence} looks" in ev["latency"]


def test_a_slow_look_alone_does_not_fail_the_window(heavy_world, monkeypatch):
    """Persistence: two slow looks then a normal one -> the window goes on; the slack keeps tiny gaps out."""
    import edgefleet.agent._watch as watch
    from edgefleet.agent._paired import PairedLook

    w = heavy_world
    a = w.agent(watch_look_interval_s=0)
    w.install(a, "2.0.0")
    w.standin.assign(w.target("2.1.0"), gates=GateThresholds(watch_window_s=300, max_latency_ratio=1.5))
    run_until(a, lambda: a.journal.state.watch is not None)
    seq = iter([PairedLook(9.0, 1.0, 20), PairedLook(9.0, 1.0, 20), PairedLook(1.0, 1.0, 20)])
    monkeypatch.setattr(watch, "paired_look", lambda *a_, **k: next(seq))
    assert [a.check_watch() for _ in range(3)] == [None, None, None]
    # a 3x ratio on a model 0.1 ms fast is inside the 0.5 ms slack: not slow
    monkeypatch.setattr(watch, "paired_look", lambda *a_, **k: PairedLook(0.3, 0.1, 20))
    assert [a.check_watch() for _ in range(4)] == [None] * 4
    monkeypatch.setattr(watch, "paired_look", lambda *a_, **k: PairedLook(3.0, 1.0, 20))
    assert [a.check_watch() for _ in range(3)] == [None, None, "rolled_back"]
    assert_valid_active(w.state, w.sha("2.0.0"))
