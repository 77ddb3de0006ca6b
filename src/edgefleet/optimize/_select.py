"""Choose a variant from measured figures: budgets first, then the objective, and never a variant
slower than the baseline (for ``latency``/``balanced``) once repeated interleaved runs say so."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

from edgefleet.optimize._bench import Interleaved
from edgefleet.optimize._report import VariantResult
from edgefleet.optimize._spec import Budget

__all__ = ["OBJECTIVES", "select", "budget_problems", "objective_score"]

OBJECTIVES = ("latency", "size", "balanced")


def budget_problems(r: VariantResult, budget: Budget) -> list[str]:
    """Why ``r`` does not fit the budget (empty: it fits)."""
    out = []
    q = r.quality
    if q is None:
        return ["quality not measured"]
    if q.nonfinite:
        out.append(f"produces {q.nonfinite} NaN/Inf output values")
    if r.drop is not None and r.drop > budget.max_drop + 1e-9:
        out.append(f"quality drop {r.drop:.2f} points > max {budget.max_drop:g}")
    if budget.min_quality is not None and q.score < budget.min_quality - 1e-9:
        out.append(f"{q.metric} {q.score:.2f} < required {budget.min_quality:g}")
    if budget.latency_p95_ms is not None and r.p95 is not None and r.p95 > budget.latency_p95_ms:
        out.append(f"p95 {r.p95:.3f} ms > budget {budget.latency_p95_ms:g} ms")
    if budget.ram_mb is not None and r.bench is not None:
        if r.bench.peak_rss_mb is None:
            out.append("RAM budget set but peak RSS could not be measured")
        elif r.bench.peak_rss_mb > budget.ram_mb:
            out.append(f"peak RSS {r.bench.peak_rss_mb:.1f} MB > budget {budget.ram_mb:g} MB")
    if budget.size_mb is not None and r.size_bytes is not None and r.size_bytes / 2**20 > budget.size_mb:
        out.append(f"size {r.size_bytes / 2**20:.2f} MB > budget {budget.size_mb:g} MB")
    out += [f"device runtime: {i}" for i in r.target_issues]
    return out


def objective_score(
    r: VariantResult, base: VariantResult, objective: str, ratio: float | None = None
) -> float:
    """Lower wins; relative to the baseline (1.0). latency: p50 ratio; size: size ratio;
    balanced: sqrt(p50 ratio x size ratio). ``ratio`` (from interleaved runs) replaces the single-run one.
    """
    lat = ratio if ratio is not None else (r.p50 or math.inf) / (base.p50 or 1.0)
    size = (r.size_bytes or math.inf) / (base.size_bytes or 1)
    if objective == "latency":
        return float(lat)
    if objective == "size":
        return float(size)
    return math.sqrt(lat * size)


def _describe(r: VariantResult, objective: str) -> str:
    if objective == "latency":
        return f"p50 x{r.score:.3f} of the baseline"
    if objective == "size":
        return f"{(r.size_bytes or 0) / 1024:.1f} KB"
    return f"score {r.score:.3f}"


def _dense_pruning_without_gain(r: VariantResult, noise_floor: float) -> bool:
    """Unstructured pruning stores its zeros densely: it is a sparsity report, and loses unless its file
    is really smaller than the baseline's (structured pruning, which removes whole channels, is the torch
    recipe's ``--prune``). Its speed is not a reason: the same operators run on the same shapes, zeros
    included, so a measured difference is the machine's noise (a busy machine once made one look faster)."""
    if r.variant.kind != "pruned":
        return False
    if (r.size_ratio or 1.0) > 1 + noise_floor:
        return False
    r.outcome = "rejected"
    r.reason = (
        f"unstructured pruning ({r.sparsity or 0:.0%} zeros) is stored and run densely: "
        f"{r.size_ratio or 1.0:.2f}x smaller, {r.speedup_p50 or 1.0:.2f}x the speed; a sparsity report, "
        "not a variant (structured pruning removes whole channels: edgefleet optimize model.pt --prune 0.5)"
    )
    return True


