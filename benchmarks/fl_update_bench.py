"""Federated update size and SecAgg+ cost, with real Flower processes on loopback (issue 14, items 4-5).

Part 1 (compression): the same FedAvg job on non-IID digits splits (edgefleet.federated._data's
digits_federation, the one benchmarks/fl_bench.py uses) with ``--update-compression`` none / int8 /
topk:0.1: final held-out accuracy, and bytes up per device per round, both the arrays a device sends
(``bytes_up``) and the serialized records (``bytes_up_wire``: Flower's protobuf, npy headers included).

Part 2 (SecAgg+): round time of the same job plain and with ``--secagg`` (default shares and threshold),
and SecAgg+'s bytes (masked vector, and all four exchanges on the wire).

Every configuration runs once per repetition, interleaved (none, int8, topk, plain, secagg, none, ...), a
different split seed per repetition; the table gives mean ± standard deviation over repetitions and the
ratios to the uncompressed / plain run of the same repetition. Round 1 pays Flower's cold start (the
SuperNodes connect), so round time is the mean of rounds 2.. of a run.

    python benchmarks/fl_update_bench.py [--repeats 3] [--devices 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgefleet.federated import JobSpec

sys.path.insert(0, str(Path(__file__).parent))
from fl_bench import run_federation  # noqa: E402 - the same job runner as the accuracy benchmark

RESULTS = Path(__file__).parent / "results" / "fl_update_bench.json"
CODECS = ["none", "int8", "topk:0.1"]


def run_job(root: Path, spec: JobSpec, n_devices: int, seed: int) -> dict[str, Any]:
    events, wall_s = run_federation(root, spec.job_id, spec, n_devices, seed=seed)
    rounds = [e for e in events if e["event"] == "round"]
    per = lambda key: [r[key] / max(r["answered"], 1) for r in rounds]  # noqa: E731
    return {
        "job": spec.job_id,
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "accuracy_base": events[0]["accuracy"],
        "accuracy_final": rounds[-1]["accuracy"],
        "accuracy_per_round": [r["accuracy"] for r in rounds],
        "answered": [r["answered"] for r in rounds],
        "aggregated": [r["aggregated"] for r in rounds],
        "round_s": [r["seconds"] for r in rounds],
        "bytes_up_per_device": statistics.mean(per("bytes_up")),
        "bytes_up_wire_per_device": statistics.mean(per("bytes_up_wire")),
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["config"], []).append(r)
    for config, rs in by.items():
        ref_name = "none" if config in CODECS else "plain"
        refs = {r["seed"]: r for r in by.get(ref_name, [])}
        acc = [100 * r["accuracy_final"] for r in rs]
        drop = [
            100 * (refs[r["seed"]]["accuracy_final"] - r["accuracy_final"]) for r in rs if r["seed"] in refs
        ]
        up = [r["bytes_up_per_device"] for r in rs]
        wire = [r["bytes_up_wire_per_device"] for r in rs]
        up_ratio = [
            r["bytes_up_wire_per_device"] / refs[r["seed"]]["bytes_up_wire_per_device"]
            for r in rs
            if r["seed"] in refs
        ]
        later = [statistics.mean(r["round_s"][1:] or r["round_s"]) for r in rs]
        time_ratio = [
            statistics.mean(r["round_s"][1:] or r["round_s"])
            / statistics.mean(refs[r["seed"]]["round_s"][1:] or refs[r["seed"]]["round_s"])
            for r in rs
            if r["seed"] in refs
        ]
        rows.append(
            {
                "config": config,
                "runs": len(rs),
                "accuracy_pct": _mean_sd(acc),
                "accuracy_cost_points": _mean_sd(drop),
                "bytes_up_per_device_round": _mean_sd(up),
                "bytes_up_wire_per_device_round": _mean_sd(wire),
                "wire_up_ratio": _mean_sd(up_ratio),
                "round_s": _mean_sd(later),
                "round_time_ratio": _mean_sd(time_ratio),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'config':<10} {'n':>2} {'accuracy %':>13} {'cost pts':>12} {'B up/dev/rnd':>14} "
        f"{'wire B up':>14} {'wire ratio':>12} {'round s':>12} {'time ratio':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        f = lambda v, d=1: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
        print(
            f"{r['config']:<10} {r['runs']:>2} {f(r['accuracy_pct']):>13} {f(r['accuracy_cost_points']):>12} "
            f"{f(r['bytes_up_per_device_round'], 0):>14} {f(r['bytes_up_wire_per_device_round'], 0):>14} "
            f"{f(r['wire_up_ratio'], 3):>12} {f(r['round_s'], 2):>12} {f(r['round_time_ratio'], 2):>12}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="repetitions (split seeds), interleaved")
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the compression runs")
    ap.add_argument("--secagg-rounds", type=int, default=3, help="rounds of the plain/SecAgg+ runs")
    ap.add_argument("--only", choices=["compression", "secagg"], action="append")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the Flower processes on the way out
    parts = set(args.only or ["compression", "secagg"])
    common = {
        "local_epochs": 2,
        "learning_rate": 0.5,
        "clients_per_round": args.devices,
        "min_clients": args.devices,
        "round_deadline_s": 600,
    }
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in range(args.repeats):
            configs: list[tuple[str, dict[str, Any]]] = []
            if "compression" in parts:
                configs += [(c, {"update_compression": c, "rounds": args.rounds}) for c in CODECS]
            if "secagg" in parts:
                configs += [
                    ("plain", {"rounds": args.secagg_rounds}),
                    ("secagg", {"rounds": args.secagg_rounds, "secagg": {}}),
                ]
            for name, extra in configs:
                job_id = f"{name.replace(':', '').replace('.', '')}-s{seed}"
                spec = JobSpec(job_id=job_id, **common, **extra)
                run = run_job(root, spec, args.devices, seed)
                run["config"] = name
                runs.append(run)
                RESULTS.parent.mkdir(parents=True, exist_ok=True)  # so far, in case the run is cut short
                RESULTS.write_text(
                    json.dumps({"config": vars(args), "runs": runs, "partial": True}, indent=1)
                )
                print(
                    {
                        k: run[k]
                        for k in ("job", "accuracy_final", "bytes_up_per_device", "round_s", "wall_s")
                    },
                    flush=True,
                )
    rows = summarize(runs)
    out = {
        "config": vars(args),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "runs": runs,
        "summary": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print_table(rows)
    print(
        f"load average before {load_before[0]:.2f}, after {out['loadavg_after'][0]:.2f} ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
