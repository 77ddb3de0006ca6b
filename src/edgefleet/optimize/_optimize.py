"""``optimize()``: build every sensible variant, measure it on a device profile, choose under a budget,
and write the chosen model plus the report. Everything is written into a temporary directory next to
``out_dir`` and renamed into place at the end, so a failure never leaves a half-written output."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import BudgetNotMetError, ConfigError, EdgefleetError, OptimizeError
from edgefleet.optimize._bench import benchmark_runner, interleaved
from edgefleet.optimize._build import Builder
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._convert import Source, load_source, peek_example
from edgefleet.optimize._data import Dataset, load_data
from edgefleet.optimize._exclusion import keep_sensitive_in_float
from edgefleet.optimize._graph import analyze, target_runtime_issues
from edgefleet.optimize._outputs import make_bundle, write_outputs, write_reports
from edgefleet.optimize._preflight import preflight
from edgefleet.optimize._prepare import prepare
from edgefleet.optimize._providers import measure_providers, provider_names
from edgefleet.optimize._quality import Task, check_labels, infer_task, measure_quality, run_dataset
from edgefleet.optimize._report import OptimizeReport, PrepStepResult, QualityFigures, VariantResult
from edgefleet.optimize._runner import OrtRunner, open_runner
from edgefleet.optimize._search import (
    EXCLUDABLE,
    Notify,
    Search,
    clear_loss,
    expected_order,
    subset_drop,
    subset_size,
)
from edgefleet.optimize._select import OBJECTIVES, select
from edgefleet.optimize._spec import Budget, DeviceProfile, Variant, default_variant_names

__all__ = ["optimize", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edgefleet")
    except Exception:  # noqa: BLE001
        return "unknown"


def _runtime_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("onnxruntime", "onnx", "onnxconverter-common"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _parse_variants(variants: Sequence[str | Variant] | None) -> list[Variant] | None:
    if variants is None:
        return None
    out = []
    for v in variants:
        out.append(v if isinstance(v, Variant) else Variant.parse(str(v)))
    names = [v.name for v in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"variants listed twice: {sorted(dup)}", hint="name each variant once")
    return out


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory", hint="choose another -o path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output directory {out} already holds files",
            hint="choose an empty or new directory, or pass overwrite=True (CLI: --force)",
        )


def _finalize(tmp: Path, out: Path) -> None:
    """Move the finished temp dir into place (replacing an old output only once the new one is complete)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time() * 1000)}")
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _profile(profile: DeviceProfile | str | Path | None) -> DeviceProfile:
    if profile is None:
        return DeviceProfile.local()
    if isinstance(profile, DeviceProfile):
        return profile
    return DeviceProfile.from_yaml(profile)


