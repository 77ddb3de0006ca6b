"""``edgefleet optimize model.pt --teacher ... --student ... --prune RATIO``: the torch recipe behind the
optimize command (teacher -> student -> prune -> export -> quantize -> select -> QAT if needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.cli._common import console, err_console
from edgefleet.errors import BudgetNotMetError, ConfigError

__all__ = ["torch_recipe", "print_stages"]


def torch_recipe(
    model: Path,
    *,
    teacher: Path | None,
    student: str | None,
    prune: float | None,
    train: Path | None,
    unlabeled: Path | None,
    qat: str,
    epochs: int,
    as_json: bool,
    prune_importance: str = "magnitude",
    prune_global: bool = False,
    prune_steps: int = 1,
) -> Callable[..., Any] | None:
    """None when the command is a plain ONNX/.tflite optimize; else a drop-in for ``optimize()`` that runs
    the recipe, prints its stage table and returns the optimizer's report."""
    wants = teacher is not None or student is not None or prune is not None or train is not None
    if model.suffix.lower() not in (".pt", ".pth"):
        if wants:
            raise ConfigError(
                f"--teacher/--student/--prune/--train need a torch model (.pt), not {model.name}",
                hint="save the module with torch.save(model, 'model.pt')",
            )
        return None
    if train is None:
        raise ConfigError(
            "a torch model needs --train data for distillation, pruning fine-tuning and QAT",
            hint="an .npz with 'input' and 'labels', e.g. --train train.npz",
        )
    from edgefleet.optimize._distill import DistillConfig
    from edgefleet.optimize._students import parse_student

    if student is not None:
        parse_student(student)
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs} must be >= 1", hint="e.g. --epochs 20")
    from edgefleet.optimize._prune import IMPORTANCES

    if prune_importance not in IMPORTANCES:
        raise ConfigError(
            f"--prune-importance {prune_importance!r} is unknown", hint=f"use one of {', '.join(IMPORTANCES)}"
        )
    if prune is not None and not 0 < prune < 1:
        raise ConfigError(
            f"--prune {prune:g} must be between 0 and 1", hint="the share of channels, e.g. 0.5"
        )

    def run(_model: Any, **kw: Any) -> Any:
        from edgefleet.optimize._torch_recipe import optimize_torch

        bars = kw.get("progress")
        live = err_console.is_terminal and bars is not None

        def on_epoch(name: str, done: int, total: int, rec: dict[str, float]) -> None:
            if live:
                bars(name, done, total)
                return
            info = " ".join(f"{k} {v:.4g}" for k, v in rec.items() if k not in ("epoch", "lr", "seconds"))
            err_console.print(f"{name}: {done}/{total} {info}", highlight=False, soft_wrap=True)

        try:
            rep = optimize_torch(
                model,
                teacher=teacher,
                student=student,
                prune=prune,
                prune_importance=prune_importance,
                prune_global=prune_global,
                prune_steps=prune_steps,
                train=train,
                unlabeled=unlabeled,
                qat_mode=qat,
                distill_config=DistillConfig(epochs=epochs),
                on_epoch=on_epoch,
                **kw,
            )
        except BudgetNotMetError as e:
            if not as_json and getattr(e, "recipe", None) is not None:
                print_stages(e.recipe)  # type: ignore[attr-defined]
            raise
        if not as_json:
            print_stages(rep)
        return rep.optimize

    return run


def print_stages(rep: Any) -> None:
    from rich.table import Table

    from edgefleet.optimize._torch_recipe import energy_cell

    t = Table(title="torch recipe: every stage, exported and measured")
    for col in (
        "stage",
        "params",
        "MACs",
        "size KB",
        "p50 ms",
        "p95 ms",
        rep.energy_header,
        "score",
        "notes",
    ):
        t.add_column(col, justify="left" if col in ("stage", "notes") else "right", overflow="fold")
    for s in rep.stages:
        t.add_row(
            s.stage,
            f"{s.params:,}",
            f"{s.macs:,}",
            f"{(s.size_bytes or 0) / 1024:.1f}",
            f"{s.p50_ms or 0:.4f}",
            f"{s.p95_ms or 0:.4f}",
            energy_cell(s),
            f"{s.score_name} {s.score or 0:.4f}",
            "; ".join(s.notes),
        )
    console.print(t)
    console.print(f"[bold]QAT:[/] {rep.qat}", highlight=False)
    for n in rep.notes:
        console.print(n, highlight=False)
