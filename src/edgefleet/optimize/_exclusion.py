"""Sensitive-node exclusion: a quantized variant over its quality budget is rebuilt with its worst-ranked nodes
kept in float (1, 2, 4, ... of them) until the budget is met or the rounds run out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefleet.optimize._build import Builder
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._data import Dataset
from edgefleet.optimize._quality import Task, measure_quality
from edgefleet.optimize._report import QualityFigures, VariantResult
from edgefleet.optimize._sensitivity import rank_static, rank_weights
from edgefleet.optimize._spec import Budget, Variant

__all__ = ["keep_sensitive_in_float"]


def keep_sensitive_in_float(
    v: Variant,
    res: VariantResult,
    builder: Builder,
    float_model: Path,
    qmodel: Path,
    calib: Dataset,
    evaluate: Callable[[Path], dict[str, list[np.ndarray]]],
    task: Task,
    ref: dict[str, list[np.ndarray]],
    evald: Dataset,
    base_quality: float,
    budget: Budget,
    settings: OptimizeConfig,
    work: Path,
) -> tuple[VariantResult, Path] | None:
    """Re-quantize keeping 1, 2, 4, ... of the worst-ranked nodes in float until the budget is met."""
    try:
        if v.kind == "static-int8" and v.quant_format == "qdq":
            ranking = rank_static(float_model, qmodel, calib.samples[: settings.debug_samples], work)
            method = "qdq_loss_debug activation SQNR"
        else:
            bits = 4 if v.kind == "int4" else 8
            ranking = rank_weights(
                float_model,
                bits=bits,
                block=(v.block_size or settings.int4_block_size) if bits == 4 else None,
            )
            method = f"{bits}-bit weight SQNR"
    except Exception as e:  # noqa: BLE001 - ranking is best effort; the variant just stays rejected
        res.notes.append(f"sensitive-node ranking failed: {str(e)[:160]}")
        return None
    groups = [g for g, _ in ranking]
    if not groups:
        res.notes.append("no quantized node to keep in float")
        return None
    tried = []
    k = 1
    best: tuple[VariantResult, Path] | None = None
    for rnd in range(settings.max_exclusion_rounds):
        exclude = [n for g in groups[:k] for n in g]
        tag = f"-x{k}"
        try:
            built = builder.build(v, exclude=exclude, tag=tag)
            outs = evaluate(built.path)
        except Exception as e:  # noqa: BLE001
            tried.append(f"round {rnd + 1} ({len(exclude)} nodes): failed {str(e)[:80]}")
            break
        q = measure_quality(task, ref, outs, evald.labels)
        drop = base_quality - q.score
        tried.append(f"{len(exclude)} nodes in float -> drop {drop:.2f}")
        r = VariantResult(
            name=f"{v.name}{tag}",
            variant=v,
            size_bytes=built.path.stat().st_size,
            quality=QualityFigures(**q.__dict__),
            drop=drop,
            excluded_nodes=list(exclude),
            notes=[*built.notes, f"sensitive nodes ranked by {method}"],
        )
        best = (r, built.path)
        if drop <= budget.max_drop or k >= len(groups):
            break
        k = min(len(groups), k * 2)
    res.notes.append("sensitive-node exclusion: " + "; ".join(tried))
    if best is not None:
        best[0].notes.append("exclusion rounds: " + "; ".join(tried))
        if best[0].drop is not None and best[0].drop > budget.max_drop:
            best[0].notes.append(
                "still over budget"
                + (
                    " with every ranked node in float"
                    if k >= len(groups)
                    else f" after {settings.max_exclusion_rounds} rounds"
                )
            )
    return best
