"""Does ``edgefleet device fit`` predict p50 latency on devices it did not measure on?

Smaller devices are stood in for on this machine by thread counts, CPU affinity (``taskset``) and a cgroup
CPU quota. For every shape a child process runs under that constraint and does what a device would: it
probes its compute score (``edgefleet.power.compute_score``, what ``device probe`` writes) and measures each
model's p50. The parent measures the same models unconstrained ("here", the build machine) and predicts each
shape's p50 with ``edgefleet.power._fit.predict_p50`` from the child's profile. Shapes run interleaved,
``--reps`` times, so drift in the (shared) machine's load hits every shape alike; the table gives the median
error and the spread (min..max) of predicted/measured over the repetitions.

Models: the digits MLP (scikit-learn), a digits CNN and a transformer-style encoder (torch, exported to
ONNX; weights from one short epoch: latency does not depend on them) and silero-vad's shipped ONNX model.

Run:  .venv/bin/python benchmarks/fit_bench.py [--reps 5] [--runs 150]
Writes benchmarks/results/fit_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")

# name -> (threads, taskset cpus, cgroup cpu quota in cores)
SHAPES: dict[str, tuple[int, str | None, float | None]] = {
    "here, 1 thread": (1, None, None),
    "2 threads": (2, None, None),
    "taskset 1 cpu, 2 threads": (2, "0", None),
    "cgroup 0.5 cpu, 1 thread": (1, None, 0.5),
    "cgroup 0.5 cpu, 2 threads": (2, None, 0.5),
}


# --- models ----------------------------------------------------------------------------------------


def _export_torch(module: Any, example: np.ndarray, out: Path) -> None:
    import torch

    module.eval()
    torch.onnx.export(
        module,
        (torch.from_numpy(example),),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def build_models(work: Path) -> dict[str, dict[str, Any]]:
    """name -> {path, feed npz}: the four models and one batch-1 input for each."""
    from edgefleet.examples import digits, train_digits_mlp

    warnings.filterwarnings("ignore")
    d = digits(seed=0)
    models: dict[str, dict[str, Any]] = {}

    def add(name: str, path: Path, feed: dict[str, np.ndarray]) -> None:
        f = work / f"feed{len(models)}.npz"
        np.savez(f, **feed)
        models[name] = {"path": str(path), "feed": str(f)}

    mlp = work / "mlp.onnx"
    train_digits_mlp(mlp, hidden=(256, 128), data=d)
    add("digits MLP 64-256-128-10", mlp, {"input": (d.x_test[:1] / 16).astype(np.float32)})
    from edgefleet.optimize._zoo import train_digits_cnn, train_digits_encoder, vad_dataset

    cnn, _ = train_digits_cnn(d, channels=(32, 64), hidden=128, epochs=1)
    x = (d.x_test[:1] / 16).reshape(1, 1, 8, 8).astype(np.float32)
    _export_torch(cnn, x, work / "cnn.onnx")
    add("digits CNN 32/64 ch", work / "cnn.onnx", {"input": x})
    enc, _ = train_digits_encoder(d, d_model=128, heads=4, layers=3, epochs=1)
    x = (d.x_test[:1] / 16).reshape(1, 8, 8).astype(np.float32)
    _export_torch(enc, x, work / "encoder.onnx")
    add("encoder d128 x3", work / "encoder.onnx", {"input": x})
    import silero_vad

    vad = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    data = vad_dataset(vad, seconds=2, seed=0)
    add("silero-vad (shipped)", vad, {k: v[0] for k, v in data.items()})  # one chunk, its state, sr
    return models


# --- the child: one device ------------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run inside the constraint: probe the compute score as a device would, then time every model."""
    import onnxruntime as ort

    from edgefleet.power._profile import compute_score

    threads = spec["threads"]
    score = compute_score(threads=1)["score"]  # exactly what `edgefleet device probe` measures
    p50 = {}
    for name, m in spec["models"].items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(m["path"], opts, providers=["CPUExecutionProvider"])
        feed = dict(np.load(m["feed"]))
        for _ in range(10):
            sess.run(None, feed)
        times = []
        for _ in range(spec["runs"]):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        p50[name] = statistics.median(times) * 1000.0
    cores = len(os.sched_getaffinity(0))
    return {"score": score, "cores": cores, "p50_ms": p50}


