"""Federated learning on Flower (issue 14): accuracy, round time under stragglers, bytes, and DP cost.

Every federated figure comes from real Flower processes on loopback: a SuperLink the Coordinator manages
and one SuperNode process per device, training edgefleet's numpy softmax head on a non-IID (Dirichlet
alpha=0.5 over labels) split of scikit-learn's digits; accuracy is on 400 held-out samples the server keeps.

- accuracy per round until convergence (``--accuracy-rounds``, default 12) for FedAvg and FedProx with the
  settings the earlier figures used (2 local epochs, learning rate 0.5: the default row) and FedAvg with
  more local training (5 epochs at learning rate 1.0, and 10 epochs at 0.5: the tuned rows; a numpy
  simulation of the same rounds picked them), against centralized training of
  the same head from the same start on the pooled device data, both with the same passes over the data as
  the federated run and trained to convergence (the fair baseline); ``--repeats`` (default 3) Dirichlet
  splits (seeds 0, 1, 2...), interleaved: every configuration runs on split 0, then on split 1...;
- round time with 0 %, 20 % and 50 % stragglers (a straggler holds its reply 3x the deadline), two
  rounds each: the first pays the cold start (Flower installs the App, first ClientApp processes);
- payload bytes per device per round, down and up;
- accuracy at DP ε = 1, 3, 8 (δ = 1e-5): the noise multiplier that spends exactly that ε over the job's
  rounds, found with Flower's RDP accountant.

The straggler and DP parts run once per configuration (each is minutes of real processes on a shared 2-core
machine): read their round times as single observations. The accuracy part writes
``results/fl_bench_accuracy.json``, the others ``results/fl_bench.json``.

    python benchmarks/fl_bench.py [--accuracy-rounds 12] [--repeats 3] [--rounds 4] [--devices 5]
        [--straggler-devices 10] [--deadline 45] [--only accuracy|stragglers|dp] [--config ROW]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefleet.federated import Coordinator, JobSpec, PrivacySettings, SuperNode
from edgefleet.federated._data import digits_federation

RESULTS = Path(__file__).parent / "results" / "fl_bench.json"
ACCURACY_RESULTS = RESULTS.with_name("fl_bench_accuracy.json")
# the accuracy rows: (name, strategy, local epochs, learning rate)
ACCURACY_CONFIGS = [
    ("fedavg", "fedavg", 2, 0.5),
    ("fedprox", "fedprox", 2, 0.5),
    ("fedavg-tuned", "fedavg", 5, 1.0),
    ("fedavg-e10", "fedavg", 10, 0.5),
]
GOAL_POINTS = 2.0  # within this many points of centralized training (converged)


def run_federation(
    root: Path, name: str, spec: JobSpec, n_devices: int, stragglers: int = 0, seed: int = 0
) -> tuple[list[dict[str, Any]], float]:
    """One job with real Flower processes on ``n_devices`` non-IID digits splits (the first ``stragglers``
    devices answer after three deadlines): the job's events and its wall time in seconds."""
    folders, base, held_out, _ = digits_federation(n_devices, root / name / "data", seed=seed)
    coordinator = Coordinator(root / name / "job", spec, base, eval_data=held_out)
    nodes = [
        SuperNode(
            coordinator.address,
            folder,
            root / name / f"node{i}",
            train_delay_s=3 * spec.round_deadline_s if i < stragglers else 0.0,
        )
        for i, folder in enumerate(folders)
    ]
    started = time.monotonic()
    try:
        coordinator.start()
        for node in nodes:
            node.start()
        events = coordinator.wait(timeout_s=1800)
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop()
        coordinator.stop()
    return events, time.monotonic() - started


def run_job(
    root: Path, name: str, spec: JobSpec, n_devices: int, stragglers: int = 0, seed: int = 0
) -> dict[str, Any]:
    events, wall_s = run_federation(root, name, spec, n_devices, stragglers, seed)
    rounds = [e for e in events if e["event"] == "round"]
    return {
        "name": name,
        "wall_s": round(wall_s, 1),
        "accuracy_base": events[0]["accuracy"],
        "accuracy_per_round": [r["accuracy"] for r in rounds],
        "round_s": [r["seconds"] for r in rounds],
        "answered": [r["answered"] for r in rounds],
        "late": [r["late"] for r in rounds],
        "bytes_down_per_device": [r["bytes_down"] / max(r["selected"], 1) for r in rounds],
        "bytes_up_per_device": [r["bytes_up"] / max(r["answered"], 1) for r in rounds],
        "epsilon": rounds[-1].get("epsilon"),
    }


