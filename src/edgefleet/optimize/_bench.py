"""Measurement: what onnxruntime_perf_test and TFLite's benchmark_model report, for one model on one
device profile, plus the interleaved baseline-vs-candidate check that tells speed from noise."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from edgefleet.errors import InputError, ModelLoadError
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._data import Dataset, load_data, synthetic_feed
from edgefleet.optimize._runner import Runner, open_runner
from edgefleet.optimize._spec import DeviceProfile

__all__ = [
    "LatencyStats",
    "Throughput",
    "BenchResult",
    "Interleaved",
    "benchmark",
    "benchmark_runner",
    "interleaved",
    "latency_stats",
    "tile_feed",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


class LatencyStats(BaseModel):
    """Latency at one batch size, in milliseconds."""

    runs: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class Throughput(BaseModel):
    batch: int
    samples_per_s: float | None = None
    batch_ms: float | None = None
    note: str | None = None


class BenchResult(BaseModel):
    """Everything ``benchmark()`` measured for one model on one device profile."""

    model: str
    format: str
    runtime: str
    profile: str
    threads: int
    providers: list[str]
    size_bytes: int
    compressed_bytes: int = Field(description="zlib level 6: what a compressed download would carry")
    init_ms: float
    first_inference_ms: float
    warmup_runs: int
    warmup_ms: float
    latency: LatencyStats
    throughput: list[Throughput] = Field(default_factory=list)
    peak_rss_mb: float | None = Field(None, description="peak resident memory added by the session")
    rss_note: str | None = None


def latency_stats(times_s: list[float] | np.ndarray) -> LatencyStats:
    t = np.asarray(times_s, dtype=np.float64) * 1000.0
    p = np.percentile(t, [50, 90, 95, 99])
    return LatencyStats(
        runs=int(t.size),
        mean_ms=float(t.mean()),
        std_ms=float(t.std(ddof=1)) if t.size > 1 else 0.0,
        min_ms=float(t.min()),
        p50_ms=float(p[0]),
        p90_ms=float(p[1]),
        p95_ms=float(p[2]),
        p99_ms=float(p[3]),
        max_ms=float(t.max()),
    )


def tile_feed(feed: Mapping[str, np.ndarray], batch: int, inputs: list[Any]) -> dict[str, np.ndarray] | None:
    """The batch-1 ``feed`` repeated to ``batch`` along axis 0, or None when the model's batch is fixed."""
    if batch == 1:
        return dict(feed)
    if not all(i.batch_dynamic for i in inputs):
        return None
    if not all(v.ndim >= 1 and v.shape[0] == 1 for v in feed.values()):
        return None
    return {k: np.repeat(v, batch, axis=0) for k, v in feed.items()}


def _timed(runner: Runner, feed: dict[str, np.ndarray], n: int) -> list[float]:
    out = []
    pc = time.perf_counter
    for _ in range(n):
        t0 = pc()
        runner.run(feed)
        out.append(pc() - t0)
    return out


def _compressed_size(path: Path) -> int:
    c = zlib.compressobj(6)
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += len(c.compress(chunk))
    return n + len(c.flush())


