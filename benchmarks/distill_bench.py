"""Issue 16 — distillation, structured pruning, QAT: what each makes of real small torch models on digits.

1. CNN teacher -> distilled students (built-in MobileNetV2-style family at two widths): parameters, MACs,
   ONNX size, p50 ratio against the teacher, accuracy.
2. Structured pruning (torch-pruning, 50 % of channels, then fine-tuned by distillation) against
   unstructured magnitude pruning at the same weight sparsity (zeros stored densely): size and p50.
3. Transformer-style encoder (4 attention blocks) -> fewer-blocks student (2, initialised from the
   teacher's blocks), distilled; both fp32 and dynamic int8 (onnxruntime quantize_dynamic).
4. QAT against post-training static int8 (QDQ, per-tensor and per-channel) on the smallest student.

Latency: one ONNX Runtime session per model, one thread, batch 1, ``--reps`` interleaved repetitions of
``--runs`` timed calls each; a ratio is the median over repetitions of (model p50 / reference p50), with
its min-max spread. Everything is seeded.

Run:  .venv/bin/python benchmarks/distill_bench.py [--reps 5] [--runs 300] [--epochs 30]
Writes benchmarks/results/distill.json and prints a table per part.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from edgefleet.examples import digits
from edgefleet.optimize._convert import load_source
from edgefleet.optimize._distill import DistillConfig, distill
from edgefleet.optimize._prune import structured_prune
from edgefleet.optimize._qat import export_qdq, qat
from edgefleet.optimize._recipe import macs_params
from edgefleet.optimize._students import build_student
from edgefleet.optimize._zoo import train_digits_cnn, train_digits_encoder

console = Console(width=170)
ROOT = Path(__file__).resolve().parent


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_acc(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    s = session(path)
    name = s.get_inputs()[0].name
    out = np.concatenate([s.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    return float((out.argmax(1) == y).mean())


def p50_ratios(paths: dict[str, Path], ref: str, x1: np.ndarray, reps: int, runs: int) -> dict[str, dict]:
    """Interleaved: each repetition times every model (``runs`` calls), in rotating order."""
    sess = {k: session(p) for k, p in paths.items()}
    names = {k: s.get_inputs()[0].name for k, s in sess.items()}
    for k, s in sess.items():  # warm-up
        for _ in range(20):
            s.run(None, {names[k]: x1})
    per: dict[str, list[float]] = {k: [] for k in paths}
    keys = list(paths)
    for r in range(reps):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess[k].run(None, {names[k]: x1})
                t.append(time.perf_counter() - t0)
            per[k].append(float(np.median(t)) * 1000)
    out = {}
    for k in keys:
        ratios = [a / b for a, b in zip(per[k], per[ref], strict=True)]
        out[k] = {
            "p50_ms": float(np.median(per[k])),
            "ratio_vs_ref": float(np.median(ratios)),
            "ratio_min": float(min(ratios)),
            "ratio_max": float(max(ratios)),
        }
    return out


def export(model: Any, x1: np.ndarray, work: Path, name: str) -> Path:
    return load_source(model, work / name, example_inputs={"input": x1}).path


def row(name: str, model: Any, path: Path, x: np.ndarray, y: np.ndarray, lat: dict, ex: torch.Tensor) -> dict:
    macs, params = macs_params(model, ex) if model is not None else (None, None)
    return {
        "model": name,
        "params": params,
        "macs": macs,
        "size_bytes": path.stat().st_size,
        "accuracy": onnx_acc(path, x, y),
        **lat[name],
    }


def show(title: str, rows: list[dict], ref: str) -> None:
    t = Table(title=title)
    for c in ("model", "params", "MACs", "ONNX KB", "accuracy %", "p50 ms", f"p50 vs {ref}", "spread"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        t.add_row(
            r["model"],
            f"{r['params']:,}" if r["params"] else "-",
            f"{r['macs']:,}" if r["macs"] else "-",
            f"{r['size_bytes'] / 1024:.1f}",
            f"{100 * r['accuracy']:.2f}",
            f"{r['p50_ms']:.4f}",
            f"x{r['ratio_vs_ref']:.2f}",
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}",
        )
    console.print(t)


def unstructured(model: Any, sparsity: float) -> Any:
    """Magnitude pruning of every Conv/Linear weight to ``sparsity`` zeros (what pruned-NN does in ONNX)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                w = mod.weight
                k = int(w.numel() * sparsity)
                thr = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= thr] = 0
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = digits(seed=0)
    x = (d.x_train / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    xte = (d.x_test / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    y, yte = d.y_train, d.y_test
    x1, ex = xte[:1], torch.from_numpy(xte[:1])
    cfg = DistillConfig(epochs=args.epochs, patience=args.epochs, seed=0)
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. CNN teacher -> students
        t0 = time.time()
        teacher, _ = train_digits_cnn(d, epochs=8)
        models = {"teacher CNN": teacher}
        for w in (0.5, 0.75):
            s = build_student(f"width{w}", teacher, ex)
            distill(teacher, s, x, y, config=cfg)
            models[f"student width{w}"] = s
        paths = {k: export(m, x1, work, k.replace(" ", "_")) for k, m in models.items()}
        lat = p50_ratios(paths, "teacher CNN", x1, args.reps, args.runs)
        rows = [row(k, m, paths[k], xte, yte, lat, ex) for k, m in models.items()]
        show("1. CNN teacher distilled into built-in students (1 thread, batch 1)", rows, "teacher")
        results["distill_cnn"] = rows
        console.print(f"  part 1: {time.time() - t0:.0f} s")

        # 2. structured vs unstructured pruning at the same sparsity
        t0 = time.time()
        pr = structured_prune(
            teacher,
            x,
            0.5,
            y=y,
            fine_tune=lambda m, s: distill(teacher, m, x, y, config=cfg.model_copy(update={"epochs": 5})),
        )
        sparsity = 1 - pr.params_after / pr.params_before
        un = unstructured(teacher, sparsity)
        un_ft = {
            "teacher CNN": teacher,
            "structured 50% channels": pr.model,
            f"unstructured {sparsity:.0%} zeros": un,
        }
        paths = {k: export(m, x1, work, f"p{i}") for i, (k, m) in enumerate(un_ft.items())}
        lat = p50_ratios(paths, "teacher CNN", x1, args.reps, args.runs)
        rows = [row(k, m, paths[k], xte, yte, lat, ex) for k, m in un_ft.items()]
        rows[2]["macs"] = rows[0]["macs"]  # dense kernels still multiply every zero
        show("2. structured (torch-pruning, fine-tuned 5 epochs) vs unstructured pruning", rows, "teacher")
        results["pruning"] = {"sparsity": sparsity, "rows": rows}
        console.print(f"  part 2: {time.time() - t0:.0f} s")

        # 3. transformer-style encoder: fewer blocks + dynamic int8
        t0 = time.time()
        from onnxruntime.quantization import QuantType, quantize_dynamic

        xe = (d.x_train / 16).reshape(-1, 8, 8).astype(np.float32)
        xee = (d.x_test / 16).reshape(-1, 8, 8).astype(np.float32)
        enc, _ = train_digits_encoder(d, d_model=64, heads=4, layers=4, epochs=10, lr=2e-3)
        small = build_student("width0.5", enc, torch.from_numpy(xee[:1]))
        distill(enc, small, xe, y, config=cfg.model_copy(update={"lr": 2e-3}))
        mods = {"teacher 4 blocks": enc, "student 2 blocks": small}
        paths = {k: export(m, xee[:1], work, f"e{i}") for i, (k, m) in enumerate(mods.items())}
        for k in list(mods):
            q = work / f"{k.replace(' ', '_')}_int8.onnx"
            quantize_dynamic(str(paths[k]), str(q), weight_type=QuantType.QInt8)
            paths[f"{k} + dynamic int8"] = q
        lat = p50_ratios(paths, "teacher 4 blocks", xee[:1], args.reps, args.runs)
        exe = torch.from_numpy(xee[:1])
        rows = [row(k, mods.get(k.split(" +")[0]), p, xee, yte, lat, exe) for k, p in paths.items()]
        show("3. transformer-style encoder: fewer blocks (distilled) and dynamic int8", rows, "teacher")
        results["encoder"] = rows
        console.print(f"  part 3: {time.time() - t0:.0f} s")

        # 4. QAT vs post-training static int8 on the smallest student
        t0 = time.time()
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter([{"input": x[i : i + 1]} for i in range(64)])

            def get_next(self) -> dict | None:
                return next(self.it, None)

        tiny = build_student("width0.25", teacher, ex)
        distill(teacher, tiny, x, y, config=cfg)
        fp = export(tiny, x1, work, "tiny")
        paths = {"student width0.25 fp32": fp}
        for pc in (False, True):
            q = work / f"ptq_{pc}.onnx"
            quantize_static(str(fp), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=pc)
            paths[f"PTQ static int8 ({'per-channel' if pc else 'per-tensor'})"] = q
        qm, _ = qat(
            tiny, x, y, config=cfg.model_copy(update={"epochs": max(3, args.epochs // 3), "lr": 1e-3})
        )
        paths["QAT int8 (QDQ)"] = export_qdq(qm, x1, work / "qat.onnx")
        lat = p50_ratios(paths, "student width0.25 fp32", x1, args.reps, args.runs)
        rows = [row(k, tiny if k.endswith("fp32") else None, p, xte, yte, lat, ex) for k, p in paths.items()]
        show("4. QAT vs post-training static int8 (QDQ) on the width-0.25 student", rows, "fp32")
        results["qat"] = rows
        console.print(f"  part 4: {time.time() - t0:.0f} s")
    out = ROOT / "results" / "distill.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