def centralized(n_devices: int, epochs: int, lr: float, seed: int = 0) -> dict[str, Any]:
    """The same head from the same start trained on the pooled device data: for ``epochs`` (the federated
    run's passes over the data), and to convergence (until ten more epochs lower the training loss by less
    than 1e-4, at most 500 epochs; the held-out set is never used to stop)."""
    with tempfile.TemporaryDirectory() as d:
        _, base, held_out, (x, y) = digits_federation(n_devices, Path(d), seed=seed)
    same = base.train(x, y, epochs=epochs, lr=lr)
    head, loss, converged_at = base, base.loss(x, y), 500
    for epoch in range(10, 501, 10):
        head = head.train(x, y, epochs=10, lr=lr, seed=epoch)
        new = head.loss(x, y)
        if loss - new < 1e-4:
            converged_at = epoch
            break
        loss = new
    return {
        "accuracy_same_passes": same.accuracy(*held_out),
        "epochs_same_passes": epochs,
        "accuracy_converged": head.accuracy(*held_out),
        "epochs_converged": converged_at,
    }


def accuracy_part(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every accuracy configuration on each split seed (interleaved), with the centralized baselines."""
    runs: list[dict[str, Any]] = []
    for seed in range(args.repeats):
        for name, strategy, epochs, lr in ACCURACY_CONFIGS:
            if args.config and name not in args.config:
                continue
            spec = JobSpec(
                job_id=f"{name}-s{seed}",
                rounds=args.accuracy_rounds,
                strategy=strategy,
                local_epochs=epochs,
                learning_rate=lr,
                round_deadline_s=600,
                clients_per_round=args.devices,
                min_clients=1,
            )
            run = run_job(root, spec.job_id, spec, args.devices, seed=seed)
            base = centralized(args.devices, epochs=args.accuracy_rounds * epochs, lr=lr, seed=seed)
            run.update(config=name, seed=seed, local_epochs=epochs, learning_rate=lr, centralized=base)
            run["gap_points"] = round(100 * (base["accuracy_converged"] - run["accuracy_per_round"][-1]), 2)
            within = [
                i + 1
                for i, a in enumerate(run["accuracy_per_round"])
                if 100 * (base["accuracy_converged"] - a) <= GOAL_POINTS
            ]
            run["first_round_within_goal"] = within[0] if within else None
            runs.append(run)
            print({k: run[k] for k in ("name", "accuracy_per_round", "round_s", "gap_points")}, flush=True)
    if args.config and ACCURACY_RESULTS.exists():  # a subset: keep the other configurations' runs
        kept = [r for r in json.loads(ACCURACY_RESULTS.read_text())["runs"] if r["config"] not in args.config]
        runs = kept + runs
    return {"config": vars(args), "configs": ACCURACY_CONFIGS, "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: final accuracy and gap to converged centralized, mean and range over the splits."""
    import statistics

    out = []
    for name, *_ in ACCURACY_CONFIGS:
        rs = [r for r in runs if r["config"] == name]
        if not rs:
            continue

        def spread(vals: list[float]) -> dict[str, float]:
            return {
                "mean": round(statistics.fmean(vals), 2),
                "min": round(min(vals), 2),
                "max": round(max(vals), 2),
            }

        curve = [statistics.fmean(c) * 100 for c in zip(*(r["accuracy_per_round"] for r in rs), strict=True)]
        out.append(
            {
                "config": name,
                "splits": len(rs),
                "final_accuracy": spread([100 * r["accuracy_per_round"][-1] for r in rs]),
                # the last three rounds' mean: a large local learning rate makes the last round jumpy
                "last3_accuracy": spread([100 * statistics.fmean(r["accuracy_per_round"][-3:]) for r in rs]),
                "centralized_same_passes": spread(
                    [100 * r["centralized"]["accuracy_same_passes"] for r in rs]
                ),
                "centralized_converged": spread([100 * r["centralized"]["accuracy_converged"] for r in rs]),
                "gap_points": spread([r["gap_points"] for r in rs]),
                "mean_accuracy_per_round": [round(a, 1) for a in curve],
                "first_round_within_goal": [r["first_round_within_goal"] for r in rs],
                "round_s": spread([s for r in rs for s in r["round_s"]]),
            }
        )
    return out


def noise_for_epsilon(epsilon: float, rounds: int, clients: int, delta: float) -> float:
    """The noise multiplier whose ``rounds`` releases spend ``epsilon`` at ``delta`` (bisection on Flower's
    RDP accountant; no sampling amplification, as the job accounts)."""
    from flwr.serverapp import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        RdpAccountant,
        SamplingMethod,
    )

    def spent(z: float) -> float:
        acc = RdpAccountant(
            PrivacyConfig(
                delta, clients, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION
            )
        )
        acc.compose(
            GaussianPrivacyEvent(noise_multiplier=z, sample_size=clients, population_size=clients), rounds
        )
        return acc.get_epsilon(delta)

    lo, hi = 0.05, 200.0
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if spent(mid) > epsilon else (lo, mid)
    return hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the DP runs")
    ap.add_argument("--accuracy-rounds", type=int, default=12, help="rounds of the accuracy runs")
    ap.add_argument("--repeats", type=int, default=3, help="data splits (seeds) of the accuracy runs")
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--straggler-devices", type=int, default=10)
    ap.add_argument("--deadline", type=float, default=45.0)
    ap.add_argument("--only", choices=["accuracy", "stragglers", "dp"], action="append")
    ap.add_argument(
        "--config",
        choices=[c[0] for c in ACCURACY_CONFIGS],
        action="append",
        help="run only these accuracy rows (the others' runs in the JSON are kept)",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the Flower processes on the way out
    parts = set(args.only or ["accuracy", "stragglers", "dp"])
    common = {"local_epochs": 2, "learning_rate": 0.5, "clients_per_round": args.devices, "min_clients": 1}
    out: dict[str, Any] = {"config": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "accuracy" in parts:
            accuracy = accuracy_part(root, args)
            ACCURACY_RESULTS.parent.mkdir(parents=True, exist_ok=True)
            ACCURACY_RESULTS.write_text(json.dumps(accuracy, indent=1))
            print_accuracy(accuracy)
        if "stragglers" in parts:
            n = args.straggler_devices
            for share in (0.0, 0.2, 0.5):
                spec = JobSpec(
                    job_id=f"stragglers-{int(share * 100)}",
                    rounds=2,
                    round_deadline_s=args.deadline,
                    **{**common, "clients_per_round": n},
                )
                out["runs"].append(run_job(root, spec.job_id, spec, n, stragglers=round(share * n)))
                print(out["runs"][-1], flush=True)
        if "dp" in parts:
            for eps in (1.0, 3.0, 8.0):
                z = noise_for_epsilon(eps, args.rounds, args.devices, 1e-5)
                spec = JobSpec(
                    job_id=f"dp-eps-{int(eps)}",
                    rounds=args.rounds,
                    round_deadline_s=600,
                    privacy=PrivacySettings(noise_multiplier=z, clipping_norm=1.0, delta=1e-5),
                    **{**common, "min_clients": args.devices},
                )
                run = run_job(root, spec.job_id, spec, args.devices)
                run["noise_multiplier"] = round(z, 3)
                out["runs"].append(run)
                print(run, flush=True)
    if out["runs"]:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1))
        print_table(out)


