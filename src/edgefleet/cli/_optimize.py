"""``edgefleet optimize`` and ``edgefleet bench``: build, measure and choose model variants."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import console, err_console, load_preprocess, print_json
from edgefleet.errors import BudgetNotMetError, ConfigError

__all__ = ["register"]

_PROFILE_HELP = (
    "Device profile YAML: name, cores, ram_mb, arch, isa_flags, execution_providers, onnxruntime, "
    "latency_budget_ms (p95), ram_budget_mb, size_budget_mb. Default: this machine, all cores."
)


class _Bars:
    """Rich progress bars on stderr (stdout stays clean for --json)."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
            disable=not enabled,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, line: str) -> None:
        """A progress line above the bars."""
        self.progress.console.print(line, highlight=False, markup=False)

    def __call__(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)


def _log_line(line: str) -> None:
    """A plain progress line on stderr, flushed at once (for logs and files, where bars print nothing)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _print_report_table(report: Any) -> None:
    from rich.table import Table

    report.fill_energy()
    t = Table(
        title=f"variants ({report.objective}, max drop {report.budget.max_drop:g} {report.metric} points)"
    )
    cols = [
        ("variant", "variant", "left"),
        ("outcome", "outcome", "left"),
        ("size_kb", "size KB", "right"),
        ("smaller", "smaller", "right"),
        ("p50_ms", "p50 ms", "right"),
        ("p95_ms", "p95 ms", "right"),
        ("speedup", "speed-up", "right"),
        ("rss_mb", "RSS MB", "right"),
        ("energy_mj", report.energy_header, "right"),
        ("quality", report.metric, "right"),
        ("drop", "drop", "right"),
        ("short", "why", "left"),
    ]
    for key, title, just in cols:
        if key == "variant":
            t.add_column(title, justify=just, no_wrap=True)  # type: ignore[arg-type]
        else:
            t.add_column(title, justify=just, overflow="fold")  # type: ignore[arg-type]
    style = {"chosen": "bold green", "rejected": "red", "failed": "dim red", "lost": ""}
    for row in report.table_rows():
        t.add_row(*[row[k] for k, _, _ in cols], style=style.get(row["outcome"], ""))
    console.print(t)
    for w in report.warnings:
        console.print(f"[yellow]warning[/] {w['code']}: {w['message']}", highlight=False)
    console.print(
        f"[bold]quality:[/] {report.task}, {report.metric}"
        + (f" (inferred from: {report.task_reason})" if report.task_reason else ""),
        highlight=False,
    )
    for p in report.providers:
        if p.status != "measured":
            console.print(f"[bold]{p.provider}:[/] not measured: {p.status}", highlight=False)
            continue
        best = next((f for f in p.variants if f.variant == p.best), None)
        console.print(
            f"[bold]{p.provider}:[/] {len(p.variants)} variants measured (onnxruntime {p.onnxruntime}); best within "
            f"budget: {p.best or 'none'}" + (f", p50 {best.p50_ms:.3f} ms" if best and best.p50_ms else ""),
            highlight=False,
        )
    if report.search:
        console.print(
            f"[bold]search:[/] {report.search['elapsed_s']:g} s of {report.search['time_budget_s']:g} s; "
            f"skipped for time: {', '.join(report.search['skipped']) or 'none'}",
            highlight=False,
        )
    console.print(f"[bold]chosen:[/] {report.chosen or 'none'} — {report.reason}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("optimize")
    def optimize_cmd(
        model: Path = typer.Argument(..., help="Model file: .onnx or .tflite."),
        calib: Path = typer.Option(
            ..., "--calib", help="Calibration data: .npz (one array per input), .npy or image folder."
        ),
        eval_: Path = typer.Option(
            ..., "--eval", help="Evaluation data (a 'labels' array in the .npz enables accuracy)."
        ),
        out: Path = typer.Option(
            ..., "-o", "--out", help="Output directory (must be new or empty unless --force)."
        ),
        labels: Path | None = typer.Option(
            None, "--labels", help="Integer labels (.npy) for the evaluation data."
        ),
        max_drop: float = typer.Option(
            1.0, "--max-drop", help="Largest quality drop vs fp32, in points of the task's metric."
        ),
        min_accuracy: float | None = typer.Option(
            None, "--min-accuracy", help="Absolute quality floor, in points."
        ),
        objective: str = typer.Option("balanced", "--objective", help="latency | size | balanced."),
        profile: Path | None = typer.Option(None, "--profile", help=_PROFILE_HELP),
        variants: str | None = typer.Option(
            None, "--variants", help="Comma-separated variants to build instead of all."
        ),
        add_variant: list[str] = typer.Option(
            [], "--add-variant", help="Extra variant by name (repeatable), e.g. static-int8-pt-minmax-qop."
        ),
        output: str | None = typer.Option(
            None, "--output", help="Model output to score (default: first float output)."
        ),
        providers: str | None = typer.Option(
            None,
            "--providers",
            help="Execution providers to measure every variant on, e.g. cpu,openvino,cuda (default: the "
            "profile's). One this onnxruntime lacks runs in the interpreter EDGEFLEET_OPTIMIZE_PROVIDER_PYTHONS "
            "names, else is reported 'not available here'.",
        ),
        time_budget: float | None = typer.Option(
            None,
            "--time-budget",
            help="Seconds the whole search may take: candidates in order of expected value, clear losers "
            "dropped early, and the best so far kept when time runs out (the report names what was skipped).",
        ),
        metric: str | None = typer.Option(
            None,
            "--metric",
            help="How quality is judged: accuracy | agreement | cosine | relative-error | sequence "
            "(default: inferred from the outputs and labels; the report says from what).",
        ),
        preprocess: Path | None = typer.Option(
            None, "--preprocess", help="Preprocessing contract (JSON/YAML list) for image folders."
        ),
        keep_variants: bool = typer.Option(
            False, "--keep-variants", help="Also write every variant under variants/."
        ),
        force: bool = typer.Option(
            False, "--force", help="Replace a non-empty output directory (after success)."
        ),
        no_exclusion: bool = typer.Option(
            False, "--no-exclusion", help="Do not re-quantize with sensitive nodes in float."
        ),
        runs: int | None = typer.Option(
            None, "--runs", help="Timed runs per variant at batch 1 (default 200)."
        ),
        no_memory: bool = typer.Option(False, "--no-memory", help="Skip the peak-RSS measurement."),
        bundle: bool = typer.Option(
            False, "--bundle", help="Make the winner a bundle (figures in the manifest)."
        ),
        name: str | None = typer.Option(None, "--name", help="Bundle name (with --bundle)."),
        version: str = typer.Option("0.1.0", "--version", help="Bundle version (with --bundle)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        mlflow_uri: str | None = typer.Option(
            None,
            "--mlflow-uri",
            envvar="MLFLOW_TRACKING_URI",
            help="Log the run (params, figures per variant, report and plot) to this MLflow tracking URI.",
        ),
        teacher: Path | None = typer.Option(
            None, "--teacher", help="Torch recipe: teacher .pt (default: MODEL)."
        ),
        student: str | None = typer.Option(
            None, "--student", help="Torch recipe: auto | widthX | pkg.mod:fn | .pt."
        ),
        prune: float | None = typer.Option(
            None, "--prune", help="Torch recipe: share of channels to remove."
        ),
        train: Path | None = typer.Option(
            None, "--train", help="Torch recipe: training .npz (input, labels)."
        ),
        unlabeled: Path | None = typer.Option(
            None, "--unlabeled", help="Torch recipe: extra inputs, no labels."
        ),
        qat: str = typer.Option(
            "auto", "--qat", help="Torch recipe: auto (when PTQ int8 misses) | on | off."
        ),
        epochs: int = typer.Option(20, "--epochs", help="Torch recipe: distillation epochs."),
        prune_importance: str = typer.Option(
            "magnitude", "--prune-importance", help="Torch recipe: magnitude | taylor channel importance."
        ),
        prune_global: bool = typer.Option(
            False, "--prune-global", help="Torch recipe: channels compete across layers (one global ratio)."
        ),
        prune_steps: int = typer.Option(
            1, "--prune-steps", help="Torch recipe: iterative prune -> fine-tune steps."
        ),
    ) -> None:
        """Build every sensible variant, measure it on the device profile, and choose one under the budget.
        A torch model (.pt) first runs the recipe: --student distillation, --prune structured pruning, QAT."""
        from edgefleet.cli._recipe import torch_recipe
        from edgefleet.optimize import OptimizeConfig, optimize

        recipe = torch_recipe(
            model, teacher=teacher, student=student, prune=prune, train=train, unlabeled=unlabeled, qat=qat,
            epochs=epochs, as_json=as_json, prune_importance=prune_importance, prune_global=prune_global,
            prune_steps=prune_steps,
        )  # fmt: skip

        overrides: dict[str, Any] = {}
        if runs is not None:
            overrides["runs"] = runs
        if no_memory:
            overrides["measure_memory"] = False
        settings = OptimizeConfig(**overrides)
        wanted: list[str] | None = None
        if variants:
            wanted = [v.strip() for v in variants.split(",") if v.strip()]
        if add_variant:
            from edgefleet.optimize._spec import default_variant_names

            base = wanted or default_variant_names(matmul_heavy=True)
            wanted = base + [v for v in add_variant if v not in base]
        steps = load_preprocess(preprocess) if preprocess is not None else None
        bundle_opts = None
        if bundle:
            bundle_opts = {
                "name": name or model.stem.lower().replace(" ", "-").replace("_", "-"),
                "version": version,
            }
        report = None
        try:
            live = err_console.is_terminal
            with _Bars(enabled=live) as bars:
                report = (recipe or optimize)(
                    model,
                    calib=calib,
                    eval=eval_,
                    labels=labels,
                    max_drop=max_drop,
                    min_quality=min_accuracy,
                    objective=objective,
                    profile=profile,
                    variants=wanted,
                    out_dir=out,
                    output=output,
                    preprocess=steps,
                    keep_variants=keep_variants,
                    overwrite=force,
                    exclusion=not no_exclusion,
                    bundle=bundle_opts,
                    settings=settings,
                    progress=bars,
                    metric=metric,
                    time_budget_s=time_budget,
                    providers=providers.split(",") if providers is not None else None,
                    notify=bars.log if live else _log_line,
                )
        except BudgetNotMetError as e:
            rep = getattr(e, "report", None)
            if rep is not None:
                if as_json:
                    print_json(json.loads(rep.model_dump_json()))
                else:
                    _print_report_table(rep)
            raise
        if mlflow_uri:
            from edgefleet.retrain._mlflow import log_optimize_run

            run_id = log_optimize_run(mlflow_uri, report, out)
            err_console.print(f"logged to MLflow {mlflow_uri}: run {run_id}", highlight=False)
        if as_json:
            print_json(json.loads(report.model_dump_json()))
            return
        _print_report_table(report)
        console.print(
            f"wrote {out}/model{'.tflite' if report.source_format == 'tflite' else '.onnx'}, "
            f"report.json, report.md, plot.png" + (f", {report.bundle}" if report.bundle else ""),
            highlight=False,
        )

    @app.command("bench")
    def bench_cmd(
        model: Path = typer.Argument(..., help="Model file: .onnx or .tflite."),
        profile: Path | None = typer.Option(None, "--profile", help=_PROFILE_HELP),
        data: Path | None = typer.Option(
            None, "--data", help="Real input (.npz/.npy); the first sample is timed."
        ),
        dim: list[str] = typer.Option(
            [], "--dim", help="Size of a symbolic dim for random inputs: name=N (repeatable)."
        ),
        runs: int | None = typer.Option(None, "--runs", help="Timed runs at batch 1 (default 200)."),
        warmup: int | None = typer.Option(None, "--warmup", help="Warm-up runs (default 10)."),
        batch: str = typer.Option("1,8,32", "--batch", help="Batch sizes for throughput, comma-separated."),
        no_memory: bool = typer.Option(False, "--no-memory", help="Skip the peak-RSS measurement."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Measure one model on a device profile: size, init, first run, latency percentiles, throughput, RSS."""
        from edgefleet.optimize import benchmark

        dims: dict[str, int] = {}
        for d in dim:
            k, sep, v = d.partition("=")
            if not sep or not v.strip().isdigit():
                raise ConfigError(f"--dim {d!r} must look like name=N", hint="e.g. --dim sequence=512")
            dims[k.strip()] = int(v)
        try:
            sizes = tuple(int(b) for b in batch.split(",") if b.strip())
        except ValueError as e:
            raise ConfigError(
                f"--batch {batch!r} must be integers separated by commas", hint="e.g. --batch 1,8,32"
            ) from e
        if not sizes or min(sizes) < 1:
            raise ConfigError("--batch sizes must be >= 1", hint="e.g. --batch 1,8,32")
        with _Bars(enabled=True) as bars:
            res = benchmark(
                model,
                profile,
                data=data,
                dims=dims,
                runs=runs,
                warmup=warmup,
                batch_sizes=sizes,
                measure_memory=not no_memory,
                progress=lambda n, d, t: bars("benchmark", d, t),
            )
        if as_json:
            print_json(json.loads(res.model_dump_json()))
            return
        from rich.table import Table

        t = Table(
            title=f"{model.name} on {res.profile} ({res.threads} threads, {', '.join(res.providers)}, {res.runtime})"
        )
        t.add_column("measure")
        t.add_column("value", justify="right")
        lat = res.latency
        rows = [
            (
                "file size",
                f"{res.size_bytes / 1024:.1f} KB (compressed {res.compressed_bytes / 1024:.1f} KB)",
            ),
            ("session init", f"{res.init_ms:.2f} ms"),
            ("first inference", f"{res.first_inference_ms:.3f} ms"),
            ("warm-up", f"{res.warmup_runs} runs, {res.warmup_ms:.2f} ms"),
            ("latency mean ± std", f"{lat.mean_ms:.4f} ± {lat.std_ms:.4f} ms ({lat.runs} runs)"),
            ("p50 / p90", f"{lat.p50_ms:.4f} / {lat.p90_ms:.4f} ms"),
            ("p95 / p99", f"{lat.p95_ms:.4f} / {lat.p99_ms:.4f} ms"),
            (
                "peak RSS added",
                f"{res.peak_rss_mb:.1f} MB" if res.peak_rss_mb is not None else (res.rss_note or "-"),
            ),
        ]
        for tp in res.throughput:
            rows.append(
                (
                    f"throughput batch {tp.batch}",
                    f"{tp.samples_per_s:.1f} samples/s" if tp.samples_per_s else (tp.note or "-"),
                )
            )
        for k, v in rows:
            t.add_row(k, v)
        console.print(t)