def _cgroup(quota: float) -> Path | None:
    """A cgroup v1 cpu group with this quota (cgroup v2 here has no cpu controller); None if not writable."""
    if (CGROUP_V2 / "cgroup.controllers").exists() and "cpu" in (
        CGROUP_V2 / "cgroup.controllers"
    ).read_text():
        d = CGROUP_V2 / f"edgefleet-fit-{int(quota * 100)}"
        try:
            d.mkdir(exist_ok=True)
            (d / "cpu.max").write_text(f"{int(quota * 100_000)} 100000")
            return d
        except OSError:
            return None
    d = CGROUP_V1_CPU / f"edgefleet-fit-{int(quota * 100)}"
    try:
        d.mkdir(exist_ok=True)
        (d / "cpu.cfs_period_us").write_text("100000")
        (d / "cpu.cfs_quota_us").write_text(str(int(quota * 100_000)))
        return d
    except OSError:
        return None


def run_child(shape: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    threads, cpus, quota = SHAPES[shape]
    f = work / "spec.json"
    f.write_text(json.dumps({**spec, "threads": threads}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(f)]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    if quota is not None:
        cg = _cgroup(quota)
        if cg is None:
            raise SystemExit(f"cannot create a cgroup with a CPU quota under {CGROUP_V1_CPU} or {CGROUP_V2}")
        cmd = ["sh", "-c", f'echo $$ > {cg / "cgroup.procs"} && exec "$@"', "sh", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child for {shape!r} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- the parent -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=150, help="timed runs per model per child")
    ap.add_argument("--work", type=Path, help="keep the built models here and reuse them on the next run")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child.read_text()))))
        return

    from types import SimpleNamespace

    from edgefleet.power._fit import fit_threads, predict_p50

    work = args.work or Path(tempfile.mkdtemp(prefix="fit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    index = work / "models.json"
    if index.is_file():
        models = json.loads(index.read_text())
    else:
        models = build_models(work)
        index.write_text(json.dumps(models))
    print(
        f"models ready in {time.time() - t0:.0f} s; {args.reps} interleaved repetitions of {len(SHAPES)} shapes"
    )
    spec = {"models": models, "runs": args.runs}
    local_cores = len(os.sched_getaffinity(0))
    # per shape, per model: lists over repetitions
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for rep in range(args.reps):
        here = {t: run_child("here, 1 thread" if t == 1 else "2 threads", spec, work) for t in (1, 2)}
        for shape in SHAPES:
            threads, _cpus, quota = SHAPES[shape]
            dev = run_child(shape, spec, work)
            profile = SimpleNamespace(
                cores=dev["cores"],
                compute_score=dev["score"],
                device={"cgroup": {"cpu_quota_cores": quota}} if quota else None,
            )
            for name in models:
                ref = here[fit_threads(threads, profile)]  # what `device fit` measures here
                pred = predict_p50(ref["p50_ms"][name], ref["score"], profile)
                r = rows.setdefault((shape, name), {"pred": [], "meas": [], "ratio": []})
                r["pred"].append(pred)
                r["meas"].append(dev["p50_ms"][name])
                r["ratio"].append(pred / dev["p50_ms"][name])
        print(f"repetition {rep + 1}/{args.reps} done ({time.time() - t0:.0f} s)")

    table = []
    for (shape, name), r in rows.items():
        med = statistics.median(r["ratio"])
        table.append(
            {
                "shape": shape,
                "model": name,
                "predicted_p50_ms": statistics.median(r["pred"]),
                "measured_p50_ms": statistics.median(r["meas"]),
                "error_pct": (med - 1) * 100,
                "ratio_min": min(r["ratio"]),
                "ratio_max": max(r["ratio"]),
                "within_30pct": abs(med - 1) <= 0.30,
            }
        )
    hdr = f"{'shape':28} {'model':26} {'pred p50':>9} {'meas p50':>9} {'error':>7} {'pred/meas spread':>18}"
    print(hdr)
    for t in table:
        print(
            f"{t['shape']:28} {t['model']:26} {t['predicted_p50_ms']:8.3f}m {t['measured_p50_ms']:8.3f}m "
            f"{t['error_pct']:+6.0f}% {t['ratio_min']:8.2f}..{t['ratio_max']:.2f}"
        )
    ok = sum(t["within_30pct"] for t in table)
    print(f"{ok}/{len(table)} predictions within 30 % (median over {args.reps} repetitions)")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    out = ROOT / "benchmarks" / "results" / "fit_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/fit_bench.py " + " ".join(sys.argv[1:]),
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": local_cores,
                    "loadavg_at_end": load,
                    "note": "shared with other work while measured; shapes interleaved",
                    "cgroup": "v1 cpu controller (cfs_quota_us): this machine's cgroup v2 has no cpu controller",
                },
                "reps": args.reps,
                "runs": args.runs,
                "rows": table,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
