"""The optimizer's report: every variant with its figures and why it won or lost (JSON, Markdown, plot)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from edgefleet.optimize._bench import BenchResult, Interleaved
from edgefleet.optimize._spec import Budget, DeviceProfile, Variant

__all__ = [
    "QualityFigures",
    "VariantResult",
    "PrepStepResult",
    "ProviderFigures",
    "ProviderResult",
    "OptimizeReport",
]

Outcome = Literal["chosen", "lost", "rejected", "failed", "skipped", "pending"]


class QualityFigures(BaseModel):
    metric: str
    score: float
    accuracy: float | None = None
    agreement: float | None = None
    cosine: float | None = None
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    nonfinite: int = 0
    cosine_p5: float | None = Field(None, description="5th percentile of per-sample cosine (embeddings)")
    relative_error: float | None = Field(None, description="relative L2 error to fp32 (regression)")
    sequence_exact: float | None = Field(None, description="share of decoded sequences equal to fp32's")
    cer: float | None = Field(None, description="character error rate of decoded sequences against fp32's")

    def task_figures(self) -> str:
        """The task's secondary figures in words (empty when there are none)."""
        parts = []
        if self.cosine_p5 is not None:
            parts.append(f"cosine mean {self.cosine:.4f}, 5th percentile {self.cosine_p5:.4f}")
        if self.relative_error is not None:
            parts.append(f"relative error {self.relative_error:.2%}")
        if self.sequence_exact is not None:
            parts.append(
                f"exact sequences {self.sequence_exact:.1%}, CER {self.cer:.2%} (greedy CTC vs fp32)"
            )
        return "; ".join(parts)


class VariantResult(BaseModel):
    """One variant: how it was built, what was measured, and the verdict."""

    name: str
    variant: Variant
    status: Literal["ok", "failed", "skipped"] = "ok"
    error: str | None = None
    file: str | None = Field(None, description="path inside the output directory, when kept")
    size_bytes: int | None = None
    bench: BenchResult | None = None
    quality: QualityFigures | None = None
    drop: float | None = Field(None, description="quality points lost against the fp32 baseline")
    speedup_p50: float | None = Field(None, description="baseline p50 / this p50")
    size_ratio: float | None = Field(None, description="baseline size / this size")
    score: float | None = Field(None, description="objective score used for ranking (lower wins)")
    interleaved: Interleaved | None = None
    excluded_nodes: list[str] = Field(default_factory=list)
    sparsity: float | None = None
    target_issues: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    build_s: float | None = None
    energy_mj: float | None = Field(
        None, description="p50 x the profile's power figure (see OptimizeReport.energy); None without one"
    )
    outcome: Outcome = "pending"
    reason: str = ""

    @property
    def p50(self) -> float | None:
        return self.bench.latency.p50_ms if self.bench else None

    @property
    def p95(self) -> float | None:
        return self.bench.latency.p95_ms if self.bench else None


class ProviderFigures(BaseModel):
    """One variant on one execution provider."""

    variant: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    init_ms: float | None = None
    drop: float | None = Field(None, description="quality points lost against fp32 on the CPU provider")
    ran_on: list[str] = Field(default_factory=list, description="providers the session really used")
    error: str | None = None


class ProviderResult(BaseModel):
    """Every working variant measured on one execution provider (or why it was not)."""

    provider: str
    status: Literal["measured", "not available here"]
    interpreter: str | None = Field(None, description="the Python that ran it, when not this one")
    onnxruntime: str | None = None
    note: str = ""
    variants: list[ProviderFigures] = Field(default_factory=list)
    best: str | None = Field(None, description="fastest variant within the quality budget on this provider")


class PrepStepResult(BaseModel):
    name: str
    applied: bool
    max_abs_err: float | None = None
    note: str = ""


def _short(v: VariantResult) -> str:
    """The first clause of the verdict, for narrow tables."""
    if v.outcome == "chosen":
        return "chosen: best within budget"
    text = v.reason or v.error or ""
    first = text.split("; ")[0]
    return first if len(first) <= 90 else first[:87] + "..."


