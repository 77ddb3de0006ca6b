"""Selection from measured figures: budgets, objectives, and never a variant slower than the baseline."""

from __future__ import annotations

import pytest

from edgefleet.optimize import OptimizeReport, Variant
from edgefleet.optimize._bench import BenchResult, Interleaved, LatencyStats
from edgefleet.optimize._report import QualityFigures, VariantResult
from edgefleet.optimize._select import select
from edgefleet.optimize._spec import Budget


def _bench(p50: float, p95: float | None = None, rss: float | None = 5.0) -> BenchResult:
    lat = LatencyStats(
        runs=10,
        mean_ms=p50,
        std_ms=0.01,
        min_ms=p50,
        p50_ms=p50,
        p90_ms=p50,
        p95_ms=p95 or p50,
        p99_ms=p95 or p50,
        max_ms=p95 or p50,
    )
    return BenchResult(
        model="m.onnx",
        format="onnx",
        runtime="onnxruntime",
        profile="t",
        threads=1,
        providers=["CPUExecutionProvider"],
        size_bytes=1,
        compressed_bytes=1,
        init_ms=1,
        first_inference_ms=1,
        warmup_runs=1,
        warmup_ms=1,
        latency=lat,
        peak_rss_mb=rss,
    )


def _res(
    name: str, *, p50: float, size: int, quality: float, base_quality: float = 95.0, p95=None, rss=5.0
) -> VariantResult:
    kind = (
        "fp32"
        if name == "fp32"
        else "static-int8"
        if name.startswith("static")
        else "dynamic-int8"
        if name.startswith("dyn")
        else "fp16"
    )
    v = Variant.parse(name) if kind != "fp16" else Variant.parse("fp16")
    if kind == "static-int8" and name.count("-") < 3:
        v = Variant.parse("static-int8-pt-minmax")
    return VariantResult(
        name=name,
        variant=v if v.kind == kind else Variant(name=name, kind=kind),
        size_bytes=size,
        bench=_bench(p50, p95, rss),
        quality=QualityFigures(metric="accuracy", score=quality, accuracy=quality / 100),
        drop=base_quality - quality,
    )


def _il(ratio: float, verdict: str) -> Interleaved:
    return Interleaved(
        rounds=5,
        runs_per_round=10,
        baseline_p50_ms=[1.0] * 5,
        candidate_p50_ms=[ratio] * 5,
        ratios=[ratio] * 5,
        median_ratio=ratio,
        tolerance=0.05,
        verdict=verdict,
    )


def test_refuses_a_variant_the_interleaved_runs_find_slower():
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0)
    # Its single run looked fast (p50 0.5), but interleaved runs against the baseline say it is slower.
    fake_fast = _res("static-int8-pt-minmax", p50=0.5, size=1000, quality=95.0)
    honest = _res("dynamic-int8", p50=0.9, size=1100, quality=94.8)
    verdicts = {"static-int8-pt-minmax": _il(1.3, "slower"), "dynamic-int8": _il(0.9, "faster")}
    chosen, why = select(
        [fp32, fake_fast, honest], Budget(max_drop=1), "balanced", confirm=lambda r: verdicts[r.name]
    )
    assert chosen is honest
    assert fake_fast.outcome == "rejected" and "slower than the fp32 baseline" in fake_fast.reason
    assert "x1.30" in fake_fast.reason and fake_fast.interleaved is not None
    assert fp32.outcome == "lost" and fp32.reason
    assert "dynamic-int8" in why


def test_size_objective_may_take_a_slower_variant():
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0)
    small = _res("static-int8-pt-minmax", p50=1.4, size=1000, quality=94.5)
    calls = []
    chosen, _ = select(
        [fp32, small], Budget(max_drop=1), "size", confirm=lambda r: calls.append(r) or _il(1.4, "slower")
    )
    assert chosen is small and calls == []  # size does not need the speed re-check


