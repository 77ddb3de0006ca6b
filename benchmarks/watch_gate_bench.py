"""The device's watch-window latency gate on a busy CPU: does a good release pass and a slow one fail?

    .venv/bin/python benchmarks/watch_gate_bench.py              # 100 trials per case, both cores hogged
    .venv/bin/python benchmarks/watch_gate_bench.py --trials 20 --no-hog

Models: an MLP on 64 inputs with two 2048-wide hidden layers (one 2048x2048 matmul, 17 MB) is the previous
version; the *good* release is a second model of the same shape (other weights); the *slow* release has four
such hidden layers (three 2048x2048 matmuls: really ~3x the work). Weights are random: latency is what is judged.

Each trial is one watch window as the agent runs it. The **paired** gate (the agent's, agent/_paired.py):
5 looks, each timing 20 calls of the new and 20 of the previous model interleaved ABBA on golden rows; a
look is slow when the median ratio > 1.5 and the new median is > 0.5 ms slower; the release fails when 3
looks in a row are slow. The **baseline** gate (the agent before): p95 of 30 calls of the new model in the
window against a p95 of the previous model measured before the window, with the same 1.5x / 0.5 ms limits.
During every window, ``--hog`` processes (default 2, one per core) spin at full speed, started only after the
baseline was taken (the CPU got busy after the update, as in the demo that rolled a good release back).

Writes benchmarks/results/watch_gate.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgefleet.agent._paired import latency_verdict, paired_look

ROOT = Path(__file__).resolve().parents[1]
MAX_RATIO, SLACK_MS, PERSISTENCE, LOOKS, PAIRS, LIVE_CALLS = 1.5, 0.5, 3, 5, 20, 30


def mlp(path: Path, hidden_layers: int, seed: int, width: int = 2048) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, prev, dim = [], [], "input", 64
    for i in range(hidden_layers):
        w = rng.normal(0, 1 / np.sqrt(dim), (dim, width)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"h{i}"]),
        ]
        prev, dim = f"h{i}", width
    inits.append(numpy_helper.from_array(rng.normal(0, 0.01, (dim, 10)).astype(np.float32), "wo"))
    nodes += [
        helper.make_node("MatMul", [prev, "wo"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feed: s.run(None, feed)


def _spin(deadline: float) -> None:
    x = 0
    while time.time() < deadline:  # bounded: never outlives the benchmark
        x += 1


class Hog:
    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []

    def __enter__(self) -> Hog:
        deadline = time.time() + 600
        self.procs = [mp.Process(target=_spin, args=(deadline,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(10)


def p95(fn, rows, n: int) -> float:
    t = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(rows[i % len(rows)])
        t.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(t, 95))


def trial(new, old, rows, hog: int, rng: np.random.Generator) -> dict[str, object]:
    baseline = p95(old, rows, LIVE_CALLS)  # quiet: measured before the window
    with Hog(hog):
        time.sleep(0.05)
        looks = []
        for _ in range(LOOKS):
            looks.append(paired_look(new, old, rows, rows, pairs=PAIRS))
            time.sleep(float(rng.uniform(0.01, 0.05)))
        live = p95(new, rows, LIVE_CALLS)
    paired, _ = latency_verdict(
        looks, max_ratio=MAX_RATIO, slack_ms=SLACK_MS, persistence=PERSISTENCE, done=True
    )
    base_fail = live / baseline > MAX_RATIO and live - baseline > SLACK_MS
    return {
        "paired": paired,
        "baseline": "fail" if base_fail else "pass",
        "ratios": [round(lk.ratio, 3) for lk in looks],
        "live_over_baseline": round(live / baseline, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--hog", type=int, default=2, help="busy processes during each window (0: quiet)")
    ap.add_argument("--no-hog", dest="hog", action="store_const", const=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "watch_gate.json")
    args = ap.parse_args()
    work = ROOT / "benchmarks" / "results" / ".watch_gate_models"
    work.mkdir(parents=True, exist_ok=True)
    old = session(mlp(work / "old.onnx", 2, seed=1))
    cases = {
        "good (same size)": session(mlp(work / "good.onnx", 2, seed=2)),
        "slow (3x work)": session(mlp(work / "slow.onnx", 4, seed=3)),
    }
    rows = [{"input": np.random.default_rng(i).random((1, 64), dtype=np.float32)} for i in range(8)]
    for fn in (old, *cases.values()):
        for r in rows:
            fn(r)
    rng = np.random.default_rng(0)
    results = {name: [] for name in cases}
    t0 = time.time()
    for i in range(args.trials):  # interleaved: the good and the slow case meet the same machine
        for name, fn in cases.items():
            results[name].append(trial(fn, old, rows, args.hog, rng))
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{args.trials} trials ({time.time() - t0:.0f} s)", flush=True)
    table = Table(title=f"watch-window latency gate, {args.trials} trials per case, {args.hog} hog processes")
    for col in ("release", "gate", "passed", "failed", "look ratio p50 [p5, p95]"):
        table.add_column(col)
    summary = []
    for name, rs in results.items():
        ratios = np.array([r for t in rs for r in t["ratios"]])
        live = np.array([t["live_over_baseline"] for t in rs])
        for gate in ("paired", "baseline"):
            passed = sum(t[gate] == "pass" for t in rs)
            spread = ratios if gate == "paired" else live
            summary.append(
                {
                    "release": name,
                    "gate": gate,
                    "passed": passed,
                    "failed": len(rs) - passed,
                    "ratio_p50": float(np.median(spread)),
                    "ratio_p5": float(np.percentile(spread, 5)),
                    "ratio_p95": float(np.percentile(spread, 95)),
                }
            )
            s = summary[-1]
            table.add_row(
                name,
                gate,
                str(passed),
                str(len(rs) - passed),
                f"{s['ratio_p50']:.2f} [{s['ratio_p5']:.2f}, {s['ratio_p95']:.2f}]",
            )
    Console().print(table)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
                "settings": {
                    "max_ratio": MAX_RATIO,
                    "slack_ms": SLACK_MS,
                    "persistence": PERSISTENCE,
                    "looks": LOOKS,
                    "pairs": PAIRS,
                    "hog_processes": args.hog,
                    "trials": args.trials,
                },
                "summary": summary,
                "seconds": round(time.time() - t0, 1),
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