def print_accuracy(acc: dict[str, Any]) -> None:
    def fmt(s: dict[str, float]) -> str:
        return f"{s['mean']:.1f} ({s['min']:.1f}-{s['max']:.1f})"

    print(
        f"\naccuracy after {acc['config']['accuracy_rounds']} rounds, mean (range) over {acc['config']['repeats']} splits"
    )
    print(
        f"{'config':<14} {'federated %':<18} {'central same %':<18} {'central conv %':<18} {'gap pts':<18} first round within {GOAL_POINTS:g}"
    )
    for s in acc["summary"]:
        print(
            f"{s['config']:<14} {fmt(s['final_accuracy']):<18} {fmt(s['centralized_same_passes']):<18} "
            f"{fmt(s['centralized_converged']):<18} {fmt(s['gap_points']):<18} {s['first_round_within_goal']}"
        )
        print(f"{'':<14} mean per round: {' '.join(f'{a:.1f}' for a in s['mean_accuracy_per_round'])}")
    print(f"wrote {ACCURACY_RESULTS}")


def print_table(out: dict[str, Any]) -> None:
    print(f"\n{'run':<16} {'acc base':>8} {'acc/round':<32} {'round s':<22} {'answered':<14} {'eps':>6}")
    for r in out["runs"]:
        accs = " ".join(f"{a:.3f}" for a in r["accuracy_per_round"])
        secs = " ".join(f"{s:.1f}" for s in r["round_s"])
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(
            f"{r['name']:<16} {r['accuracy_base']:>8.3f} {accs:<32} {secs:<22} {r['answered']!s:<14} {eps:>6}"
        )
    r = out["runs"][0]
    print(
        f"bytes per device per round: down {r['bytes_down_per_device'][0]:.0f}, up {r['bytes_up_per_device'][0]:.0f}"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