def measure_rss(
    model: Path, feed: dict[str, np.ndarray], profile: DeviceProfile, settings: OptimizeConfig
) -> tuple[float | None, str | None]:
    """Peak RSS (MiB) a session adds, measured in a fresh child process."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-mem-") as td:
        fp = Path(td) / "feed.npz"
        np.savez(fp, **feed)
        cmd = [
            sys.executable,
            "-m",
            "edgefleet.optimize._memprobe",
            str(model),
            str(fp),
            str(profile.cores),
            json.dumps(profile.execution_providers),
            "3",
        ]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(profile.cores))
        try:
            r = subprocess.run(
                cmd, capture_output=True, text=True, timeout=settings.memory_timeout_s, env=env
            )
        except subprocess.TimeoutExpired:
            return None, f"memory probe timed out after {settings.memory_timeout_s:.0f} s"
        if r.returncode != 0:
            return None, "memory probe failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        try:
            return float(json.loads(r.stdout.strip().splitlines()[-1])["added_mb"]), None
        except (ValueError, KeyError, IndexError):
            return None, "memory probe gave no result"


def _open_timed(model: Path, profile: DeviceProfile) -> tuple[Runner, float]:
    t0 = time.perf_counter()
    runner = open_runner(model, threads=profile.cores, providers=profile.execution_providers)
    return runner, (time.perf_counter() - t0) * 1000.0


def benchmark_runner(
    model: Path,
    feed: dict[str, np.ndarray],
    profile: DeviceProfile,
    settings: OptimizeConfig,
    *,
    runs: int | None = None,
    warmup: int | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    measure_memory: bool | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Benchmark ``model`` with a batch-1 ``feed`` (the caller guarantees the feed fits the model)."""
    import onnxruntime as ort

    runs = runs or settings.runs
    warmup = settings.warmup_runs if warmup is None else warmup
    batch_sizes = batch_sizes or settings.throughput_batches
    measure_memory = settings.measure_memory if measure_memory is None else measure_memory
    total = warmup + runs + sum(settings.throughput_runs for b in batch_sizes if b != 1)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(model.name, done, total)

    runner, init_ms = _open_timed(model, profile)
    try:
        t0 = time.perf_counter()
        runner.run(feed)
        first_ms = (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        for _ in range(warmup):
            runner.run(feed)
        warm_ms = (time.perf_counter() - t0) * 1000.0
        tick(warmup)
        times: list[float] = []
        step = max(1, runs // 20)
        while len(times) < runs:
            n = min(step, runs - len(times))
            times += _timed(runner, feed, n)
            tick(n)
        lat = latency_stats(times)
        thr = []
        for b in batch_sizes:
            if b == 1:
                thr.append(Throughput(batch=1, samples_per_s=1000.0 / lat.mean_ms, batch_ms=lat.mean_ms))
                continue
            bf = tile_feed(feed, b, runner.inputs)
            if bf is None:
                thr.append(Throughput(batch=b, note="model has a fixed batch size"))
                continue
            try:
                runner.run(bf)
                ts = _timed(runner, bf, settings.throughput_runs)
                mean = float(np.mean(ts))
                thr.append(Throughput(batch=b, samples_per_s=b / mean, batch_ms=mean * 1000.0))
            except Exception as e:  # noqa: BLE001 - some graphs reshape with a hard-coded batch
                thr.append(Throughput(batch=b, note=f"failed at batch {b}: {str(e).strip()[:100]}"))
            tick(settings.throughput_runs)
        providers = runner.providers
        fmt = "tflite" if model.suffix == ".tflite" else "onnx"
    finally:
        runner.close()
    rss, note = (None, "not measured")
    if measure_memory:
        rss, note = measure_rss(model, feed, profile, settings)
    if fmt == "tflite":
        try:
            from importlib.metadata import version

            rt = f"ai-edge-litert {version('ai-edge-litert')}"
        except Exception:  # noqa: BLE001
            rt = "ai-edge-litert"
    else:
        rt = f"onnxruntime {ort.__version__}"
    return BenchResult(
        model=str(model),
        format=fmt,
        runtime=rt,
        profile=profile.name,
        threads=profile.cores,
        providers=providers,
        size_bytes=model.stat().st_size,
        compressed_bytes=_compressed_size(model),
        init_ms=init_ms,
        first_inference_ms=first_ms,
        warmup_runs=warmup,
        warmup_ms=warm_ms,
        latency=lat,
        throughput=thr,
        peak_rss_mb=rss,
        rss_note=note,
    )


def benchmark(
    model_path: str | Path,
    profile: DeviceProfile | str | Path | None = None,
    *,
    data: Any = None,
    dims: Mapping[str, int] | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    measure_memory: bool | None = None,
    settings: OptimizeConfig | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Benchmark an ONNX or .tflite model on a device profile.

    Args:
        model_path: the model file.
        profile: a DeviceProfile or a profile YAML path; None means this machine, all cores.
        data: real inputs (anything ``load_data`` takes); the first sample is timed. Without data,
            random inputs are made from the model's input shapes (``dims`` sizes symbolic axes).
        runs, warmup, batch_sizes, measure_memory: override the settings' defaults.

    Raises:
        ModelLoadError: the model cannot be loaded. InputError: bad data.
    """
    settings = settings or OptimizeConfig()
    if isinstance(profile, (str, Path)):
        profile = DeviceProfile.from_yaml(profile)
    profile = profile or DeviceProfile.local()
    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"model {path} does not exist", hint="check the path")
    if path.suffix != ".tflite":
        from edgefleet.optimize._convert import check_onnx_file

        check_onnx_file(path, settings)
    probe = open_runner(path, threads=1, providers=profile.execution_providers)
    try:
        if data is not None:
            ds: Dataset = load_data(data, probe.inputs, what="benchmark", limit=1, settings=settings)
            feed = ds.samples[0]
        else:
            feed = synthetic_feed(probe.inputs, dims)
        try:
            probe.run(feed)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"{path.name} fails on the benchmark input: {str(e).strip()[:300]}",
                hint="pass real input data (--data sample.npz) or sizes for symbolic dims (--dim name=N)",
            ) from e
    finally:
        probe.close()
    return benchmark_runner(
        path,
        feed,
        profile,
        settings,
        runs=runs,
        warmup=warmup,
        batch_sizes=batch_sizes,
        measure_memory=measure_memory,
        progress=progress,
    )


class Interleaved(BaseModel):
    """Baseline and candidate timed in alternating rounds, so drift in machine load hits both."""

    rounds: int
    runs_per_round: int
    baseline_p50_ms: list[float]
    candidate_p50_ms: list[float]
    ratios: list[float]
    median_ratio: float
    tolerance: float
    verdict: str  # "slower" | "faster" | "same"


def interleaved(
    baseline: Runner,
    candidate: Runner,
    feed_base: dict[str, np.ndarray],
    feed_cand: dict[str, np.ndarray],
    settings: OptimizeConfig,
    *,
    rounds: int | None = None,
    runs: int | None = None,
) -> Interleaved:
    """Alternate baseline/candidate rounds and judge the p50 ratio against the noise between rounds."""
    rounds = rounds or settings.interleave_rounds
    for _ in range(3):
        baseline.run(feed_base)
        candidate.run(feed_cand)
    if runs is None:
        # Each round lasts at least interleave_round_s, so one preemption cannot move a round's median.
        per_run = max(
            float(np.median(_timed(baseline, feed_base, 10))),
            float(np.median(_timed(candidate, feed_cand, 10))),
        )
        runs = int(
            min(
                100_000,
                max(settings.interleave_runs, np.ceil(settings.interleave_round_s / max(per_run, 1e-7))),
            )
        )
    bp: list[float] = []
    cp: list[float] = []

    def play(n: int) -> None:
        for _ in range(n):
            order = (baseline, candidate) if len(bp) % 2 == 0 else (candidate, baseline)
            res = {}
            for who in order:
                f = feed_base if who is baseline else feed_cand
                res[id(who)] = float(np.median(_timed(who, f, runs))) * 1000.0
            bp.append(res[id(baseline)])
            cp.append(res[id(candidate)])

    def judge() -> tuple[float, float, str]:
        ratios = np.asarray(cp) / np.asarray(bp)
        med = float(np.median(ratios))
        q1, q3 = np.percentile(ratios, [25, 75])
        # Two standard errors of the median (sigma estimated robustly from the IQR), never below the floor.
        se = 1.2533 * float(q3 - q1) / 1.349 / np.sqrt(len(ratios))
        tol = max(settings.noise_floor, 2.0 * se)
        verdict = "slower" if med > 1 + tol else ("faster" if med < 1 - tol else "same")
        return med, tol, verdict

    play(rounds)
    med, tol, verdict = judge()
    # Inconclusive (a difference above the floor that the noise hides): more rounds, up to 3x.
    while verdict == "same" and abs(med - 1) > settings.noise_floor and len(bp) < 3 * rounds:
        play(rounds)
        med, tol, verdict = judge()
    rounds = len(bp)
    ratios = [c / b for b, c in zip(bp, cp, strict=True)]
    return Interleaved(
        rounds=rounds,
        runs_per_round=runs,
        baseline_p50_ms=bp,
        candidate_p50_ms=cp,
        ratios=ratios,
        median_ratio=med,
        tolerance=tol,
        verdict=verdict,
    )