def test_latency_objective_prefers_the_fastest_within_budget():
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0)
    a = _res("static-int8-pt-minmax", p50=0.5, size=1000, quality=93.0)  # too lossy
    b = _res("dynamic-int8", p50=0.7, size=1100, quality=94.5)
    c = _res("fp16", p50=0.95, size=2000, quality=95.0)
    ratios = {"dynamic-int8": _il(0.7, "faster"), "fp16": _il(1.0, "same")}
    chosen, _ = select([fp32, a, b, c], Budget(max_drop=1), "latency", confirm=lambda r: ratios[r.name])
    assert chosen is b
    assert a.outcome == "rejected" and "quality drop 2.00 points > max 1" in a.reason
    assert c.outcome == "lost" and "dynamic-int8" in c.reason


def test_within_noise_is_a_tie_decided_by_size_then_quality():
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0)
    same_speed_smaller = _res("static-int8-pt-minmax", p50=1.02, size=1000, quality=95.0)
    chosen, _ = select(
        [fp32, same_speed_smaller], Budget(max_drop=1), "balanced", confirm=lambda r: _il(1.02, "same")
    )
    assert chosen is same_speed_smaller
    # an identical-size variant that is no faster never displaces the baseline
    fp32b = _res("fp32", p50=1.0, size=4000, quality=95.0)
    clone = _res("fp16", p50=0.99, size=4000, quality=94.9)
    chosen, _ = select([fp32b, clone], Budget(max_drop=1), "balanced", confirm=lambda r: _il(0.99, "same"))
    assert chosen is fp32b


@pytest.mark.parametrize(
    ("budget", "fragment"),
    [
        (Budget(max_drop=1, latency_p95_ms=0.5), "p95 2.000 ms > budget 0.5 ms"),
        (Budget(max_drop=1, ram_mb=1), "peak RSS 5.0 MB > budget 1 MB"),
        (Budget(max_drop=1, size_mb=0.0001), "MB > budget"),
        (Budget(max_drop=1, min_quality=99), "< required 99"),
    ],
)
def test_budgets_nothing_meets(budget, fragment):
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0, p95=2.0)
    q = _res("static-int8-pt-minmax", p50=0.8, size=1000, quality=94.8, p95=2.0)
    chosen, why = select([fp32, q], budget, "balanced", confirm=lambda r: _il(0.8, "faster"))
    assert chosen is None
    assert why.startswith("no variant meets the budget")
    for r in (fp32, q):
        assert r.outcome == "rejected" and fragment in r.reason


def test_failed_variants_keep_their_error_and_nan_outputs_are_rejected():
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0)
    broken = VariantResult(name="fp16", variant=Variant.parse("fp16"), status="failed", error="cannot load")
    nan = _res("dynamic-int8", p50=0.5, size=1000, quality=95.0)
    nan.quality.nonfinite = 3
    chosen, _ = select(
        [fp32, broken, nan], Budget(max_drop=1), "balanced", confirm=lambda r: _il(0.5, "faster")
    )
    assert chosen is fp32
    assert broken.outcome == "failed" and broken.reason == "cannot load"
    assert nan.outcome == "rejected" and "NaN/Inf" in nan.reason


def test_without_interleaved_runs_the_noise_floor_applies():
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0)
    slightly_slower = _res("static-int8-pt-minmax", p50=1.03, size=1000, quality=95.0)
    clearly_slower = _res("dynamic-int8", p50=1.5, size=900, quality=95.0)
    chosen, _ = select(
        [fp32, slightly_slower, clearly_slower], Budget(max_drop=1), "balanced", noise_floor=0.05
    )
    assert chosen is slightly_slower
    assert clearly_slower.outcome == "rejected"


def test_report_lists_every_variant_with_its_reason(tmp_path):
    fp32 = _res("fp32", p50=1.0, size=4000, quality=95.0)
    q = _res("static-int8-pt-minmax", p50=0.8, size=1000, quality=94.8)
    chosen, why = select([fp32, q], Budget(max_drop=1), "balanced", confirm=lambda r: _il(0.8, "faster"))
    from edgefleet.optimize import DeviceProfile

    rep = OptimizeReport(
        source="m.onnx",
        source_format="onnx",
        budget=Budget(),
        profile=DeviceProfile(),
        variants=[fp32, q],
        chosen=chosen.name,
        reason=why,
    )
    md = rep.to_markdown()
    assert "| fp32 | lost |" in md and "| static-int8-pt-minmax | chosen |" in md
    assert "x0.80 of the baseline" in md
    png = rep.plot(tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
