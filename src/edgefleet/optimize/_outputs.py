"""What ``optimize()`` writes: the chosen model (and the kept variants), the reports and plot, and the bundle."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import OptimizeError
from edgefleet.optimize._data import Dataset
from edgefleet.optimize._report import OptimizeReport, VariantResult

__all__ = ["make_bundle", "write_outputs", "write_reports"]

log = logging.getLogger("edgefleet.optimize._optimize")


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return (s or "cpu")[:64]


def write_outputs(
    report: OptimizeReport,
    chosen: VariantResult | None,
    built_paths: dict[str, Path],
    tmp: Path,
    keep_variants: bool,
    suffix: str,
) -> None:
    if keep_variants:
        vdir = tmp / "variants"
        vdir.mkdir()
        for r in report.variants:
            p = built_paths.get(r.name)
            if p is not None and r.status == "ok":
                shutil.copyfile(p, vdir / f"{r.name}{suffix}")
                r.file = f"variants/{r.name}{suffix}"
    if chosen is not None:
        dst = tmp / f"model{suffix}"
        shutil.copyfile(built_paths[chosen.name], dst)
        report.chosen = chosen.name
        report.chosen_file = dst.name


def write_reports(report: OptimizeReport, tmp: Path) -> None:
    report.fill_energy()
    (tmp / "report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    (tmp / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    try:
        report.plot(tmp / "plot.png")
    except Exception as e:  # noqa: BLE001 - a plot problem must not lose the run
        log.warning("plot failed: %s", e)


def make_bundle(
    report: OptimizeReport,
    chosen: VariantResult,
    model_path: Path,
    tmp: Path,
    evald: Dataset,
    opts: dict[str, Any],
    source: Any,
    eval_src: Any = None,
    preprocess: Any = None,
) -> str:
    """Package the winner as a bundle archive, with its measured figures in the manifest metrics."""
    try:
        from edgefleet.bundle import create_bundle
    except ImportError as e:  # pragma: no cover - the bundle package ships with edgefleet
        raise OptimizeError(
            "bundling needs edgefleet.bundle.create_bundle, which this installation lacks",
            hint="run without --bundle, then bundle the written model.onnx",
        ) from e
    from edgefleet.optimize._data import iter_batches
    from edgefleet.optimize._runner import TensorInfo
    from edgefleet.protocol import Budgets, LatencyStats, Lineage, Metrics, RuntimeRequirements

    q = chosen.quality
    lat = chosen.bench.latency if chosen.bench else None
    extra = {
        "quality_drop": chosen.drop,
        "speedup_p50": chosen.speedup_p50,
        "size_ratio": chosen.size_ratio,
        "peak_rss_mb": chosen.bench.peak_rss_mb if chosen.bench else None,
        "cosine": q.cosine if q else None,
        "max_abs_err": q.max_abs_err if q else None,
    }
    metrics = Metrics(
        accuracy=q.accuracy if q else None,
        agreement=q.agreement if q else None,
        latency={
            report.profile.name: LatencyStats(
                mean_ms=lat.mean_ms,
                p50_ms=lat.p50_ms,
                p90_ms=lat.p90_ms,
                p95_ms=lat.p95_ms,
                p99_ms=lat.p99_ms,
            )
        }
        if lat
        else {},
        size_bytes=chosen.size_bytes,
        extra={k: float(v) for k, v in extra.items() if v is not None},
    )
    lineage = Lineage(
        optimization={
            "variant": chosen.name,
            "objective": report.objective,
            "max_drop": report.budget.max_drop,
            "metric": report.metric,
            "profile": report.profile.name,
            "excluded_nodes": chosen.excluded_nodes,
            "source": source.origin,
        }
    )
    kwargs = dict(opts)
    name = str(kwargs.pop("name", None) or "model")
    version = str(kwargs.pop("version", None) or "0.1.0")
    variant = str(kwargs.pop("variant", None) or _slug(f"{report.profile.name}-{chosen.name}"))
    kwargs.setdefault(
        "budgets",
        Budgets(latency_p95_ms=report.profile.latency_budget_ms, ram_mb=report.profile.ram_budget_mb),
    )
    kwargs.setdefault(
        "runtime", RuntimeRequirements(execution_providers=list(report.profile.execution_providers))
    )
    if (
        "inputs_raw" not in kwargs
        and preprocess is not None
        and isinstance(eval_src, (str, Path))
        and Path(eval_src).is_dir()
    ):
        # Image folders: the golden inputs are the raw image files, run through the same contract.
        from edgefleet.optimize._data import image_files

        kwargs["inputs_raw"] = [f.read_bytes() for f, _ in image_files(Path(eval_src))[0][:8]]
        kwargs.setdefault("preprocess", preprocess)
    if "inputs_raw" not in kwargs:
        # Golden inputs: the first evaluation batch, as model inputs (no contract to re-apply).
        specs = [
            TensorInfo(i["name"], np.dtype(i["dtype"]), tuple(i["shape"]) or None) for i in report.inputs
        ]
        feed, _n = next(iter_batches(evald.head(8), specs, 8))
        kwargs["inputs_raw"] = next(iter(feed.values())) if len(feed) == 1 else feed
        kwargs.pop("preprocess", None)
    suffix = model_path.suffix
    out = tmp / f"{name}-{version}-{variant}.tar"
    try:
        create_bundle(
            model_path.with_suffix(suffix),
            out,
            name=name,
            version=version,
            variant=variant,
            metrics=metrics,
            lineage=lineage,
            **kwargs,
        )
    except TypeError as e:
        raise OptimizeError(
            f"create_bundle rejected the bundle options: {e}", hint="check the bundle options"
        ) from e
    return out.name
