"""Federated learning on Flower (issue 14): accuracy, round time under stragglers, bytes, and DP cost.

Every federated figure comes from real Flower processes on loopback: a SuperLink the Coordinator manages
and one SuperNode process per device, training edgefleet's numpy softmax head on a non-IID (Dirichlet
alpha=0.5 over labels) split of scikit-learn's digits; accuracy is on 400 held-out samples the server keeps.

- FedAvg (the default) vs FedProx vs centralized training on the pooled device data;
- round time with 0 %, 20 % and 50 % stragglers (a straggler holds its reply 3x the deadline), two
  rounds each: the first pays the cold start (Flower installs the App, first ClientApp processes);
- payload bytes per device per round, down and up;
- accuracy at DP ε = 1, 3, 8 (δ = 1e-5): the noise multiplier that spends exactly that ε over the job's
  rounds, found with Flower's RDP accountant.

One run per configuration (each is a minute or more of real processes on a shared 2-core machine), so no
spreads: read the round times as single observations.

    python benchmarks/fl_bench.py [--rounds 4] [--devices 5] [--straggler-devices 10] [--deadline 45]
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


def run_job(root: Path, name: str, spec: JobSpec, n_devices: int, stragglers: int = 0) -> dict[str, Any]:
    folders, base, held_out, _ = digits_federation(n_devices, root / name / "data")
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
    rounds = [e for e in events if e["event"] == "round"]
    return {
        "name": name,
        "wall_s": round(time.monotonic() - started, 1),
        "accuracy_base": events[0]["accuracy"],
        "accuracy_per_round": [r["accuracy"] for r in rounds],
        "round_s": [r["seconds"] for r in rounds],
        "answered": [r["answered"] for r in rounds],
        "late": [r["late"] for r in rounds],
        "bytes_down_per_device": [r["bytes_down"] / max(r["selected"], 1) for r in rounds],
        "bytes_up_per_device": [r["bytes_up"] / max(r["answered"], 1) for r in rounds],
        "epsilon": rounds[-1].get("epsilon"),
    }


def centralized(n_devices: int, epochs: int, lr: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        _, base, held_out, (x, y) = digits_federation(n_devices, Path(d))
    head = base.train(x, y, epochs=epochs, lr=lr)
    return {"name": "centralized", "accuracy": head.accuracy(*held_out), "epochs": epochs}


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
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--straggler-devices", type=int, default=10)
    ap.add_argument("--deadline", type=float, default=45.0)
    ap.add_argument("--only", choices=["accuracy", "stragglers", "dp"], action="append")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the Flower processes on the way out
    parts = set(args.only or ["accuracy", "stragglers", "dp"])
    common = {"local_epochs": 2, "learning_rate": 0.5, "clients_per_round": args.devices, "min_clients": 1}
    out: dict[str, Any] = {"config": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "accuracy" in parts:
            for strategy in ("fedavg", "fedprox"):
                spec = JobSpec(
                    job_id=strategy, rounds=args.rounds, strategy=strategy, round_deadline_s=600, **common
                )
                out["runs"].append(run_job(root, strategy, spec, args.devices))
                print(out["runs"][-1], flush=True)
            out["centralized"] = centralized(args.devices, epochs=args.rounds * 2, lr=0.5)
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print_table(out)


def print_table(out: dict[str, Any]) -> None:
    print(f"\n{'run':<16} {'acc base':>8} {'acc/round':<32} {'round s':<22} {'answered':<14} {'eps':>6}")
    for r in out["runs"]:
        accs = " ".join(f"{a:.3f}" for a in r["accuracy_per_round"])
        secs = " ".join(f"{s:.1f}" for s in r["round_s"])
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(
            f"{r['name']:<16} {r['accuracy_base']:>8.3f} {accs:<32} {secs:<22} {r['answered']!s:<14} {eps:>6}"
        )
    if "centralized" in out:
        print(f"centralized (pooled device data): {out['centralized']['accuracy']:.3f}")
    r = out["runs"][0]
    print(
        f"bytes per device per round: down {r['bytes_down_per_device'][0]:.0f}, up {r['bytes_up_per_device'][0]:.0f}"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
