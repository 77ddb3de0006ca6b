"""Rollout gate statistics: how often the error-rate gate fails a good release, and how fast it catches
a bad one, with the bare comparison (``error_rate_alpha: 1``) and the binomial test (default 0.01).

    .venv/bin/python benchmarks/gate_bench.py               # 20,000 simulated first waves per case
    .venv/bin/python benchmarks/gate_bench.py --trials 2000

The model is the first wave of the simulated-fleet test and of the containment benchmark: 3 devices
that each serve 50 requests between two looks of the rollout engine; the engine judges from 100
requests on; the control group is 27 devices that served 150 requests each at a 1 % error rate; the
limit is the control's rate + ``max_error_rate_increase`` (0.02); the soak time is over at the third
look. Each look calls the engine's own ``error_rate_verdict``. A wave still undecided after 60 looks
(9,000 requests) is counted as undecided.

Writes benchmarks/results/gate.json.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgefleet.server._gates import error_rate_verdict

ROOT = Path(__file__).resolve().parents[1]
DEVICES, PER_BEAT, CONTROL_REQUESTS, CONTROL_RATE = 3, 50, 27 * 150, 0.01
INCREASE, SOAK_LOOKS, MAX_LOOKS = 0.02, 3, 60


def first_wave(true_rate: float, alpha: float, rng: np.random.Generator) -> tuple[str, int]:
    """One first wave: ("pass" | "fail" | "undecided", looks taken)."""
    limit = rng.binomial(CONTROL_REQUESTS, CONTROL_RATE) / CONTROL_REQUESTS + INCREASE
    errors = requests = 0
    for look in range(1, MAX_LOOKS + 1):
        n = DEVICES * PER_BEAT
        requests += n
        errors += int(rng.binomial(n, true_rate))
        if requests < 100:
            continue
        verdict, _ = error_rate_verdict(errors, requests, limit, alpha)
        if verdict == "fail":
            return "fail", look
        if verdict == "pass" and look >= SOAK_LOOKS:
            return "pass", look
    return "undecided", MAX_LOOKS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gate.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for rate in (0.01, 0.02, 0.03, 0.05, 0.10, 0.25):
        for alpha, rule in ((1.0, "bare comparison"), (0.01, "binomial test, alpha 0.01")):
            out = [first_wave(rate, alpha, rng) for _ in range(args.trials)]
            fails = [looks for verdict, looks in out if verdict == "fail"]
            rows.append(
                {
                    "true_error_rate": rate,
                    "rule": rule,
                    "alpha": alpha,
                    "trials": args.trials,
                    "failed": round(len(fails) / args.trials, 5),
                    "passed": round(sum(v == "pass" for v, _ in out) / args.trials, 5),
                    "undecided": round(sum(v == "undecided" for v, _ in out) / args.trials, 5),
                    "mean_looks_to_fail": round(float(np.mean(fails)), 2) if fails else None,
                    "mean_looks": round(float(np.mean([looks for _, looks in out])), 2),
                }
            )
    table = Table(
        title=f"first wave of 3 devices, control at 1 %, limit control + 2 points ({args.trials} trials)"
    )
    for col in ("true rate", "rule", "failed", "passed", "undecided", "looks to fail", "looks"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            f"{r['true_error_rate']:.0%}",
            r["rule"],
            f"{r['failed']:.2%}",
            f"{r['passed']:.2%}",
            f"{r['undecided']:.2%}",
            str(r["mean_looks_to_fail"]),
            str(r["mean_looks"]),
        )
    Console(width=120).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "benchmarks/gate_bench.py"
                + (f" --trials {args.trials}" if args.trials != 20_000 else ""),
                "machine": {"python": platform.python_version(), "processor": platform.processor()},
                "model": {
                    "devices": DEVICES,
                    "requests_per_device_per_look": PER_BEAT,
                    "control_requests": CONTROL_REQUESTS,
                    "control_rate": CONTROL_RATE,
                    "max_error_rate_increase": INCREASE,
                    "soak_looks": SOAK_LOOKS,
                    "max_looks": MAX_LOOKS,
                },
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
