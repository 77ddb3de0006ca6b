"""Fleet latency gate on a busy machine: how often the rollout engine's p95 gate fails a good release, and
how surely it fails a release that is really 3x slower, with the old rule (cumulative figures, one look)
beside the new one (the control group over the same minutes, 3 consecutive looks, 5 ms floor).

    .venv/bin/python benchmarks/fleet_gate_bench.py               # 1,000 simulated first waves per row
    .venv/bin/python benchmarks/fleet_gate_bench.py --trials 100

The model is a first wave: 3 devices on the release and a control group of 27 devices on the previous
one, each sending one heartbeat window of 50 requests per look (one look per ``latency_look_s``); the
soak is 10 looks and the gate judges from the first. A request takes ``base x load x share x noise``:
``base`` 5 ms (15 ms for the 3x-slower release); ``noise`` lognormal (sigma 0.25) per request, so a
window's p95 is an estimate from 50 requests; ``load`` the machine's load in that look, the same for
both groups, drawn from a heavy-tailed law (1 + Lomax(1.5): median 1.6, mean 3, 1 look in 5 above 3x);
``share`` how unevenly the load falls on each device in that look (lognormal, sigma 0.2). The control
group's counters also hold 60 earlier looks (an hour of history) at the same load law.

Three load scenarios: ``per look`` (a new load draw every look, history alike); ``hog`` (the machine
was quiet for the history, load 1, then a hog starts with the wave and stays: one heavy-tailed draw
for the whole wave, the failure the demo met in issue 11); ``per device`` (no shared machine: every
device, every look, draws its own load from the same law, so nothing cancels between the groups; the
case persistence is for).

Each rule runs the engine's own ``health_gates`` (and ``persist``) on ``Aggregate`` figures:
``cumulative, 1 look`` is the old engine (each group's counters since it started its build, fail at the
first look over 1.5x); ``same minutes, 1 look`` compares the last window of both groups; ``same
minutes, 3 looks + 5 ms floor`` is the new default. A release counts as failed if the gate failed
within the soak.

Writes benchmarks/results/fleet_gate.json.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgefleet.server._aggregate import Aggregate
from edgefleet.server._gates import health_gates, persist
from edgefleet.server._schemas import RolloutGates

ROOT = Path(__file__).resolve().parents[1]
WAVE, CONTROL, PER_BEAT, SOAK_LOOKS, HISTORY = 3, 27, 50, 10, 60
BASE_MS, NOISE_SIGMA, SHARE_SIGMA, LOMAX_SHAPE = 5.0, 0.25, 0.2, 1.5
RULES = {
    "cumulative, 1 look (old)": dict(same=False, looks=1, floor=0.0),
    "cumulative, 3 looks + 5 ms floor": dict(same=False, looks=3, floor=5.0),
    "same minutes, 1 look": dict(same=True, looks=1, floor=0.0),
    "same minutes, 3 looks + 5 ms floor (new)": dict(same=True, looks=3, floor=5.0),
}


def load(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    return 1.0 + rng.pareto(LOMAX_SHAPE, n)  # numpy's pareto is Lomax: heavy-tailed, P(> x) = (1+x)^-1.5


def window_p95(rng: np.random.Generator, base: float, loads: np.ndarray, devices: int) -> np.ndarray:
    """Each device's p95 over one window per look: ``loads`` (looks,) -> (looks, devices)."""
    looks = loads.shape[0]
    share = rng.lognormal(0.0, SHARE_SIGMA, (looks, devices))
    req = rng.lognormal(0.0, NOISE_SIGMA, (looks, devices, PER_BEAT))
    return base * loads[:, None] * share * np.quantile(req, 0.95, axis=2)


def figures(p95: np.ndarray) -> Aggregate:
    """The engine's Aggregate of some device windows (request-weighted like DeviceHealth)."""
    w = float(PER_BEAT * p95.size)
    return Aggregate(
        devices=p95.shape[-1],
        requests=int(w),
        lat_sum=float(p95.sum() * PER_BEAT),
        lat_w=w,
        conf_sum=0.9 * w,
        conf_w=w,
    )


