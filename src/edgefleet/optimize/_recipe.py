"""Structural stages of the optimizer for torch models: distill (one student or ``auto`` widths on a Pareto
front), structured pruning and QAT, each measured (parameters, MACs, validation score) so the recipe's
report shows what every stage gave."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.optimize._distill import DistillConfig, DistillResult, distill
from edgefleet.optimize._students import build_student, parse_student

__all__ = ["StageResult", "Candidate", "distill_stage", "macs_params", "pareto_front"]

StageProgress = Callable[[str, int, int, dict[str, float]], None]


@dataclass
class StageResult:
    """One stage of the recipe and what it gave (filled in as the recipe measures it)."""

    stage: str
    params: int
    macs: int
    score: float | None = None
    score_name: str = "accuracy"
    size_bytes: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    energy_mj: float | None = None  # p50 x the profile's power figure (power.energy_per_inference)
    energy_method: str | None = None  # "rapl" or "estimate"; None: the profile has no power figure


@dataclass
class Candidate:
    name: str
    params: int
    macs: int
    score: float
    best_epoch: int
    on_front: bool = False
    chosen: bool = False


def macs_params(model: Any, example: Any) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass on ``example`` and the parameter count (torch-pruning)."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    return int(macs), int(params)


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other one beats on both size (fewer parameters) and score."""
    front = [
        c
        for c in cands
        if not any(
            (o.params <= c.params and o.score >= c.score) and (o.params < c.params or o.score > c.score)
            for o in cands
        )
    ]
    for c in front:
        c.on_front = True
    return sorted(front, key=lambda c: c.params)


def distill_stage(
    teacher: Any,
    student_spec: str,
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    unlabeled: np.ndarray | None = None,
    config: DistillConfig | None = None,
    out_dir: Path | None = None,
    max_drop: float = 1.0,
    on_epoch: StageProgress | None = None,
) -> tuple[Any, DistillResult, list[Candidate]]:
    """Distill ``teacher`` into the student ``student_spec`` names; ``auto`` tries a few widths and keeps
    the smallest student on the (parameters, validation score) Pareto front within ``max_drop`` points
    of the teacher (else the best-scoring one). Returns (student, its training result, every candidate)."""
    import torch

    cfg = config or DistillConfig()
    example = torch.from_numpy(x[:1])
    kind, value = parse_student(student_spec)
    widths: list[float | None] = list(value) if kind == "auto" else [None]
    runs: list[tuple[Candidate, Any, DistillResult]] = []
    for w in widths:
        name = f"width{w:g}" if w is not None else student_spec
        student = build_student(student_spec, teacher, example, width=w)
        sub = (out_dir / "students" / name) if (out_dir is not None and kind == "auto") else out_dir

        def tick(ep: int, total: int, rec: dict[str, float], _n: str = name) -> None:
            if on_epoch is not None:
                on_epoch(f"distill {_n}", ep, total, rec)

        res = distill(teacher, student, x, y, unlabeled=unlabeled, config=cfg, out_dir=sub, on_epoch=tick)
        macs, params = macs_params(student, example)
        runs.append((Candidate(name, params, macs, res.best_score, res.best_epoch), student, res))
    cands = [c for c, _, _ in runs]
    front = pareto_front(cands)
    teacher_score = runs[0][2].teacher_score
    within = [c for c in front if (teacher_score - c.score) * 100 <= max_drop]
    pick = within[0] if within else max(front, key=lambda c: c.score)
    pick.chosen = True
    chosen = next((s, r) for c, s, r in runs if c is pick)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if kind == "auto":  # the chosen student's log, curve and checkpoints at the top, like one student's
            src = out_dir / "students" / pick.name
            for f in ("training_log.jsonl", "learning_curve.png"):
                shutil.copyfile(src / f, out_dir / f)
            shutil.copytree(src / "checkpoints", out_dir / "checkpoints", dirs_exist_ok=True)
        (out_dir / "candidates.json").write_text(
            json.dumps({"teacher_score": teacher_score, "candidates": [asdict(c) for c in cands]}, indent=2)
        )
    return chosen[0], chosen[1], cands


def measure_stage(
    stage: str,
    model: Any,
    x_eval: np.ndarray,
    y_eval: np.ndarray | None,
    work: Path,
    *,
    onnx_path: Path | None = None,
    profile: Any = None,
    settings: Any = None,
    ref: np.ndarray | None = None,
    counted: Any = None,
) -> StageResult:
    """Parameters and MACs of ``model``; size, p50/p95 (benchmark on ``profile``) and accuracy (or
    agreement with ``ref`` logits) of its ONNX export (``onnx_path`` if given, e.g. a QDQ file). MACs and
    parameters are those of ``counted`` when given (a fake-quant model computes through wrappers)."""
    import onnxruntime as ort
    import torch

    from edgefleet.optimize._bench import benchmark
    from edgefleet.optimize._convert import load_source

    example = torch.from_numpy(x_eval[:1])
    macs, params = macs_params(counted if counted is not None else model, example)
    if onnx_path is None:
        onnx_path = load_source(model, work / stage, example_inputs={"input": x_eval[:1]}).path
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [sess.run(None, {"input": x_eval[i : i + 256]})[0] for i in range(0, len(x_eval), 256)]
    )
    if y_eval is not None:
        score, name = float((logits.argmax(1) == y_eval).mean()), "accuracy"
    else:
        score, name = (
            float((logits.argmax(1) == (ref if ref is not None else logits).argmax(1)).mean()),
            "agreement",
        )
    b = benchmark(
        onnx_path,
        profile,
        data={"input": x_eval[:1]},
        batch_sizes=(1,),
        measure_memory=False,
        settings=settings,
    )
    from edgefleet.power._fit import energy_per_inference

    energy = energy_per_inference(b.latency.p50_ms, profile)
    return StageResult(
        stage=stage,
        energy_mj=energy[0] if energy else None,
        energy_method=energy[1] if energy else None,
        params=params,
        macs=macs,
        score=score,
        score_name=name,
        size_bytes=onnx_path.stat().st_size,
        p50_ms=b.latency.p50_ms,
        p95_ms=b.latency.p95_ms,
    )