def select(
    results: list[VariantResult],
    budget: Budget,
    objective: str,
    *,
    baseline: str = "fp32",
    confirm: Callable[[VariantResult], Interleaved | None] | None = None,
    noise_floor: float = 0.05,
) -> tuple[VariantResult | None, str]:
    """Set ``outcome``/``reason`` on every result and return (chosen or None, why).

    ``confirm(candidate)`` runs the interleaved baseline-vs-candidate check; without it the single
    measurements are compared with ``noise_floor`` as the tolerance.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}")
    base = next((r for r in results if r.name == baseline and r.status == "ok" and r.bench), None)
    eligible: list[VariantResult] = []
    for r in results:
        if r.status != "ok":
            r.outcome = "failed" if r.status == "failed" else "skipped"
            r.reason = r.reason or (r.error or r.status)
            continue
        if base is not None:
            if r.p50 and base.p50:
                r.speedup_p50 = base.p50 / r.p50
            if r.size_bytes and base.size_bytes:
                r.size_ratio = base.size_bytes / r.size_bytes
        problems = budget_problems(r, budget)
        if problems:
            r.outcome = "rejected"
            r.reason = "; ".join(problems)
            continue
        if base is not None:
            r.score = objective_score(r, base, objective)
        eligible.append(r)
    if base is None:
        for r in eligible:
            r.outcome = "rejected"
            r.reason = "the fp32 baseline could not be measured, so nothing can be compared with it"
        return None, "the fp32 baseline failed to build or run; no variant can be judged against it"
    # Speed claims are re-checked against the baseline with interleaved runs; a variant slower than the
    # baseline beyond noise is never chosen for latency/balanced, and the interleaved ratio replaces the
    # single-run figure in the score.
    if objective in ("latency", "balanced"):
        kept = []
        for cand in eligible:
            if cand is base:
                kept.append(cand)
                continue
            il = confirm(cand) if confirm else None
            if il is not None:
                cand.interleaved = il
                ratio = il.median_ratio
                slower = il.verdict == "slower"
                how = f"p50 x{ratio:.2f} of the baseline over {il.rounds} interleaved rounds (noise ±{il.tolerance:.0%})"
            else:
                ratio = (cand.p50 or math.inf) / (base.p50 or 1.0)
                slower = ratio > 1 + noise_floor
                how = f"p50 x{ratio:.2f} of the baseline (single runs; noise floor {noise_floor:.0%})"
            cand.speedup_p50 = 1.0 / ratio if ratio > 0 else None
            if slower:
                cand.outcome = "rejected"
                cand.reason = f"slower than the fp32 baseline: {how}"
                continue
            cand.reason = how
            # Within noise means as fast as the baseline: a tie is then decided by size, not by noise.
            same = il is not None and il.verdict == "same" or il is None and abs(ratio - 1) <= noise_floor
            cand.score = objective_score(cand, base, objective, 1.0 if same else ratio)
            kept.append(cand)
        eligible = kept
    eligible = [r for r in eligible if not _dense_pruning_without_gain(r, noise_floor)]
    # Ties (scores equal to 0.1 %) go to the better quality, then to the baseline (the simplest model).
    eligible.sort(
        key=lambda r: (
            round(r.score or math.inf, 3),
            -(r.quality.score if r.quality else 0.0),
            r is not base,
            r.size_bytes or 0,
        )
    )
    chosen: VariantResult | None = eligible[0] if eligible else None
    if chosen is None:
        # Group the rejections by kind (numbers aside) and show one real example of each.
        first: dict[str, str] = {}
        counts: Counter[str] = Counter()
        for r in results:
            if r.outcome != "rejected":
                continue
            text = r.reason.split("; ")[0]
            key = re.sub(r"-?\d[\d.]*(e-?\d+)?", "N", text.split(":")[0])
            first.setdefault(key, f"{r.name}: {text}")
            counts[key] += 1
        why = "; ".join(
            first[k] + (f" (and {n - 1} more like it)" if n > 1 else "") for k, n in counts.most_common(4)
        )
        return None, f"no variant meets the budget: {why}"
    chosen.outcome = "chosen"
    parts = [
        f"{chosen.name} is best for the {objective} objective among {len(eligible)} variants within budget",
        f"p50 {chosen.p50:.3f} ms ({chosen.speedup_p50 or 1.0:.2f}x the baseline's speed)",
        f"{chosen.size_ratio or 1.0:.2f}x smaller",
        f"quality {chosen.quality.score:.2f} ({chosen.drop:+.2f} points drop, max {budget.max_drop:g})",  # type: ignore[union-attr]
    ]
    if chosen.reason:
        parts.append(chosen.reason)
    chosen.reason = "; ".join(parts)
    for r in eligible:
        if r is chosen or r.outcome == "rejected":
            continue
        r.outcome = "lost"
        r.reason = f"{_describe(r, objective)} vs {chosen.name} {_describe(chosen, objective)}" + (
            f"; {r.reason}" if r.reason else ""
        )
    return chosen, chosen.reason