def first_wave(slowdown: float, scenario: str, rng: np.random.Generator) -> dict[str, int | None]:
    """One first wave: for each rule, the look at which the latency gate failed (None: it did not)."""
    if scenario == "per look":
        history, during = load(rng, HISTORY), load(rng, SOAK_LOOKS)
    else:
        history, during = np.ones(HISTORY), np.full(SOAK_LOOKS, load(rng))
    ctl_hist = window_p95(rng, BASE_MS, history, CONTROL)
    ctl = window_p95(rng, BASE_MS, during, CONTROL)
    new = window_p95(rng, BASE_MS * slowdown, during, WAVE)
    if scenario == "per device":  # each device's own load, shared with nobody
        ctl_hist *= load(rng, ctl_hist.size).reshape(ctl_hist.shape) / history[:, None]
        ctl *= load(rng, ctl.size).reshape(ctl.shape) / during[:, None]
        new *= load(rng, new.size).reshape(new.shape) / during[:, None]
    out: dict[str, int | None] = {}
    for name, rule in RULES.items():
        g = RolloutGates(latency_looks=rule["looks"], latency_floor_ms=rule["floor"], min_requests=100)
        over, failed = 0, None
        for k in range(SOAK_LOOKS):
            if rule["same"]:
                wave_f, ref_f, same = figures(new[k]), figures(ctl[k]), None
                same = (wave_f, ref_f)
            else:
                wave_f = figures(new[: k + 1])
                ref_f = figures(np.concatenate([ctl_hist, ctl[: k + 1]]))
                same = None
            gate = next(
                x
                for x in health_gates(wave_f, ref_f, g, judged=True, same_minutes=same)
                if x.name == "latency_p95_ratio"
            )
            gate, over = persist(gate, over=over, look=True, looks=g.latency_looks)
            if gate.status == "fail":
                failed = k + 1
                break
        out[name] = failed
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet_gate.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for scenario in ("per look", "hog", "per device"):
        for slowdown, release in ((1.0, "good"), (3.0, "3x slower")):
            runs = [first_wave(slowdown, scenario, rng) for _ in range(args.trials)]
            for name in RULES:
                looks = [r[name] for r in runs if r[name] is not None]
                rows.append(
                    {
                        "load": scenario,
                        "release": release,
                        "rule": name,
                        "trials": args.trials,
                        "failed": len(looks),
                        "failed_per_100": round(100 * len(looks) / args.trials, 2),
                        "mean_looks_to_fail": round(float(np.mean(looks)), 2) if looks else None,
                    }
                )
    table = Table(
        title=f"first wave of 3 devices against 27, p95 limit 1.5x, soak 10 looks ({args.trials} trials)"
    )
    for col in ("load", "release", "rule", "failed / 100", "looks to fail"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["load"], r["release"], r["rule"], f"{r['failed_per_100']:g}", str(r["mean_looks_to_fail"])
        )
    Console(width=120).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "benchmarks/fleet_gate_bench.py"
                + (f" --trials {args.trials}" if args.trials != 1000 else ""),
                "machine": {"python": platform.python_version(), "processor": platform.processor()},
                "model": {
                    "wave_devices": WAVE,
                    "control_devices": CONTROL,
                    "requests_per_device_per_look": PER_BEAT,
                    "soak_looks": SOAK_LOOKS,
                    "history_looks": HISTORY,
                    "base_ms": BASE_MS,
                    "request_noise_sigma": NOISE_SIGMA,
                    "load_share_sigma": SHARE_SIGMA,
                    "load": f"1 + Lomax({LOMAX_SHAPE})",
                    "max_latency_p95_ratio": RolloutGates().max_latency_p95_ratio,
                },
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