class OptimizeReport(BaseModel):
    """What ``optimize()`` did and why it chose what it chose (``chosen`` is None when nothing fits)."""

    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    edgefleet_version: str = ""
    source: str
    source_format: str
    source_notes: list[str] = Field(default_factory=list)
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    task: str = "classification"
    task_reason: str = Field("", description="what the task was inferred from (or the --metric given)")
    score_output: str | None = None
    metric: str = "accuracy"
    objective: str = "balanced"
    budget: Budget
    profile: DeviceProfile
    calib_samples: int = 0
    eval_samples: int = 0
    data_notes: list[str] = Field(default_factory=list)
    preparation: list[PrepStepResult] = Field(default_factory=list)
    warnings: list[dict[str, str]] = Field(default_factory=list)
    baseline: str = "fp32"
    variants: list[VariantResult] = Field(default_factory=list)
    chosen: str | None = None
    chosen_file: str | None = None
    reason: str = ""
    bundle: str | None = None
    runtime: dict[str, str] = Field(default_factory=dict)
    providers: list[ProviderResult] = Field(
        default_factory=list, description="variants measured per execution provider (--providers)"
    )
    search: dict[str, Any] | None = Field(
        None, description="with a time budget: the budget, time taken, order tried and candidates skipped"
    )
    energy: dict[str, Any] | None = Field(
        None,
        description="energy per inference: method (rapl: package power measured by `device probe`; "
        "estimate: the profile's device.cpu_watts), watts; None when the profile has no power figure",
    )

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def chosen_result(self) -> VariantResult | None:
        return self.variant(self.chosen) if self.chosen else None

    def fill_energy(self) -> None:
        """Energy per inference of every measured variant: its p50 x the profile's power figure
        (``power.energy_per_inference``, the formula ``device fit`` uses). Idempotent."""
        from edgefleet.power._fit import energy_per_inference

        self.energy = None
        for v in self.variants:
            e = energy_per_inference(v.p50, self.profile)
            v.energy_mj = e[0] if e else None
            if e:
                self.energy = {"method": e[1], "watts": e[2], "basis": "p50 at batch 1 x watts"}

    @property
    def energy_header(self) -> str:
        """The energy column's title: ``energy mJ (est.)`` for an estimate, ``(RAPL)`` when measured."""
        m = (self.energy or {}).get("method")
        return "energy mJ (RAPL)" if m == "rapl" else "energy mJ (est.)"

    # --- rendering -------------------------------------------------------------------------------
    def table_rows(self) -> list[dict[str, str]]:
        """One row of display strings per variant (shared by Markdown and the CLI table)."""
        self.fill_energy()
        rows = []
        for v in self.variants:
            q = v.quality
            thr8 = None
            if v.bench:
                for t in v.bench.throughput:
                    if t.batch == 8 and t.samples_per_s:
                        thr8 = t.samples_per_s
            rows.append(
                {
                    "variant": v.name,
                    "outcome": v.outcome,
                    "size_kb": f"{v.size_bytes / 1024:.1f}" if v.size_bytes else "-",
                    "smaller": f"{v.size_ratio:.2f}x" if v.size_ratio else "-",
                    "p50_ms": f"{v.p50:.3f}" if v.p50 is not None else "-",
                    "p95_ms": f"{v.p95:.3f}" if v.p95 is not None else "-",
                    "speedup": f"{v.speedup_p50:.2f}x" if v.speedup_p50 else "-",
                    "thr8": f"{thr8:.0f}" if thr8 else "-",
                    "rss_mb": f"{v.bench.peak_rss_mb:.1f}"
                    if v.bench and v.bench.peak_rss_mb is not None
                    else "-",
                    "energy_mj": f"{v.energy_mj:.3f}" if v.energy_mj is not None else "\u2014",
                    "quality": f"{q.score:.2f}" if q else "-",
                    "drop": f"{v.drop:+.2f}" if v.drop is not None else "-",
                    "reason": v.reason or (v.error or ""),
                    "short": _short(v),
                }
            )
        return rows

    def to_markdown(self) -> str:
        self.fill_energy()
        b = self.budget
        lines = [
            "# edgefleet optimize report",
            "",
            f"- source: {self.source} ({self.source_format})",
            f"- task: {self.task}, quality metric: **{self.metric}** on output `{self.score_output}` "
            f"({self.eval_samples} evaluation samples, {self.calib_samples} calibration samples)"
            + (f"; inferred from: {self.task_reason}" if self.task_reason else ""),
            f"- objective: **{self.objective}**; budget: max drop {b.max_drop} points"
            + (f", min quality {b.min_quality}" if b.min_quality is not None else "")
            + (f", p95 <= {b.latency_p95_ms} ms" if b.latency_p95_ms else "")
            + (f", RAM <= {b.ram_mb} MB" if b.ram_mb else "")
            + (f", size <= {b.size_mb} MB" if b.size_mb else ""),
            f"- device profile: {self.profile.name} ({self.profile.cores} threads, "
            f"{', '.join(self.profile.execution_providers)}, flags: {', '.join(self.profile.flags) or 'none'})",
            "- runtime: " + ", ".join(f"{k} {v}" for k, v in self.runtime.items()),
            "",
            f"## Chosen: {self.chosen or 'none'}",
            "",
            self.reason,
            "",
        ]
        if self.search:
            sk = self.search.get("skipped") or []
            lines += [
                "## Search",
                "",
                f"- time budget {self.search['time_budget_s']:g} s, took {self.search['elapsed_s']:g} s; "
                f"candidates in order of expected value: {', '.join(self.search['order'])}",
                f"- skipped for time: {', '.join(sk) if sk else 'none'}",
                "",
            ]
        if self.warnings:
            lines += ["## Pre-flight warnings", ""]
            lines += [f"- `{w['code']}`: {w['message']}" for w in self.warnings]
            lines.append("")
        if self.preparation:
            lines += ["## Preparation (each step checked by output parity)", ""]
            for s in self.preparation:
                err = f", max abs err {s.max_abs_err:.2e}" if s.max_abs_err is not None else ""
                lines.append(f"- {s.name}: {'applied' if s.applied else 'not applied'}{err} — {s.note}")
            lines.append("")
        lines += [
            "## Variants",
            "",
            "| variant | outcome | size KB | smaller | p50 ms | p95 ms | speed-up | batch-8 /s | RSS MB "
            f"| {self.energy_header} | {self.metric} | drop | why |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.table_rows():
            lines.append(
                f"| {r['variant']} | {r['outcome']} | {r['size_kb']} | {r['smaller']} | {r['p50_ms']} | "
                f"{r['p95_ms']} | {r['speedup']} | {r['thr8']} | {r['rss_mb']} | {r['energy_mj']} | {r['quality']} | "
                f"{r['drop']} | {r['reason'].replace('|', '/')} |"
            )
        lines.append("")
        if self.energy:
            e = self.energy
            what = (
                "package power RAPL measured during `edgefleet device probe`"
                if e["method"] == "rapl"
                else "the profile's `device.cpu_watts` (an estimate, not a measurement)"
            )
            lines += [f"Energy per inference: p50 x {e['watts']:g} W, {what}.", ""]
        else:
            lines += [
                "Energy per inference: \u2014 (the profile has no power figure: `device.cpu_watts` "
                "or a RAPL measurement from `edgefleet device probe`).",
                "",
            ]
        lines += ["## Notes per variant", ""]
        for v in self.variants:
            extra = list(v.notes)
            if v.quality is not None and (figs := v.quality.task_figures()):
                extra.insert(0, figs)
            if v.interleaved:
                il = v.interleaved
                extra.append(
                    f"interleaved check vs baseline: p50 ratio {il.median_ratio:.3f} over {il.rounds} rounds "
                    f"(noise tolerance ±{il.tolerance:.1%}) -> {il.verdict}"
                )
            if v.excluded_nodes:
                extra.append(
                    "kept in float: "
                    + ", ".join(v.excluded_nodes[:12])
                    + (" ..." if len(v.excluded_nodes) > 12 else "")
                )
            if v.target_issues:
                extra.append("device runtime: " + "; ".join(v.target_issues))
            if v.bench:
                bb = v.bench
                extra.append(
                    f"init {bb.init_ms:.1f} ms, first inference {bb.first_inference_ms:.2f} ms, "
                    f"mean {bb.latency.mean_ms:.3f} ± {bb.latency.std_ms:.3f} ms, p90 {bb.latency.p90_ms:.3f}, "
                    f"p99 {bb.latency.p99_ms:.3f} ms, compressed {bb.compressed_bytes / 1024:.1f} KB; throughput "
                    + ", ".join(
                        f"b{t.batch}: {t.samples_per_s:.0f}/s" if t.samples_per_s else f"b{t.batch}: {t.note}"
                        for t in bb.throughput
                    )
                )
            if extra:
                lines.append(f"- **{v.name}**: " + "; ".join(extra))
        lines.append("")
        if self.providers:
            lines += self._provider_lines()
        if self.data_notes:
            lines += ["## Data", ""] + [f"- {n}" for n in self.data_notes] + [""]
        return "\n".join(lines)

    def _provider_lines(self) -> list[str]:
        lines = [
            "## Execution providers",
            "",
            "Each working variant run by each provider (p50/p95 at batch 1, quality drop against fp32 on the "
            "CPU provider); a provider that cannot run here is not measured, and nothing is estimated for it.",
            "",
            "| provider | variant | p50 ms | p95 ms | init ms | drop | ran on | note |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ]
        for p in self.providers:
            if p.status != "measured":
                lines.append(f"| {p.provider} | - | - | - | - | - | - | not measured: {p.status}; {p.note} |")
                continue
            where = f"onnxruntime {p.onnxruntime}" + (f" in {p.interpreter}" if p.interpreter else "")
            for f in p.variants:
                fmt = lambda x: f"{x:.3f}" if x is not None else "-"  # noqa: E731
                note = f.error or ("best within budget" if f.variant == p.best else "")
                lines.append(
                    f"| {p.provider} | {f.variant} | {fmt(f.p50_ms)} | {fmt(f.p95_ms)} | "
                    f"{f.init_ms:.0f} | {f.drop:+.2f} | {', '.join(f.ran_on)} | {note} ({where}) |"
                    if f.error is None
                    else f"| {p.provider} | {f.variant} | - | - | - | - | - | failed: {f.error} |"
                )
        return [*lines, ""]

    def plot(self, path: Path) -> Path:
        """PNG: p50 latency (x) against quality (y), marker area proportional to file size."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [v for v in self.variants if v.p50 is not None and v.quality and v.size_bytes]
        fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
        if pts:
            biggest = max(v.size_bytes or 1 for v in pts)
            colors = {"chosen": "tab:green", "lost": "tab:blue", "rejected": "tab:red"}
            for v in pts:
                area = 40 + 1400 * (v.size_bytes or 0) / biggest
                ax.scatter(
                    v.p50,
                    v.quality.score,  # type: ignore[union-attr]
                    s=area,
                    alpha=0.55,
                    color=colors.get(v.outcome, "tab:gray"),
                    edgecolors="black" if v.outcome == "chosen" else "none",
                    linewidths=2 if v.outcome == "chosen" else 0,
                )
                ax.annotate(
                    v.name, (v.p50, v.quality.score), fontsize=7, xytext=(4, 4), textcoords="offset points"
                )  # type: ignore[arg-type,union-attr]
            base = next((v for v in pts if v.name == self.baseline), None)
            if base and base.quality:
                ax.axhline(base.quality.score - self.budget.max_drop, color="tab:red", ls="--", lw=0.8)
                ax.axvline(base.p50, color="gray", ls=":", lw=0.8)  # type: ignore[arg-type]
        ax.set_xlabel("p50 latency at batch 1 (ms)")
        ax.set_ylabel(f"{self.metric} (points)")
        ax.set_title(
            f"{Path(self.source).name}: latency vs {self.metric} (marker area = file size); chosen: {self.chosen or 'none'}",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
