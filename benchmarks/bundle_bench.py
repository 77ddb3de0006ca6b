"""Bundle figures: create + verify time and archive overhead; delta sizes with zstd patch-from vs bsdiff4.

Models are MLPs with random weights built with ``onnx.helper`` (sizes are what matters here, not accuracy).
"Last layer retrained" keeps every weight except the classifier head's; "full fine-tune" nudges every
weight by ~0.1% (as a few epochs of fine-tuning do); "fp32 -> int8" is onnxruntime's dynamic quantization
of the same model.

Usage::

    .venv/bin/python benchmarks/bundle_bench.py                 # 10 MB and 100 MB models, deltas on 10 MB
    .venv/bin/python benchmarks/bundle_bench.py --sizes 10 --delta-size 10 --repeat 1   # quicker

Writes ``benchmarks/results/bundle.json`` and prints rich tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgefleet.bundle import Bundle, apply_delta, create_bundle, make_delta

CREATED = datetime(2025, 1, 1, tzinfo=UTC)
IN_DIM = 256
CLASSES = 100
# hidden width and number of hidden->hidden layers giving ~10 MB / ~100 MB of fp32 weights
SHAPES = {10: (1024, 2), 100: (2048, 6)}


def _mlp_weights(size_mb: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    hidden, n_mid = SHAPES[size_mb]
    rng = np.random.default_rng(seed)
    dims = [IN_DIM] + [hidden] * (n_mid + 1) + [CLASSES]
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (rng.standard_normal(b) * 0.01).astype(np.float32),
        )
        for a, b in zip(dims[:-1], dims[1:], strict=True)
    ]


def _save_mlp(layers: list[tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "input"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
        ]
        x = f"z{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"h{i}"]))
            x = f"h{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", IN_DIM])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-bench"
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _quantize(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def _bundle(model: Path, out: Path, version: str, variant: str, x: np.ndarray, ref: np.ndarray) -> Path:
    return create_bundle(
        model, out, name="bench", version=version, variant=variant, inputs_raw=x, reference_raw=ref,
        preprocess=[{"op": "to_float"}], created=CREATED, atol=1e-3, rtol=1e-2,
    )  # fmt: skip


def _timeit(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown"
    return name


def _deltas(t: Path, size: int, only: list[str] | None, methods: list[str], x, ref, progress) -> list[dict]:
    """Base v1.0.0 -> three kinds of v1.1.0, each diffed with every method and applied back."""
    try:
        from compression import zstd  # Python 3.14+
    except ImportError:
        from backports import zstd

    t.mkdir()
    base_layers = _mlp_weights(size, seed=1)
    base_model = _save_mlp(base_layers, t / "base.onnx")
    base = _bundle(base_model, t / "base.tar", "1.0.0", "cpu", x, ref)

    def head():
        layers = [(w.copy(), b.copy()) for w, b in base_layers]
        hrng = np.random.default_rng(7)
        w_last = layers[-1][0]
        layers[-1] = (
            (hrng.standard_normal(w_last.shape) / np.sqrt(w_last.shape[0])).astype(np.float32),
            (hrng.standard_normal(CLASSES) * 0.01).astype(np.float32),
        )
        return _bundle(_save_mlp(layers, t / "head.onnx"), t / "head.tar", "1.1.0", "cpu", x, ref)

    def fine():
        frng = np.random.default_rng(8)
        layers = [
            ((w * (1 + 1e-3 * frng.standard_normal(w.shape))).astype(np.float32),
             (b * (1 + 1e-3 * frng.standard_normal(b.shape))).astype(np.float32))
            for w, b in base_layers
        ]  # fmt: skip
        return _bundle(_save_mlp(layers, t / "fine.onnx"), t / "fine.tar", "1.1.0", "cpu", x, ref)

    def int8():
        return _bundle(_quantize(base_model, t / "q.onnx"), t / "q.tar", "1.0.0", "cpu-int8", x, ref)

    builders = {"last layer retrained": head, "full fine-tune": fine, "fp32 -> int8": int8}
    labels = [k for k in builders if only is None or k in only]
    task = progress.add_task(f"deltas {size} MB", total=len(labels) * len(methods))
    rows = []
    for label in labels:
        target = builders[label]()
        data = target.read_bytes()
        plain = len(zstd.compress(data, level=19))
        for method in methods:
            patch = t / f"{method}.delta"
            make_s, info = _timeit(lambda p=patch, m=method, tg=target: make_delta(base, tg, p, method=m), 1)
            rebuilt = t / "rebuilt.tar"
            apply_s, _ = _timeit(
                lambda p=patch, i=info, r=rebuilt: apply_delta(base, p, r, expected_sha256=i.target_sha256), 1
            )
            assert rebuilt.read_bytes() == data
            rows.append({
                "scenario": label, "method": method, "model_mb": size, "patch_bytes": info.size,
                "target_bytes": info.target_length, "ratio": info.ratio, "plain_zstd_ratio": plain / len(data),
                "make_s": make_s, "apply_s": apply_s,
            })  # fmt: skip
            progress.advance(task)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100], choices=sorted(SHAPES))
    ap.add_argument("--delta-size", type=int, default=10, choices=sorted(SHAPES))
    ap.add_argument(
        "--big-head", action="store_true", help="also measure 'last layer retrained' on the 100 MB model"
    )
    ap.add_argument("--methods", nargs="+", default=["zstd", "bsdiff"], choices=["zstd", "bsdiff"])
    ap.add_argument("--repeat", type=int, default=2, help="best of N for timings")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bundle.json")
    args = ap.parse_args()
    console = Console(width=160)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice is noise here
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, IN_DIM)).astype(np.float32)
    ref = rng.standard_normal((256, IN_DIM)).astype(np.float32)
    results: dict[str, object] = {"machine": _machine(), "cores": os.cpu_count(), "create_verify": [],
                                  "deltas": []}  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp, Progress(console=console) as progress:
        t = Path(tmp)
        task = progress.add_task("create + verify", total=len(args.sizes))
        for size in args.sizes:
            model = _save_mlp(_mlp_weights(size, seed=1), t / f"m{size}.onnx")
            out = t / f"b{size}.tar"
            create_s, _ = _timeit(lambda m=model, o=out: _bundle(m, o, "1.0.0", "cpu", x, ref), args.repeat)

            def open_verify(o=out):
                with Bundle.open(o) as b:
                    return b.verify()

            verify_s, report = _timeit(open_verify, args.repeat)
            model_bytes, archive_bytes = model.stat().st_size, out.stat().st_size
            results["create_verify"].append({
                "model_mb": size, "model_bytes": model_bytes, "archive_bytes": archive_bytes,
                "overhead": archive_bytes / model_bytes, "create_s": create_s, "open_verify_s": verify_s,
                "golden": report.golden_count,
            })  # fmt: skip
            progress.advance(task)

        jobs = [(args.delta_size, None)] + ([(100, ["last layer retrained"])] if args.big_head else [])
        for size, only in jobs:
            results["deltas"] += _deltas(t / f"d{size}", size, only, args.methods, x, ref, progress)

    cv = Table("model", "model bytes", "archive bytes", "overhead (archive/model)", "create s", "open+verify s",
               title="bundle create + verify")  # fmt: skip
    for r in results["create_verify"]:
        cv.add_row(f"{r['model_mb']} MB MLP", f"{r['model_bytes']:,}", f"{r['archive_bytes']:,}",
                   f"{r['overhead']:.4f}", f"{r['create_s']:.2f}", f"{r['open_verify_s']:.2f}")  # fmt: skip
    console.print(cv)
    dt = Table("model", "scenario", "target bytes", *[f"{m} patch % of target" for m in args.methods],
               "zstd-19 alone %", *[f"{m} make / apply s" for m in args.methods],
               title="deltas (patch size as % of the new archive)")  # fmt: skip
    for key in dict.fromkeys((r["model_mb"], r["scenario"]) for r in results["deltas"]):
        rows = {r["method"]: r for r in results["deltas"] if (r["model_mb"], r["scenario"]) == key}
        first = next(iter(rows.values()))
        dt.add_row(f"{key[0]} MB", key[1], f"{first['target_bytes']:,}",
                   *[f"{100 * rows[m]['ratio']:.2f}%" for m in args.methods],
                   f"{100 * first['plain_zstd_ratio']:.1f}%",
                   *[f"{rows[m]['make_s']:.1f} / {rows[m]['apply_s']:.2f}" for m in args.methods])  # fmt: skip
    console.print(dt)
    console.print(f"machine: {results['machine']} ({results['cores']} cores, shared)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
