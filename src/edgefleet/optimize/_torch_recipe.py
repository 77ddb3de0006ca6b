"""One recipe for torch models: teacher -> (distill into a student) -> (structured prune, each step
fine-tuned by distillation from the teacher) -> export -> the quantization variants -> selection ->
(QAT when every post-training int8 variant loses more than the budget) -> report.

Every stage is measured the same way (parameters, MACs, ONNX size, p50/p95 on the profile, accuracy on
the evaluation data) and written to ``recipe.json`` / ``recipe.md`` beside the optimizer's own report,
whose table says why each quantization variant lost.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import BudgetNotMetError, ConfigError
from edgefleet.optimize._distill import DistillConfig, distill, read_training_data
from edgefleet.optimize._recipe import StageProgress, StageResult, distill_stage, measure_stage
from edgefleet.optimize._students import load_torch_module

__all__ = ["RecipeReport", "energy_cell", "optimize_torch", "QAT_MODES"]

QAT_MODES = ("auto", "on", "off")
_INT8 = ("static-int8", "dynamic-int8")


@dataclass
class RecipeReport:
    stages: list[StageResult] = field(default_factory=list)
    chosen: str | None = None
    reason: str = ""
    qat: str = "not needed"
    notes: list[str] = field(default_factory=list)
    optimize: Any = None  # the OptimizeReport of the last float network

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": [asdict(s) for s in self.stages],
            "chosen": self.chosen,
            "reason": self.reason,
            "qat": self.qat,
            "notes": self.notes,
        }

    @property
    def energy_header(self) -> str:
        """``energy mJ (est.)``, or ``(RAPL)`` when the profile's power figure was measured by RAPL."""
        rapl = any(s.energy_method == "rapl" for s in self.stages)
        return "energy mJ (RAPL)" if rapl else "energy mJ (est.)"

    def markdown(self) -> str:
        lines = [
            "# edgefleet torch recipe",
            "",
            f"| stage | params | MACs | size KB | p50 ms | p95 ms | {self.energy_header} | score | notes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in self.stages:
            lines.append(
                f"| {s.stage} | {s.params:,} | {s.macs:,} | {(s.size_bytes or 0) / 1024:.1f} | "
                f"{s.p50_ms or 0:.4f} | {s.p95_ms or 0:.4f} | {energy_cell(s)} | {s.score_name} {s.score or 0:.4f} | "
                f"{'; '.join(s.notes)} |"
            )
        lines += ["", f"QAT: {self.qat}", "", f"chosen variant: {self.chosen or 'none'} — {self.reason}", ""]
        lines += [f"- {n}" for n in self.notes]
        lines.append("\nEvery quantization variant's figures and why it lost: report.md.")
        return "\n".join(lines) + "\n"


def energy_cell(s: StageResult) -> str:
    """A stage's energy per inference for a table: mJ to 3 decimals, or an em dash without a power figure."""
    return f"{s.energy_mj:.3f}" if s.energy_mj is not None else "\u2014"


def _module(m: Any, what: str) -> Any:
    return load_torch_module(Path(m), what) if isinstance(m, (str, Path)) else m


def _eval_arrays(eval_src: Any, labels: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(eval_src, dict):
        x, y = np.asarray(eval_src["input"], np.float32), eval_src.get("labels")
    else:
        x, y = read_training_data(Path(eval_src), "evaluation data")
    if labels is not None:
        y = np.load(labels, allow_pickle=False) if isinstance(labels, (str, Path)) else np.asarray(labels)
    return x, (np.asarray(y, np.int64) if y is not None else None)


def optimize_torch(
    model: Any,
    *,
    train: Any,
    calib: Any,
    eval: Any,  # noqa: A002 - mirrors optimize()
    out_dir: str | Path,
    teacher: Any = None,
    student: str | None = None,
    prune: float | None = None,
    prune_importance: str = "magnitude",
    prune_global: bool = False,
    prune_steps: int = 1,
    unlabeled: Any = None,
    labels: Any = None,
    max_drop: float = 1.0,
    qat_mode: str = "auto",
    distill_config: DistillConfig | None = None,
    on_epoch: StageProgress | None = None,
    **optimize_kwargs: Any,
) -> RecipeReport:
    """Run the recipe on a torch ``model`` (module or ``torch.save`` file); see the module docstring.

    ``train`` is an .npz (``input``, optional ``labels``) or ``(x, y)``; ``calib``/``eval``/``labels`` and
    ``optimize_kwargs`` go to ``optimize()``. Raises BudgetNotMetError like ``optimize()`` (the recipe
    files are written first).
    """
    from edgefleet.optimize._optimize import optimize
    from edgefleet.optimize._prune import structured_prune
    from edgefleet.optimize._qat import export_qdq, qat

    if qat_mode not in QAT_MODES:
        raise ConfigError(f"qat mode {qat_mode!r} is unknown", hint=f"use one of {', '.join(QAT_MODES)}")
    net0 = _module(model, "model")
    teach = _module(teacher, "teacher") if teacher is not None else net0
    x_tr, y_tr = train if isinstance(train, tuple) else read_training_data(Path(train), "training data")
    extra = read_training_data(Path(unlabeled), "unlabeled data")[0] if unlabeled is not None else None
    x_ev, y_ev = _eval_arrays(eval, labels)
    cfg = distill_config or DistillConfig()
    settings, profile = optimize_kwargs.get("settings"), optimize_kwargs.get("profile")
    rep = RecipeReport()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="edgefleet-recipe-") as tmp:
        work = Path(tmp)

        def measure(stage: str, m: Any, **kw: Any) -> StageResult:
            s = measure_stage(stage, m, x_ev, y_ev, work, profile=profile, settings=settings, **kw)
            rep.stages.append(s)
            return s

        measure("teacher", teach).notes.append("the reference every stage is distilled from")
        net = copy.deepcopy(net0)
        if teach is not net0:
            measure("model", net0)
        if student is not None:
            net, res, cands = distill_stage(
                teach, student, x_tr, y_tr, unlabeled=extra, config=cfg, max_drop=max_drop, on_epoch=on_epoch
            )
            s = measure(f"student {next(c.name for c in cands if c.chosen)} (distilled)", net)
            s.notes.append(
                f"best epoch {res.best_epoch}; candidates: "
                + ", ".join(
                    f"{c.name} {c.params:,} params {c.score:.3f}{' front' if c.on_front else ''}"
                    for c in cands
                )
            )
        if prune is not None:
            steps = max(1, prune_steps)

            def fine_tune(m: Any, step: int) -> None:
                def tick(ep: int, total: int, rec: dict[str, float]) -> None:
                    if on_epoch is not None:
                        on_epoch(f"prune step {step} fine-tune", ep, total, rec)

                ft = cfg.model_copy(update={"epochs": max(1, cfg.epochs // steps), "seed": cfg.seed + step})
                distill(teach, m, x_tr, y_tr, unlabeled=extra, config=ft, on_epoch=tick)

            pr = structured_prune(
                net,
                x_tr,
                prune,
                y=y_tr,
                importance=prune_importance,
                global_pruning=prune_global,
                steps=steps,
                fine_tune=fine_tune,
            )
            net = pr.model
            measure(
                f"pruned {prune:.0%} ({prune_importance}{', global' if prune_global else ''})", net
            ).notes += pr.notes
        float_stage = rep.stages[-1]
        error: BudgetNotMetError | None = None
        try:
            report = optimize(
                net, calib=calib, eval=eval, labels=labels, max_drop=max_drop, out_dir=out, **optimize_kwargs
            )
        except BudgetNotMetError as e:
            error, report = e, getattr(e, "report", None)
        rep.optimize = report
        if report is not None:
            rep.chosen, rep.reason = report.chosen, report.reason
            int8 = [v for v in report.variants if v.variant.kind in _INT8 and v.status == "ok"]
            over = bool(int8) and all((v.drop or 0) > max_drop for v in int8)
            if qat_mode == "on" or (qat_mode == "auto" and over):
                q, _ = qat(
                    net,
                    x_tr,
                    y_tr,
                    config=cfg.model_copy(update={"epochs": max(2, cfg.epochs // 3), "lr": cfg.lr / 10}),
                )
                path = export_qdq(q, x_ev[:1], work / "qat.onnx")
                s = measure("QAT int8 (QDQ)", q, onnx_path=path, counted=net)
                drop = ((float_stage.score or 0) - (s.score or 0)) * 100
                best = min((v.drop or 0) for v in int8) if int8 else None
                ok = drop <= max_drop
                rep.qat = (
                    (
                        f"post-training int8 lost {best:.2f} points (over the {max_drop:g}-point budget); "
                        if best is not None and over
                        else "requested; "
                    )
                    + f"QAT loses {drop:.2f} points: "
                    + ("within the budget" if ok else "still over the budget")
                )
                s.notes.append(rep.qat)
                if ok:
                    import shutil

                    shutil.copyfile(path, out / "model-qat.onnx")
                    rep.notes.append(
                        "model-qat.onnx is the QAT int8 model within the budget; model.onnx is the optimizer's choice"
                        " among post-training variants"
                    )
            elif over is False and int8:
                rep.qat = f"not needed: post-training int8 lost {min(v.drop or 0 for v in int8):.2f} points"
        if out.is_dir():
            (out / "recipe.json").write_text(json.dumps(rep.to_json(), indent=2))
            (out / "recipe.md").write_text(rep.markdown())
    if error is not None:
        error.recipe = rep  # type: ignore[attr-defined]
        raise error
    return rep
