"""benchmark(): the figures onnxruntime_perf_test / benchmark_model report, on real sessions."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgefleet.errors import InputError, ModelLoadError
from edgefleet.optimize import DeviceProfile, benchmark
from edgefleet.optimize._bench import interleaved
from edgefleet.optimize._runner import OrtRunner

from .conftest import make_linear_onnx


def test_benchmark_reports_every_figure(digits_mlp, fast, one_core, digits_split):
    res = benchmark(
        digits_mlp, one_core, data={"input": (digits_split.x_test[:3] / 16).astype(np.float32)}, settings=fast
    )
    assert res.size_bytes == digits_mlp.stat().st_size
    assert 0 < res.compressed_bytes <= res.size_bytes * 1.01
    assert res.threads == 1 and res.providers[0] == "CPUExecutionProvider"
    lat = res.latency
    assert lat.runs == fast.runs
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert res.init_ms > 0 and res.first_inference_ms > 0 and res.warmup_runs == fast.warmup_runs
    batches = {t.batch: t for t in res.throughput}
    assert set(batches) == {1, 8} and all(t.samples_per_s and t.samples_per_s > 0 for t in batches.values())
    assert res.peak_rss_mb is None and res.rss_note == "not measured"


def test_peak_rss_is_measured_in_a_fresh_process(digits_mlp, fast, one_core):
    res = benchmark(digits_mlp, one_core, settings=fast, measure_memory=True, batch_sizes=(1,))
    assert res.peak_rss_mb is not None and 0 < res.peak_rss_mb < 500, res.rss_note


def test_profile_yaml_sets_threads(digits_mlp, fast, tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: two\ncores: 2\n")
    res = benchmark(digits_mlp, p, settings=fast, batch_sizes=(1,))
    assert res.profile == "two" and res.threads == 2


def test_fixed_batch_models_say_so(tmp_path, fast, one_core):
    import onnx

    path = make_linear_onnx(tmp_path / "fixed.onnx")
    m = onnx.load(str(path))
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save_model(m, str(path))
    res = benchmark(path, one_core, settings=fast)
    notes = {t.batch: t.note for t in res.throughput}
    assert notes[8] == "model has a fixed batch size"


def test_bad_models_and_data(tmp_path, digits_mlp, fast, one_core):
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(digits_mlp.read_bytes()[:300])
    with pytest.raises(ModelLoadError) as e:
        benchmark(trunc, one_core, settings=fast)
    assert e.value.hint
    with pytest.raises(InputError, match="does not exist"):
        benchmark(tmp_path / "none.onnx", one_core, settings=fast)
    with pytest.raises(InputError, match="model's inputs are"):
        benchmark(digits_mlp, one_core, data={"x": np.zeros((1, 64), np.float32)}, settings=fast)


class _Slow:
    """A real session with a fixed extra delay per call: a variant that truly is slower."""

    def __init__(self, runner, delay_s: float) -> None:
        self.runner, self.delay_s = runner, delay_s
        self.inputs, self.outputs = runner.inputs, runner.outputs

    def run(self, feed):
        t0 = time.perf_counter()
        out = self.runner.run(feed)
        while time.perf_counter() - t0 < self.delay_s:
            pass
        return out


def test_interleaved_runs_find_a_truly_slower_model(digits_mlp, fast):
    base = OrtRunner(digits_mlp)
    slow = _Slow(OrtRunner(digits_mlp), 0.02)  # 20 ms: far above what a busy CPU adds to a 50 µs call
    feed = {"input": np.zeros((1, 64), np.float32)}
    il = interleaved(base, slow, feed, feed, fast, rounds=3, runs=5)
    assert il.verdict == "slower" and il.median_ratio > 2
    assert len(il.ratios) == 3 and il.tolerance >= fast.noise_floor
    il2 = interleaved(slow, base, feed, feed, fast, rounds=3, runs=5)
    assert il2.verdict == "faster" and il2.median_ratio < 0.5


def test_tflite_models_run_through_litert(tmp_path, fast, one_core, digits_split):
    pytest.importorskip("ai_edge_litert")
    from sklearn.neural_network import MLPClassifier

    from ._tflite import write_dense_tflite

    clf = MLPClassifier((32,), random_state=0, max_iter=50).fit(
        digits_split.x_train / 16, digits_split.y_train
    )
    path = write_dense_tflite(tmp_path / "m.tflite", list(zip(clf.coefs_, clf.intercepts_, strict=True)), 64)
    res = benchmark(path, one_core, settings=fast)
    assert res.format == "tflite" and res.runtime.startswith("ai-edge-litert")
    assert res.latency.p50_ms > 0
    assert {t.batch for t in res.throughput if t.samples_per_s} == {1, 8}  # dynamic batch via resize
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="LiteRT cannot load"):
        benchmark(bad, one_core, settings=fast)


def test_local_profile_defaults():
    import os
    import platform

    from edgefleet.optimize._spec import local_isa_flags

    prof = DeviceProfile.local()
    assert prof.name == "local"
    assert prof.cores == len(os.sched_getaffinity(0))  # every core this process may use
    assert prof.isa_flags == local_isa_flags() == sorted(set(prof.isa_flags))  # this machine's, deduplicated
    assert prof.flags == prof.isa_flags
    assert prof.arch == (platform.machine() or "x86_64")
    assert prof.execution_providers == ["CPUExecutionProvider"]
    # no budgets: the local machine is measured, never judged
    assert (prof.ram_mb, prof.latency_budget_ms, prof.ram_budget_mb, prof.size_budget_mb) == (None,) * 4
    assert prof.onnxruntime is None
    assert DeviceProfile.local(cores=3).cores == 3
    assert DeviceProfile.local(cores=0).cores == prof.cores  # 0 / None: all cores
