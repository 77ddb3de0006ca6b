"""``edgefleet distill``: train a small student from a torch teacher (knowledge distillation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import console, err_console, print_json
from edgefleet.errors import ConfigError

__all__ = ["register", "EpochProgress"]


class EpochProgress:
    """Rich bars on a terminal; one plain line per epoch on stderr otherwise (logs, CI, pipes)."""

    def __init__(self) -> None:
        self.tty = err_console.is_terminal
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> EpochProgress:
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=err_console,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, name: str, done: int, total: int, rec: dict[str, float] | None = None) -> None:
        info = " ".join(f"{k} {v:.4g}" for k, v in (rec or {}).items() if k not in ("epoch", "lr", "seconds"))
        if self.progress is None:
            err_console.print(f"{name}: {done}/{total} {info}".rstrip(), highlight=False, soft_wrap=True)
            return
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, info="")
        self.progress.update(self.tasks[name], completed=done, total=total, info=info)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory", hint="choose another -o path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(
                f"output directory {out} already holds files", hint="choose a new directory or pass --force"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill_cmd(
        teacher: Path = typer.Option(
            ...,
            "--teacher",
            help="Teacher: a whole torch module saved with torch.save(model) (trusted file).",
        ),
        data: Path = typer.Option(
            ..., "--data", help="Training data .npz: 'input' [samples, ...] and optional 'labels'."
        ),
        out: Path = typer.Option(..., "-o", "--out", help="Output directory (new or empty unless --force)."),
        student: str = typer.Option(
            "auto", "--student", help="auto | widthX (e.g. width0.5) | pkg.module:factory | student.pt."
        ),
        unlabeled: Path | None = typer.Option(
            None, "--unlabeled", help="More inputs without labels (.npz): the teacher labels them softly."
        ),
        alpha: float = typer.Option(0.5, "--alpha", help="Weight of the label loss (0..1)."),
        temperature: float = typer.Option(4.0, "--temperature", help="Softmax temperature."),
        epochs: int = typer.Option(30, "--epochs", help="Most epochs (early stopping may end sooner)."),
        lr: float = typer.Option(1e-2, "--lr", help="Adam learning rate (cosine schedule)."),
        batch: int = typer.Option(64, "--batch", help="Batch size."),
        patience: int = typer.Option(
            6, "--patience", help="Stop after this many epochs without a better score."
        ),
        val_fraction: float = typer.Option(
            0.2, "--val-fraction", help="Share of --data held out for validation."
        ),
        feature_weight: float = typer.Option(
            0.0, "--feature-weight", help="Weight of penultimate-feature matching (0: off)."
        ),
        label_free: bool = typer.Option(False, "--label-free", help="Ignore labels: teacher outputs only."),
        max_drop: float = typer.Option(
            1.0, "--max-drop", help="With --student auto: the smallest student within this many points."
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Distill a torch teacher into a smaller student: writes student.pt, student.onnx, the training log,
        a learning curve and checkpoints."""
        from pydantic import ValidationError as PydValidationError

        from edgefleet.optimize._distill import DistillConfig, read_training_data
        from edgefleet.optimize._recipe import distill_stage, macs_params
        from edgefleet.optimize._students import load_torch_module, parse_student

        try:
            cfg = DistillConfig(
                alpha=alpha,
                temperature=temperature,
                epochs=epochs,
                lr=lr,
                batch=batch,
                patience=patience,
                val_fraction=val_fraction,
                feature_weight=feature_weight,
                label_free=label_free,
                seed=seed,
            )
        except PydValidationError as e:
            problems = "; ".join(f"--{'-'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
            raise ConfigError(
                f"bad distillation settings: {problems}", hint="see edgefleet distill --help"
            ) from e
        parse_student(student)
        x, y = read_training_data(data, "--data")
        extra = read_training_data(unlabeled, "--unlabeled")[0] if unlabeled is not None else None
        if extra is not None and extra.shape[1:] != x.shape[1:]:
            raise ConfigError(
                f"--unlabeled inputs are {extra.shape[1:]}, --data inputs {x.shape[1:]}",
                hint="both files hold inputs of the same shape",
            )
        t = load_torch_module(teacher, "teacher")
        _check_teacher_runs(t, x)
        _prepare_out(out, force)
        with EpochProgress() as prog:
            s, res, cands = distill_stage(
                t, student, x, y, unlabeled=extra, config=cfg, out_dir=out, max_drop=max_drop, on_epoch=prog
            )
        import torch

        from edgefleet.optimize._convert import load_source

        torch.save(s, out / "student.pt")
        src = load_source(s, out / ".export", example_inputs={"input": x[:1]})
        shutil.move(str(src.path), out / "student.onnx")
        shutil.rmtree(out / ".export", ignore_errors=True)
        example = torch.from_numpy(x[:1])
        t_macs, t_params = macs_params(t, example)
        chosen = next(c for c in cands if c.chosen)
        summary = {
            "teacher": {"params": t_params, "macs": t_macs, res.score_name: res.teacher_score},
            "student": {
                "name": chosen.name,
                "params": chosen.params,
                "macs": chosen.macs,
                res.score_name: res.best_score,
                "best_epoch": res.best_epoch,
                "stopped_early": res.stopped_early,
                "params_ratio": t_params / max(chosen.params, 1),
            },
            "candidates": [c.__dict__ for c in cands],
            "score": res.score_name,
            "files": [
                "student.pt",
                "student.onnx",
                "training_log.jsonl",
                "learning_curve.png",
                "checkpoints/",
            ],
        }
        (out / "distill.json").write_text(json.dumps(summary, indent=2))
        if as_json:
            print_json(summary)
            return
        _print_summary(summary, out)


def _check_teacher_runs(teacher: Any, x: Any) -> None:
    import torch

    try:
        with torch.no_grad():
            o = teacher(torch.from_numpy(x[:2]))
    except Exception as e:  # noqa: BLE001 - a shape mismatch is the user's data, say so
        raise ConfigError(
            f"the teacher does not run on --data inputs {tuple(x.shape[1:])}: {str(e).strip()[:200]}",
            hint="give inputs shaped as the teacher expects (the first axis is the sample axis)",
        ) from e
    if not isinstance(o, torch.Tensor) or o.dim() != 2:
        raise ConfigError(
            "the teacher must return one [batch, classes] tensor of logits",
            hint="distillation matches class scores; wrap other outputs in a module that returns logits",
        )


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    score = summary["score"]
    t = Table(title=f"distillation ({score} on the validation split)")
    for col in ("model", "params", "MACs", score, "note"):
        t.add_column(col, justify="left" if col in ("model", "note") else "right")
    te = summary["teacher"]
    t.add_row("teacher", f"{te['params']:,}", f"{te['macs']:,}", f"{te[score]:.4f}", "")
    for c in summary["candidates"]:
        note = "chosen" if c["chosen"] else ("Pareto front" if c["on_front"] else "dominated")
        t.add_row(c["name"], f"{c['params']:,}", f"{c['macs']:,}", f"{c['score']:.4f}", note)
    console.print(t)
    st = summary["student"]
    console.print(
        f"student {st['name']}: {st['params_ratio']:.1f}x fewer parameters; wrote {out}/student.pt, "
        "student.onnx, training_log.jsonl, learning_curve.png, checkpoints/, distill.json",
        highlight=False,
    )
