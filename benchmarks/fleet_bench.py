"""Fleet-scenario benchmark (issue 17): what the shipped scenarios measure, at sizes this machine allows.

    .venv/bin/python benchmarks/fleet_bench.py            # default sizes
    .venv/bin/python benchmarks/fleet_bench.py --quick    # smaller fleets, fewer repetitions

Each row is one ``edgefleet sim`` scenario run in this process (server in a thread here, SQLite, the
devices in one asyncio loop, every region behind its own fault-injecting proxy):

1. scale: ``scale-10k`` at --devices (heartbeat interval scaled down so every device beats every
   --poll seconds): heartbeats/s, server heartbeat p50/p99 (its own /metrics histogram), 5xx, time to 100 %.
2. bad-release-contained: share of the fleet that ever ran the bad release, and seconds from the
   rollout's start to every device back on the baseline.
3. thundering-herd: every device nudged at once (spread 0) against nudges spread over one poll interval,
   interleaved repetitions: peak heartbeat rate (0.5 s intervals) over the mean after the nudge.
4. regional-outage: region eu cut off during the rollout; outcome, resets, devices on the candidate.

Writes benchmarks/results/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgefleet.sim._scenario import Fault, load_scenario
from edgefleet.sim._simreport import check, heartbeat_quantiles, peak_over_mean
from edgefleet.sim._simrun import run_scenario

OUT = Path(__file__).parent / "results" / "fleet.json"


def _time_to(result: dict, version: str, devices: int, state: str) -> float | None:
    for s in result["samples"]:
        if s["state"] == state and s["versions"].get(version) == devices:
            return s["t"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", type=int, default=None, help="scale row's fleet size")
    ap.add_argument("--poll", type=float, default=2.0, help="scale row's heartbeat interval (s)")
    args = ap.parse_args()
    n_scale = args.devices or (200 if args.quick else 1000)
    n = 60 if args.quick else 100
    reps = 2 if args.quick else 3
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    rows: dict[str, object] = {}
    console = Console()

    sc = load_scenario("scale-10k").model_copy(
        update={
            "devices": n_scale,
            "poll_interval_s": args.poll,
            "soak_s": 2.0,
            "gates": {"min_devices": 3, "min_requests": 100},
        }
    )
    r = run_scenario(sc, work=work, server_process=True)  # the server in its own uvicorn process
    series = [s for s in heartbeat_quantiles(r["samples"]) if s["p99_ms"] is not None]
    rows["scale"] = {
        "devices": n_scale,
        "poll_interval_s": args.poll,
        "passed": not check(sc, r),
        "heartbeats_per_s_mean": round(statistics.mean(s["rps"] for s in series), 1) if series else None,
        "heartbeat_p50_ms_median": round(statistics.median(s["p50_ms"] for s in series), 2)
        if series
        else None,
        "heartbeat_p99_ms_median": round(statistics.median(s["p99_ms"] for s in series), 2)
        if series
        else None,
        "heartbeat_p99_ms_worst": max((s["p99_ms"] for s in series), default=None),
        "server_errors_5xx": sum(v for k, v in r["status_counts"].items() if k.startswith("5")),
        "io_errors": r["status_counts"].get("io_error", 0),
        "seconds_to_100pct": _time_to(r, sc.candidate.version, n_scale, "completed"),
    }

    sc = load_scenario("bad-release-contained").model_copy(update={"devices": n})
    r = run_scenario(sc, work=work)
    rows["bad_release"] = {
        "devices": n,
        "passed": not check(sc, r),
        "first_wave": r["rollout"]["first_wave"],
        "gate_min_devices": sc.gates["min_devices"],
        "ever_ran_bad": r["ever_ran_candidate"],
        "ever_ran_bad_share": r["ever_ran_candidate_share"],
        "failed_gates": r["rollout"]["failed_gates"],
        "seconds_to_full_rollback": _time_to(r, sc.baseline.version, n, "rolled_back"),
    }

    herd = load_scenario("thundering-herd")
    ratios: dict[str, list[float]] = {"all at once (spread 0 s)": [], "spread over 1 poll (1 s)": []}
    for i in range(reps):
        for label, spread in (
            ("all at once (spread 0 s)", 0.0),
            ("spread over 1 poll (1 s)", herd.poll_interval_s),
        ):
            sc = herd.model_copy(
                update={"devices": n, "faults": [Fault(kind="herd", at_s=2, spread_s=spread)]}
            )
            pm = peak_over_mean(run_scenario(sc, work=work, seed=i))
            if pm is not None:
                ratios[label].append(pm)
    rows["herd"] = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        for k, v in ratios.items()
        if v
    } | {"devices": n, "repetitions": reps}

    sc = load_scenario("regional-outage").model_copy(update={"devices": n})
    r = run_scenario(sc, work=work)
    rows["regional_outage"] = {
        "devices": n,
        "passed": not check(sc, r),
        "state": r["rollout"]["state"],
        "final_versions": r["final_versions"],
        "faults": r["faults"],
        "resets_by_region": {k: v["by_fault"] for k, v in r["proxies"].items()},
        "server_errors_5xx": sum(v for k, v in r["status_counts"].items() if k.startswith("5")),
    }

    t = Table(title="fleet scenarios (issue 17)")
    t.add_column("row")
    t.add_column("figures")
    for k, v in rows.items():
        t.add_row(k, json.dumps(v, default=str)[:400])
    console.print(t)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load1": os.getloadavg()[0],
                },
                "rows": rows,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
