"""Optimizer benchmark: every variant of each real model, the choice, and plain ``quantize_dynamic``.

Models: a conv CNN on digits (torch), an MLP classifier (scikit-learn), a transformer-style encoder
(torch, a few attention layers) and silero-vad's shipped ONNX models (pretrained, stateful, with
control flow). Each goes through ``edgefleet.optimize.optimize`` with the default variant set, a
one-thread device profile and ``--max-drop 1``; next to the choice stands what a user gets from
``onnxruntime.quantization.quantize_dynamic(model, out)`` with defaults, measured the same way
(size, interleaved latency ratio against the same fp32 baseline, quality on the same data).

Run:  .venv/bin/python benchmarks/optimize_bench.py [--quick] [--only cnn,mlp,encoder,silero]
Writes benchmarks/results/optimize.json and prints rich tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edgefleet.errors import BudgetNotMetError
from edgefleet.examples import digits, train_digits_mlp
from edgefleet.optimize import DeviceProfile, OptimizeConfig, benchmark, optimize
from edgefleet.optimize._bench import interleaved
from edgefleet.optimize._data import load_data
from edgefleet.optimize._quality import infer_task, measure_quality, run_dataset
from edgefleet.optimize._runner import OrtRunner

console = Console(width=180)
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "optimize.json"


def _machine() -> dict[str, Any]:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except Exception:  # noqa: BLE001
        model = platform.processor()
    import onnxruntime

    from edgefleet.optimize._spec import local_isa_flags

    return {
        "cpu": model,
        "cores_visible": len(__import__("os").sched_getaffinity(0)),
        "isa_flags": local_isa_flags(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "note": "shared by parallel work while measured; latency ratios come from interleaved runs",
    }


# --- models ------------------------------------------------------------------------------------


def _digits_models(work: Path, quick: bool) -> list[dict[str, Any]]:
    warnings.filterwarnings("ignore")
    d = digits(seed=0)
    models = []

    # scikit-learn MLP classifier -> ONNX (skl2onnx), input x / 16
    mlp = work / "digits_mlp.onnx"
    acc = train_digits_mlp(mlp, hidden=(256, 128), data=d)
    models.append(
        {
            "name": "mlp",
            "what": "scikit-learn MLPClassifier (64-256-128-10) on digits",
            "model": mlp,
            "calib": {"input": (d.x_train[:256] / 16).astype(np.float32)},
            "eval": {"input": (d.x_test / 16).astype(np.float32), "labels": d.y_test},
            "trained_accuracy": acc,
        }
    )

    try:
        import torch  # noqa: F401
    except ImportError:
        console.print("[yellow]torch not installed: skipping the CNN and the encoder[/]")
        return models
    from edgefleet.optimize._zoo import train_digits_cnn, train_digits_encoder

    t0 = time.time()
    cnn, cnn_acc = train_digits_cnn(d, channels=(32, 64), hidden=128, epochs=4 if quick else 10)
    console.print(f"trained CNN in {time.time() - t0:.0f} s: accuracy {cnn_acc:.3f}")
    models.append(
        {
            "name": "cnn",
            "what": "torch CNN (3 conv + 2 linear, 32/64 channels) on digits",
            "model": cnn,
            "calib": {"input": (d.x_train[:256] / 16).reshape(-1, 1, 8, 8).astype(np.float32)},
            "eval": {"input": (d.x_test / 16).reshape(-1, 1, 8, 8).astype(np.float32), "labels": d.y_test},
            "trained_accuracy": cnn_acc,
        }
    )
    t0 = time.time()
    enc, enc_acc = train_digits_encoder(d, d_model=128, heads=4, layers=3, epochs=4 if quick else 12, lr=1e-3)
    console.print(f"trained encoder in {time.time() - t0:.0f} s: accuracy {enc_acc:.3f}")
    models.append(
        {
            "name": "encoder",
            "what": "torch transformer-style encoder (16 tokens, d=128, 4 heads, 3 pre-norm blocks) on digits",
            "model": enc,
            "calib": {"input": (d.x_train[:256] / 16).reshape(-1, 8, 8).astype(np.float32)},
            "eval": {"input": (d.x_test / 16).reshape(-1, 8, 8).astype(np.float32), "labels": d.y_test},
            "trained_accuracy": enc_acc,
        }
    )
    return models


def _silero_models(quick: bool) -> list[dict[str, Any]]:
    try:
        import silero_vad
    except ImportError:
        console.print("[yellow]silero-vad not installed: skipping[/]")
        return []
    from edgefleet.optimize._zoo import vad_dataset

    data_dir = Path(silero_vad.__file__).parent / "data"
    names = ["silero_vad.onnx", "silero_vad_16k_op15.onnx"]
    out = []
    for n in names:
        p = data_dir / n
        if not p.is_file():
            continue
        data = vad_dataset(p, seconds=8 if quick else 16, seed=0)
        out.append(
            {
                "name": p.stem,
                "what": f"silero-vad {n} as shipped (pretrained; LSTM state, If control flow), synthetic speech",
                "model": p,
                "calib": {k: v[::3] for k, v in data.items()},
                "eval": {k: v[1::2] for k, v in data.items()},
                "trained_accuracy": None,
            }
        )
    return out


# --- plain quantize_dynamic ----------------------------------------------------------------------


def _plain_dynamic(
    source: Path, baseline: Path, ev: Any, work: Path, prof: DeviceProfile, st: OptimizeConfig
) -> dict:
    """What `quantize_dynamic(model, out)` with defaults gives, measured like the variants."""
    from onnxruntime.quantization import quantize_dynamic

    out = work / "plain-dynamic.onnx"
    res: dict[str, Any] = {"command": "quantize_dynamic(model, out)  # defaults, no pre-processing"}
    from edgefleet.optimize._prepare import quiet_ort_logs

    try:
        with quiet_ort_logs():
            quantize_dynamic(str(source), str(out))
    except Exception as e:  # noqa: BLE001 - the common first attempt can fail outright
        res["error"] = str(e).strip().splitlines()[-1][:200]
        return res
    try:
        return _measure_plain(out, baseline, ev, prof, st, res)
    except Exception as e:  # noqa: BLE001 - report what the user would hit
        res["size_bytes"] = out.stat().st_size
        res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        return res


def _measure_plain(
    out: Path, baseline: Path, ev: Any, prof: DeviceProfile, st: OptimizeConfig, res: dict
) -> dict:
    plain = OrtRunner(out, threads=prof.cores)
    base = OrtRunner(baseline, threads=prof.cores)
    ds = load_data(ev, base.inputs, what="evaluation", limit=st.max_eval_samples)
    ref = run_dataset(base, ds, st.eval_batch)
    got = run_dataset(plain, ds, st.eval_batch)
    task = infer_task(base.outputs, ref, ds.labels is not None)
    q_base = measure_quality(task, ref, ref, ds.labels)
    q = measure_quality(task, ref, got, ds.labels)
    il = interleaved(base, plain, ds.samples[0], ds.samples[0], st)
    try:
        bres = benchmark(out, prof, data=ds.head(1), settings=st)
    except Exception as e:  # noqa: BLE001 - e.g. the ONNX checker refuses the file onnxruntime still runs
        res["checker"] = str(e).strip().splitlines()[0][:200]
        from edgefleet.optimize._bench import benchmark_runner

        bres = benchmark_runner(out, ds.samples[0], prof, st)
    res.update(
        size_bytes=out.stat().st_size,
        p50_ms=bres.latency.p50_ms,
        p95_ms=bres.latency.p95_ms,
        speedup_p50=1.0 / il.median_ratio,
        interleaved_verdict=il.verdict,
        metric=q.metric,
        quality=q.score,
        drop=q_base.score - q.score,
    )
    return res


# --- run -----------------------------------------------------------------------------------------


def _goals(name: str, rep, plain: dict) -> list[dict[str, Any]]:
    c = rep.chosen_result
    goals = []
    speed = c.speedup_p50 or 1.0
    verdict = (
        c.interleaved.verdict if c and c.interleaved else ("baseline" if rep.chosen == "fp32" else "n/a")
    )
    goals.append(
        {
            "goal": "chosen variant no slower than the fp32 baseline",
            "met": c is not None and verdict != "slower",
            "figure": f"{rep.chosen}: p50 x{1 / speed:.2f} of fp32 ({verdict})",
        }
    )
    if name in ("cnn", "mlp"):
        goals.append(
            {
                "goal": ">= 3.5x smaller with drop <= 1 point",
                "met": c is not None and (c.size_ratio or 1) >= 3.5 and (c.drop or 0) <= 1,
                "figure": f"{rep.chosen}: {c.size_ratio or 1:.2f}x smaller, drop {c.drop:+.2f}",
            }
        )
    if name == "encoder":
        goals.append(
            {
                "goal": "int8 or int4 chosen with >= 1.5x lower p50",
                "met": c is not None
                and c.variant.kind in ("dynamic-int8", "static-int8", "int4")
                and speed >= 1.5,
                "figure": f"{rep.chosen}: {speed:.2f}x lower p50",
            }
        )
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs/runs (a smoke run)")
    ap.add_argument("--only", default="", help="comma-separated: mlp,cnn,encoder,silero")
    ap.add_argument("--cores", type=int, default=1, help="threads of the device profile (default 1)")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    st = OptimizeConfig(runs=60 if args.quick else 300, interleave_rounds=5 if args.quick else 9)
    prof = DeviceProfile(name=f"bench-{args.cores}core", cores=args.cores)
    machine = _machine()
    console.print(
        f"[bold]machine:[/] {machine['cpu']} ({machine['cores_visible']} cores visible, flags {machine['isa_flags']})"
    )
    results: dict[str, Any] = {
        "machine": machine,
        "command": "python benchmarks/optimize_bench.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": prof.model_dump(),
        "settings": {
            "runs": st.runs,
            "interleave_rounds": st.interleave_rounds,
            "max_drop": 1.0,
            "objective": "balanced",
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="edgefleet-optbench-") as td:
        work = Path(td)
        models = []
        if not only or only & {"mlp", "cnn", "encoder"}:
            models += _digits_models(work, args.quick)
        if not only or "silero" in only:
            models += _silero_models(args.quick)
        for m in models:
            if only and m["name"] not in only and not (m["name"].startswith("silero") and "silero" in only):
                continue
            console.rule(f"[bold]{m['name']}[/]: {m['what']}")
            out = work / f"out-{m['name']}"
            t0 = time.time()
            try:
                rep = optimize(
                    m["model"],
                    calib=m["calib"],
                    eval=m["eval"],
                    max_drop=1.0,
                    objective="balanced",
                    profile=prof,
                    out_dir=out,
                    keep_variants=True,
                    settings=st,
                )
            except BudgetNotMetError as e:
                rep = e.report  # type: ignore[attr-defined]
            elapsed = time.time() - t0
            _variant_table(rep)
            source = out / "variants" / "fp32.onnx"
            # plain quantize_dynamic starts from the model as the user has it (the export / shipped file)
            src_model = m["model"] if isinstance(m["model"], Path) else _export_copy(m, work)
            plain = _plain_dynamic(src_model, source, m["eval"], work, prof, st)
            c = rep.chosen_result
            tbl = Table(title=f"{m['name']}: chosen vs plain quantize_dynamic (defaults)")
            for col in ("", "size KB", "x smaller", "speed-up (interleaved)", rep.metric, "drop"):
                tbl.add_column(col, justify="right")
            base_size = rep.variant("fp32").size_bytes
            if c is not None:
                tbl.add_row(
                    f"chosen: {rep.chosen}",
                    f"{c.size_bytes / 1024:.1f}",
                    f"{c.size_ratio:.2f}",
                    f"{c.speedup_p50 or 1:.2f}x",
                    f"{c.quality.score:.2f}",
                    f"{c.drop:+.2f}",
                )
            if "error" in plain:
                tbl.add_row("plain quantize_dynamic", "-", "-", "-", "-", plain["error"][:60])
            else:
                tbl.add_row(
                    "plain quantize_dynamic",
                    f"{plain['size_bytes'] / 1024:.1f}",
                    f"{base_size / plain['size_bytes']:.2f}",
                    f"{plain['speedup_p50']:.2f}x",
                    f"{plain['quality']:.2f}",
                    f"{plain['drop']:+.2f}",
                )
            console.print(tbl)
            goals = _goals(m["name"], rep, plain)
            for g in goals:
                console.print(
                    f"  {'[green]met[/]' if g['met'] else '[red]not met[/]'} {g['goal']}: {g['figure']}"
                )
            results["models"][m["name"]] = {
                "what": m["what"],
                "trained_accuracy": m["trained_accuracy"],
                "seconds": round(elapsed, 1),
                "chosen": rep.chosen,
                "reason": rep.reason,
                "metric": rep.metric,
                "warnings": rep.warnings,
                "preparation": [s.model_dump() for s in rep.preparation],
                "variants": [_row(v) for v in rep.variants],
                "plain_quantize_dynamic": plain
                | ({"size_ratio": base_size / plain["size_bytes"]} if "size_bytes" in plain else {}),
                "goals": goals,
            }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"wrote {RESULTS}")
    return 0


def _variant_table(rep) -> None:
    t = Table(title=f"variants (balanced, max drop 1 {rep.metric} point); chosen: {rep.chosen}")
    cols = [
        ("variant", "variant"),
        ("outcome", "outcome"),
        ("size_kb", "size KB"),
        ("smaller", "smaller"),
        ("p50_ms", "p50 ms"),
        ("p95_ms", "p95 ms"),
        ("speedup", "speed-up*"),
        ("thr8", "b8/s"),
        ("rss_mb", "RSS MB"),
        ("quality", rep.metric),
        ("drop", "drop"),
        ("short", "why"),
    ]
    for key, title in cols:
        t.add_column(
            title,
            no_wrap=key != "short",
            justify="left" if key in ("variant", "outcome", "short") else "right",
        )
    for row in rep.table_rows():
        t.add_row(*[row[k] for k, _ in cols])
    console.print(t)
    console.print("* p50 speed-up against fp32 from interleaved runs", style="dim")
    for w in rep.warnings:
        console.print(f"[yellow]warning[/] {w['code']}: {w['message']}")


def _export_copy(m: dict[str, Any], work: Path) -> Path:
    """The torch model exported the way optimize() does it, for the plain quantize_dynamic run."""
    from edgefleet.optimize._convert import load_source, peek_example

    src = load_source(m["model"], work / f"export-{m['name']}", example_inputs=peek_example(m["calib"]))
    return src.path


def _row(v) -> dict[str, Any]:
    b = v.bench
    return {
        "name": v.name,
        "outcome": v.outcome,
        "reason": v.reason or v.error,
        "size_bytes": v.size_bytes,
        "size_ratio": v.size_ratio,
        "compressed_bytes": b.compressed_bytes if b else None,
        "p50_ms": b.latency.p50_ms if b else None,
        "p95_ms": b.latency.p95_ms if b else None,
        "mean_ms": b.latency.mean_ms if b else None,
        "std_ms": b.latency.std_ms if b else None,
        "init_ms": b.init_ms if b else None,
        "first_inference_ms": b.first_inference_ms if b else None,
        "throughput": {t.batch: t.samples_per_s for t in b.throughput} if b else None,
        "peak_rss_mb": b.peak_rss_mb if b else None,
        "speedup_p50_interleaved": v.speedup_p50,
        "interleaved_verdict": v.interleaved.verdict if v.interleaved else None,
        "quality": v.quality.score if v.quality else None,
        "drop": v.drop,
        "sparsity": v.sparsity,
        "excluded_nodes": v.excluded_nodes,
        "notes": v.notes,
    }


if __name__ == "__main__":
    sys.exit(main())
