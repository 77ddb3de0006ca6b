"""A successor of a published release: a new model optimized with the parent's budget, bundled per variant.

The retraining job (``edgefleet retrain run``) and the federated export (``edgefleet fl export --repo``)
both make their releases here. For each variant the parent release published, the new model goes
through the optimizer with that variant's budget as its lineage recorded it (objective, accuracy budget
``max_drop``, the variant the optimizer chose then): the fp32 baseline and the parent's choice are built,
measured and scored, and the optimizer picks again. Each bundle keeps the parent variant's name, contracts
(preprocess, postprocess, budgets, runtime) and lineage tags, and records the optimizer's choice and why
each other candidate lost (``lineage.optimization``); the caller adds its own tags (job, data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.errors import NotFoundError

__all__ = ["ParentRelease", "optimize_and_bundle"]


@dataclass
class ParentRelease:
    """A published release (every variant of one name+version) in a repository."""

    repo: Any
    name: str
    version: str
    variants: list[Any]  # PublishedBundle with manifests

    @classmethod
    def find(cls, repo: Any, name: str, version: str | None = None) -> ParentRelease:
        """``name`` at ``version`` (default: the newest published) in ``repo``.

        Raises:
            NotFoundError: nothing of ``name``, or not that version, is published.
        """
        from edgefleet.registry._published import semver_key

        published = repo.list_versions(name)
        if not published:
            raise NotFoundError(f"{name} is not published in {repo.repo_dir}", hint="publish a first release")
        version = version or max((b.version for b in published), key=semver_key)
        variants = [repo.show(b.name, b.version, b.variant) for b in published if b.version == version]
        if not variants:
            raise NotFoundError(
                f"{name} {version} is not published in {repo.repo_dir}",
                hint=f"published: {', '.join(sorted({b.version for b in published}, key=semver_key))}",
            )
        return cls(repo, name, version, variants)

    @contextlib.contextmanager
    def open_float(self) -> Iterator[Any]:
        """The parent's float build (``fp32`` when published, else its first variant) as an open Bundle."""
        from edgefleet.bundle import Bundle

        def is_float(b: Any) -> bool:
            return (b.manifest.lineage.optimization or {}).get("variant") == "fp32" if b.manifest else False

        pick = next((b for b in self.variants if is_float(b)), self.variants[0])
        bundle = Bundle.open(self.repo.target_file(pick.target_path))
        try:
            yield bundle
        finally:
            bundle.close()


def budget_of(manifest: Any) -> dict[str, Any]:
    """The optimizer budget a published variant was made with (from its lineage; defaults when absent)."""
    opt = dict(manifest.lineage.optimization or {})
    return {
        "variant": str(opt.get("variant") or "fp32"),
        "objective": str(opt.get("objective", "size")),
        "max_drop": float(opt.get("max_drop", 1.0)),
    }


def candidates(report: Any) -> list[dict[str, str]]:
    """Every variant the optimizer tried: its outcome and, for the losers, why (the report's short reason)."""
    return [
        {"variant": r["variant"], "outcome": r["outcome"], "why": r["reason"] or r["short"]}
        for r in report.table_rows()
    ]


def optimize_and_bundle(
    parent: ParentRelease,
    model: Path,
    *,
    version: str,
    work_dir: Path,
    calib: Path,
    eval: Path,  # noqa: A002 (the optimizer's own name for it)
    inputs_raw: Any,
    reference_raw: Any,
    preprocess: list[dict[str, Any]] | None,
    tags: dict[str, str],
    dataset_sha256: str | None = None,
    settings: Any = None,
    on_report: Callable[[str, Any, Path], None] | None = None,
) -> list[dict[str, Any]]:
    """Optimize ``model`` for each of ``parent``'s variants with that variant's budget and bundle it.

    ``calib`` and ``eval`` are the optimizer's ``.npz`` files (model inputs; ``eval`` with ``labels``);
    ``inputs_raw``/``reference_raw`` the bundle's golden and drift-reference inputs (raw, before
    ``preprocess``). ``tags`` are added to the parent variant's lineage tags. ``on_report(variant, report,
    out_dir)`` is called after each optimizer run (the retraining job logs it to MLflow).

    Returns one record per variant: ``variant``, ``chosen``, ``accuracy``, ``size_bytes``, ``report``,
    ``archive`` and ``candidates`` (every tried variant's outcome and why it lost).
    """
    from edgefleet.bundle import create_bundle
    from edgefleet.optimize import optimize
    from edgefleet.protocol import LatencyStats, Lineage, Metrics

    runs = []
    for b in parent.variants:
        m = b.manifest
        budget = budget_of(m)
        tried = ["fp32"] if budget["variant"] == "fp32" else ["fp32", budget["variant"]]  # the baseline first
        out_dir = Path(work_dir) / "optimize" / b.variant
        rep = optimize(
            model,
            calib=calib,
            eval=eval,
            max_drop=budget["max_drop"],
            objective=budget["objective"],
            variants=tried,
            out_dir=out_dir,
            keep_variants=True,
            overwrite=True,
            settings=settings,
        )
        chosen = rep.variant(rep.chosen)
        if on_report is not None:
            on_report(b.variant, rep, out_dir)
        lat = chosen.bench.latency if chosen.bench else None
        metrics = Metrics(
            accuracy=chosen.quality.accuracy if chosen.quality else None,
            latency={rep.profile.name: LatencyStats.model_validate(lat, from_attributes=True)} if lat else {},
            size_bytes=chosen.size_bytes,
        )
        tried_out = candidates(rep)
        lineage = Lineage(
            parent_version=parent.version,
            dataset_sha256=dataset_sha256,
            optimization={
                "variant": chosen.name,
                "objective": rep.objective,
                "max_drop": rep.budget.max_drop,
                "metric": rep.metric,
                "profile": rep.profile.name,
                "parent_variant": budget["variant"],
                "candidates": tried_out,
                "report": str(out_dir / "report.json"),
            },
            source_commit=m.lineage.source_commit,
            tags={**dict(m.lineage.tags or {}), "parent_release": f"{parent.name}@{parent.version}", **tags},
        )
        archive = create_bundle(
            out_dir / chosen.file,
            Path(work_dir) / "bundles" / f"{parent.name}-{version}-{b.variant}.tar",
            name=parent.name,
            version=version,
            variant=b.variant,
            inputs_raw=inputs_raw,
            reference_raw=reference_raw,
            preprocess=preprocess,
            postprocess=m.postprocess,
            metrics=metrics,
            lineage=lineage,
            budgets=m.budgets,
            runtime=m.runtime,
        )
        runs.append(
            {
                "variant": b.variant,
                "chosen": chosen.name,
                "accuracy": chosen.quality.score if chosen.quality else None,
                "size_bytes": chosen.size_bytes,
                "report": str(out_dir / "report.json"),
                "archive": str(archive),
                "candidates": tried_out,
            }
        )
    return runs