def optimize(
    model: Any,
    *,
    calib: Any,
    eval: Any,  # noqa: A002 - the public name the CLI mirrors (--eval)
    labels: Any = None,
    max_drop: float = 1.0,
    objective: str = "balanced",
    profile: DeviceProfile | str | Path | None = None,
    variants: Sequence[str | Variant] | None = None,
    out_dir: str | Path,
    min_quality: float | None = None,
    example_inputs: Any = None,
    input_names: list[str] | None = None,
    output: str | None = None,
    preprocess: Any = None,
    keep_variants: bool = False,
    overwrite: bool = False,
    exclusion: bool = True,
    bundle: dict[str, Any] | None = None,
    settings: OptimizeConfig | None = None,
    progress: Progress | None = None,
    metric: str | None = None,
    time_budget_s: float | None = None,
    notify: Notify | None = None,
    providers: Sequence[str] | None = None,
) -> OptimizeReport:
    """Build variants of ``model``, measure them on ``profile`` and pick one under the budget.

    Args:
        model: an .onnx/.tflite path, an onnx.ModelProto, a torch nn.Module or a scikit-learn estimator.
        calib: calibration data (see ``load_data``); its first sample doubles as the export example.
        eval: evaluation data; ``labels`` (or a ``labels`` array in the .npz) switch quality to accuracy.
        max_drop: largest quality drop against fp32, in points of the task's metric (accuracy/agreement %,
            mean cosine x 100, 100 - relative error %, exact sequences %).
        objective: ``latency``, ``size`` or ``balanced``.
        profile: a DeviceProfile or YAML path (threads, providers, ISA flags, budgets); None: this machine.
        variants: variant names (``Variant.parse``); None builds every sensible one.
        out_dir: where ``model.onnx`` (or ``.tflite``), ``report.json``, ``report.md`` and ``plot.png`` go.
        min_quality: absolute floor for the quality metric (points).
        example_inputs, input_names: for torch/sklearn exports (default: the first calibration sample).
        output: name of the output to score (default: the first class-score output, else the first float).
        preprocess: preprocessing steps for image-folder data.
        keep_variants: also write every variant under ``variants/``.
        overwrite: replace a non-empty ``out_dir`` (only once the new output is complete).
        exclusion: re-quantize with the most sensitive nodes in float when a variant misses the budget.
        bundle: make the winner a bundle: ``{"name": ..., "version": ..., ...}`` passed to create_bundle.
        metric: how quality is judged (``accuracy``, ``agreement``, ``cosine``, ``relative-error``,
            ``sequence``); None infers it from the outputs and labels, and the report says from what.
        time_budget_s: wall-clock budget of the whole run: candidates are tried in order of expected value,
            each measured as soon as it is built, clear losers are dropped after a subset of the evaluation
            data, and the search stops with the best so far, reporting what it skipped.
        notify: called with one line per stage and variant (elapsed time first): progress for logs.
        providers: execution providers to measure every working variant on (``cpu``, ``openvino``, ``cuda``,
            ... or onnxruntime names); None: the profile's when it lists more than the CPU. Providers this
            onnxruntime lacks run in the interpreter ``settings.provider_pythons`` names, else are reported
            "not available here".

    Returns:
        The report; ``report.chosen`` names the winner.

    Raises:
        BudgetNotMetError: nothing meets the budget; the report (chosen = none) is still written and is
            attached as ``error.report``.
        InputError / ModelLoadError / ConfigError / OptimizeError: bad inputs, with nothing written.
    """
    search = Search([], time_budget_s, notify=notify)
    eps = provider_names(",".join(providers)) if providers is not None else None
    settings = settings or OptimizeConfig()
    if time_budget_s is not None and time_budget_s <= 0:
        raise ConfigError(
            f"time budget must be > 0 seconds, got {time_budget_s:g}", hint="e.g. --time-budget 600"
        )
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r} is unknown", hint=f"use one of {', '.join(OBJECTIVES)}")
    if max_drop < 0:
        raise ConfigError(
            f"max_drop must be >= 0, got {max_drop}", hint="give the allowed drop in points, e.g. 1"
        )
    prof = _profile(profile)
    wanted = _parse_variants(variants)
    budget = Budget.from_profile(prof, max_drop=max_drop, min_quality=min_quality)
    out = Path(out_dir).resolve()
    _check_out_dir(out, overwrite)
    if bundle is not None:
        _check_bundle_identity(bundle)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    work = tmp / ".work"
    work.mkdir()
    try:
        report = _run(
            model,
            calib,
            eval,
            labels,
            budget,
            objective,
            prof,
            wanted,
            tmp,
            work,
            min_quality,
            example_inputs,
            input_names,
            output,
            preprocess,
            keep_variants,
            exclusion,
            bundle,
            settings,
            progress,
            metric,
            search,
            eps,
        )
        shutil.rmtree(work, ignore_errors=True)
        _finalize(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    search.say(f"done: chosen {report.chosen or 'none'}")
    if report.chosen is None:
        err = BudgetNotMetError(
            report.reason,
            hint="relax --max-drop / --min-accuracy or the profile's budgets; see report.md for each variant's figures",
            report=str(out / "report.md"),
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _check_bundle_identity(bundle: Any) -> None:
    """Refuse a bad bundle name/version before any work (the bundle is built last)."""
    if not isinstance(bundle, dict):
        raise ConfigError(
            "bundle must be a dict of create_bundle arguments",
            hint='e.g. {"name": "digits", "version": "1.0.0"}',
        )
    from pydantic import ValidationError as PydValidationError

    from edgefleet.protocol import Manifest

    try:
        Manifest(
            name=str(bundle.get("name") or "model"),
            version=str(bundle.get("version") or "0.1.0"),
            variant=str(bundle.get("variant") or "cpu"),
            inputs=[],
            outputs=[],
        )
    except PydValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(
            f"invalid bundle identity: {problems}",
            hint="name: lowercase slug like 'digits'; version: semver like 1.4.0",
        ) from e


def _tick(progress: Progress | None, task: str, done: int, total: int) -> None:
    if progress is not None:
        progress(task, done, total)


def _run(
    model: Any,
    calib_src: Any,
    eval_src: Any,
    labels: Any,
    budget: Budget,
    objective: str,
    prof: DeviceProfile,
    wanted: list[Variant] | None,
    tmp: Path,
    work: Path,
    min_quality: float | None,
    example_inputs: Any,
    input_names: list[str] | None,
    output: str | None,
    preprocess: Any,
    keep_variants: bool,
    exclusion: bool,
    bundle: dict[str, Any] | None,
    settings: OptimizeConfig,
    progress: Progress | None,
    metric: str | None,
    search: Search,
    eps: list[str] | None,
) -> OptimizeReport:
    import onnx

    _tick(progress, "load model", 0, 1)
    search.say("loading the model and data")
    source = load_source(
        model,
        work,
        example_inputs=example_inputs if example_inputs is not None else peek_example(calib_src),
        input_names=input_names,
        settings=settings,
    )
    probe = open_runner(source.path, threads=prof.cores, providers=prof.execution_providers)
    inputs, outputs = probe.inputs, probe.outputs
    probe.close()
    calib = load_data(
        calib_src,
        inputs,
        what="calibration",
        limit=settings.max_calib_samples,
        preprocess=preprocess,
        settings=settings,
    )
    evald = load_data(
        eval_src,
        inputs,
        what="evaluation",
        labels=labels,
        limit=settings.max_eval_samples,
        preprocess=preprocess,
        settings=settings,
    )
    _tick(progress, "load model", 1, 1)
    report = OptimizeReport(
        edgefleet_version=_version(),
        source=source.origin,
        source_format=source.format,
        source_notes=source.notes,
        inputs=[{"name": i.name, "dtype": i.dtype.name, "shape": list(i.shape or [])} for i in inputs],
        outputs=[{"name": o.name, "dtype": o.dtype.name, "shape": list(o.shape or [])} for o in outputs],
        objective=objective,
        budget=budget,
        profile=prof,
        calib_samples=len(calib),
        eval_samples=len(evald),
        data_notes=calib.notes + evald.notes,
        runtime=_runtime_versions(),
    )
    if source.format == "tflite":
        report = _run_tflite(
            source, evald, report, budget, objective, prof, tmp, output, settings, progress, metric
        )
        if report.chosen is not None and bundle is not None:
            report.bundle = make_bundle(
                report,
                report.variant(report.chosen),
                tmp / "model.tflite",
                tmp,
                evald,
                bundle,
                source,
                eval_src,
                preprocess,
            )
        write_reports(report, tmp)
        return report

    proto = onnx.load(str(source.path))
    src_opset = analyze(proto).opset

    _tick(progress, "prepare", 0, 1)
    search.say(f"preparing ({len(calib)} calibration, {len(evald)} evaluation samples)")
    prepared = prepare(source.path, work, calib.samples[: settings.parity_samples], settings)
    report.preparation = [PrepStepResult(**s.__dict__) for s in prepared.steps]
    _tick(progress, "prepare", 1, 1)
    # What the quantizers see decides what applies (quant_pre_process may fuse MatMul+Add into Gemm).
    facts = analyze(onnx.load(str(prepared.quant_input)))
    if wanted is None:
        wanted = [
            Variant.parse(n)
            for n in default_variant_names(
                matmul_heavy=facts.matmul_share >= settings.matmul_heavy_share,
                prune_pct=int(round(settings.prune_sparsity * 100)),
            )
        ]
    if not any(v.kind == "fp32" for v in wanted):
        wanted = [Variant.parse("fp32"), *wanted]  # the baseline every figure is compared with
    wanted = [v for v in wanted if v.kind != "tflite"]
    if search.timed:
        wanted = expected_order(wanted, facts, settings)
    search.candidates = wanted
    report.warnings = [
        w.model_dump()
        for w in preflight(proto, dataclasses.replace(facts, opset=src_opset), prof, wanted, settings)
    ]

    builder = Builder(prepared, calib, work, facts, prof, settings)
    results: list[VariantResult] = []
    built_paths: dict[str, Path] = {}
    ref: dict[str, list[np.ndarray]] | None = None
    task: Task | None = None
    base_quality = None
    feed = evald.samples[0]
    bench_settings = settings
    subset = subset_size(len(evald), search.timed)
    deferred: list[tuple[Variant, VariantResult, Path]] = []  # exclusion rounds, run once the rest is done

    def evaluate(path: Path, data: Dataset = evald) -> dict[str, list[np.ndarray]]:
        r = OrtRunner(path, threads=prof.cores, providers=prof.execution_providers)
        try:
            return run_dataset(r, data, settings.eval_batch)
        finally:
            r.close()

    def measure(r: VariantResult, j: int, total: int) -> None:
        def prog(_name: str, done: int, tot: int) -> None:
            _tick(progress, "benchmark", j * 1000 + int(1000 * done / max(tot, 1)), total * 1000)

        t0 = time.perf_counter()
        try:
            r.bench = benchmark_runner(
                built_paths[r.name],
                feed,
                prof,
                bench_settings,
                progress=prog,
                measure_memory=settings.measure_memory or budget.ram_mb is not None,  # a RAM budget needs it
            )
            search.say(
                f"{r.name}: measured in {time.perf_counter() - t0:.1f} s, p50 {r.bench.latency.p50_ms:.3f} ms"
            )
        except Exception as e:  # noqa: BLE001
            r.status, r.error = "failed", f"benchmark failed: {str(e).strip()[:200]}"

    def exclusion_round(v: Variant, res: VariantResult, path: Path) -> None:
        assert task is not None and ref is not None
        search.say(f"{v.name}: keeping its most sensitive nodes in float")
        extra = keep_sensitive_in_float(
            v,
            res,
            builder,
            prepared.quant_input,
            path,
            calib,
            evaluate,
            task,
            ref,
            evald,
            base_quality or 0.0,
            budget,
            settings,
            work,
        )
        if extra is not None:
            ex_res, ex_path = extra
            results.append(ex_res)
            built_paths[ex_res.name] = ex_path
            if search.timed:
                measure(ex_res, 0, 1)

    n = len(wanted)
    for i, v in enumerate(search):
        _tick(progress, "build and evaluate", i, n)
        res = VariantResult(name=v.name, variant=v)
        results.append(res)
        t0 = time.perf_counter()
        try:
            if v.kind == "int4" and facts.matmul_share < settings.matmul_heavy_share:
                res.notes.append(
                    f"only {facts.matmul_share:.0%} of the weights are in MatMul nodes; int4 weight-only helps "
                    "MatMul-heavy models"
                )
            built = builder.build(v)
        except EdgefleetError as e:
            res.status, res.error = "failed", e.message
            search.say(f"{v.name}: failed: {e.message[:120]}")
            if v.kind == "fp32":
                raise
            continue
        except Exception as e:  # noqa: BLE001 - one variant failing must not stop the others
            log.info("variant %s failed", v.name, exc_info=True)
            res.status, res.error = (
                "failed",
                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}",
            )
            search.say(f"{v.name}: failed: {res.error[:120]}")
            if v.kind == "fp32":
                raise OptimizeError(
                    f"the fp32 baseline cannot be built: {res.error}", hint="check the model"
                ) from e
            continue
        res.build_s = time.perf_counter() - t0
        res.notes += built.notes
        res.sparsity = built.details.get("sparsity")
        res.size_bytes = built.path.stat().st_size
        built_paths[v.name] = built.path
        try:
            if v.kind != "fp32" and subset and task is not None and ref is not None:
                # a subset first: a clear loser is not worth the rest of the evaluation or a benchmark
                early = subset_drop(task, ref, evaluate(built.path, evald.head(subset)), evald, subset)
                if early is not None and early[0] - early[1].score > clear_loss(budget.max_drop):
                    res.status = "skipped"
                    res.quality = QualityFigures(**early[1].__dict__)
                    res.drop = early[0] - early[1].score
                    res.error = (
                        f"dropped early: quality drop {res.drop:.2f} points on the first {subset} evaluation "
                        f"samples (max {budget.max_drop:g})"
                    )
                    search.say(f"{v.name}: {res.error}")
                    if exclusion and v.kind in EXCLUDABLE and settings.max_exclusion_rounds > 0:
                        deferred.append((v, res, built.path))
                    continue
            t_eval = time.perf_counter()
            outs = evaluate(built.path)
            eval_s = time.perf_counter() - t_eval
        except EdgefleetError as e:
            res.status, res.error = "failed", e.message
            continue
        except Exception as e:  # noqa: BLE001
            res.status, res.error = "failed", f"fails on the evaluation data: {str(e).strip()[:200]}"
            continue
        if v.kind == "fp32":
            ref = outs
            task = infer_task(outputs, ref, evald.labels is not None, output, metric)
            check_labels(task, evald.labels, ref)
            report.task, report.score_output, report.metric = task.kind, task.output, task.metric
            report.task_reason = task.why
            search.say(f"quality: {task.kind}, {task.metric} ({task.why})")
            bench_settings = search.bench_settings(settings, eval_s / max(1, len(evald)))
        assert ref is not None and task is not None
        q = measure_quality(task, ref, outs, evald.labels)
        res.quality = QualityFigures(**q.__dict__)
        if v.kind == "fp32":
            base_quality = q.score
        res.drop = (base_quality or 0.0) - q.score
        search.say(
            f"{v.name}: built in {res.build_s:.1f} s, {task.metric} {q.score:.2f} (drop {res.drop:+.2f})"
        )
        if prof.onnxruntime:
            res.target_issues = target_runtime_issues(
                onnx.load(str(built.path), load_external_data=False), prof.onnxruntime
            )
        if search.timed:
            measure(res, 0, 1)  # measured now, so the search can stop at any point with the best so far

        # Sensitive-node exclusion: keep the worst nodes in float until the budget is met.
        if (
            exclusion
            and res.drop > budget.max_drop
            and v.kind in EXCLUDABLE
            and settings.max_exclusion_rounds > 0
        ):
            if search.timed:
                deferred.append((v, res, built.path))
            else:
                exclusion_round(v, res, built.path)
    for v, res, path in deferred:
        need = search.expected_cost() * 2
        if search.left() - search.reserve_share * (search.budget_s or 0.0) < need:
            res.notes.append(
                f"sensitive-node exclusion not tried: time budget ({max(0.0, search.left()):.0f} s left)"
            )
            search.say(f"{v.name}: exclusion skipped (time budget)")
            continue
        exclusion_round(v, res, path)
    results += search.skipped
    _tick(progress, "build and evaluate", n, n)

    # Benchmark every variant that works (with a time budget each was measured as soon as it was built).
    ok = [r for r in results if r.status == "ok" and r.bench is None]
    for j, r in enumerate(ok):
        search.say(f"{r.name}: measuring")
        measure(r, j, len(ok))
    _tick(progress, "benchmark", len(ok) * 1000, len(ok) * 1000)

    # Choose, re-checking speed claims against the baseline with interleaved runs.
    base_path = built_paths.get("fp32")
    checks = 0

    def confirm(cand: VariantResult):
        nonlocal checks
        if base_path is None:
            return None
        checks += 1
        _tick(progress, "interleaved check", checks, checks + 1)
        search.say(f"{cand.name}: interleaved check against fp32")
        b = OrtRunner(base_path, threads=prof.cores, providers=prof.execution_providers)
        c = OrtRunner(built_paths[cand.name], threads=prof.cores, providers=prof.execution_providers)
        try:
            return interleaved(b, c, feed, feed, bench_settings)
        finally:
            b.close()
            c.close()

    chosen, why = select(
        results, budget, objective, baseline="fp32", confirm=confirm, noise_floor=settings.noise_floor
    )
    report.variants = results
    report.reason = why
    if eps is None and len(prof.execution_providers) > 1:
        eps = list(prof.execution_providers)
    if eps and task is not None:
        search.say(f"measuring on {', '.join(eps)}")
        report.providers = measure_providers(
            eps, results, built_paths, evald, task, budget.max_drop, settings, say=search.say
        )
    if search.timed:
        report.search = search.summary()
    write_outputs(report, chosen, built_paths, tmp, keep_variants, ".onnx")
    if chosen is not None and bundle is not None:
        report.bundle = make_bundle(
            report, chosen, tmp / "model.onnx", tmp, evald, bundle, source, eval_src, preprocess
        )
    write_reports(report, tmp)
    return report


def _run_tflite(
    source: Source,
    evald: Dataset,
    report: OptimizeReport,
    budget: Budget,
    objective: str,
    prof: DeviceProfile,
    tmp: Path,
    output: str | None,
    settings: OptimizeConfig,
    progress: Progress | None,
    metric: str | None = None,
) -> OptimizeReport:
    """A .tflite model is measured and judged as it is (no conversion): one variant, ``tflite``."""
    from edgefleet.optimize._runner import TfliteRunner

    v = Variant.parse("tflite")
    res = VariantResult(name="fp32", variant=v, size_bytes=source.path.stat().st_size)
    res.notes.append("LiteRT model benchmarked as given; ONNX variants need an ONNX model")
    r = TfliteRunner(source.path, threads=prof.cores)
    try:
        outs = run_dataset(r, evald, settings.eval_batch)
    finally:
        r.close()
    task = infer_task(report_outputs(report), outs, evald.labels is not None, output, metric)
    check_labels(task, evald.labels, outs)
    report.task, report.score_output, report.metric = task.kind, task.output, task.metric
    report.task_reason = task.why
    q = measure_quality(task, outs, outs, evald.labels)
    res.quality = QualityFigures(**q.__dict__)
    res.drop = 0.0
    res.bench = benchmark_runner(
        source.path,
        evald.samples[0],
        prof,
        settings,
        measure_memory=settings.measure_memory or budget.ram_mb is not None,
        progress=lambda n, d, t: _tick(progress, "benchmark", d, t),
    )
    chosen, why = select([res], budget, objective, baseline="fp32")
    report.variants = [res]
    report.reason = why
    write_outputs(report, chosen, {"fp32": source.path}, tmp, False, ".tflite")
    return report


def report_outputs(report: OptimizeReport):
    from edgefleet.optimize._runner import TensorInfo

    return [TensorInfo(o["name"], np.dtype(o["dtype"]), tuple(o["shape"]) or None) for o in report.outputs]
