"""Fleet-scenario benchmark (issue 17): what the shipped scenarios measure, at sizes this machine allows.

    .venv/bin/python benchmarks/fleet_bench.py                       # scale-10k as shipped + the other rows
    .venv/bin/python benchmarks/fleet_bench.py --only scale,capacity # the scale figures only
    .venv/bin/python benchmarks/fleet_bench.py --quick               # smaller fleets, fewer repetitions

Each row is one ``edgefleet sim`` scenario run (``run_scenario``, what the CLI calls):

1. scale: ``scale-10k`` as shipped (10,000 devices, 60 s heartbeat; --devices/--poll to change), the server
   in its own ``uvicorn`` process on PostgreSQL (--db; default the local ``test`` database in a fresh
   schema), the devices in worker processes (--workers, default one per 2,500 up to the cores): real
   enrollment and device tokens, real HTTP, every heartbeat written by the server. Heartbeats/s, the
   server's heartbeat p50/p99 over the run (its own /metrics histogram), server CPU (its
   process_cpu_seconds_total), connection errors and 5xx seen by the devices, time to 100 %.
2. capacity: the largest fleet one server process holds at p99 < 200 ms, probed with a --capacity-devices
   fleet whose heartbeat interval is shortened so that it offers what a fleet of N devices on a 60 s
   heartbeat would (N = --capacity, default 10000,20000,40000,80000); each step's rollout phase lasts
   --capacity-seconds. The server's cost is per heartbeat, so the offered rate stands in for the fleet.
3. bad-release-contained: share of the fleet that ever ran the bad release, and seconds from the
   rollout's start to every device back on the baseline.
4. thundering-herd: every device nudged at once (spread 0) against nudges spread over one poll interval,
   interleaved repetitions: peak heartbeat rate (0.5 s intervals) over the mean after the nudge.
5. regional-outage: region eu cut off during the rollout (a network namespace's link where ip netns is
   permitted, else the proxy); outcome, devices on the candidate, how the partition was made.

Writes benchmarks/results/fleet.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import statistics
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgefleet.sim._scenario import Fault, load_scenario
from edgefleet.sim._simreport import check, heartbeat_quantiles, overall, peak_over_mean
from edgefleet.sim._simrun import run_scenario

OUT = Path(__file__).parent / "results" / os.environ.get("FLEET_BENCH_OUT", "fleet.json")


def _time_to(result: dict, version: str, devices: int, state: str) -> float | None:
    for s in result["samples"]:
        if s["state"] == state and s["versions"].get(version) == devices:
            return s["t"]
    return None


PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def _schema(url: str | None) -> Iterator[str | None]:
    """A fresh schema of ``url``'s PostgreSQL database (dropped afterwards); None: SQLite."""
    if not url or not url.startswith("postgresql"):
        yield url
        return
    import sqlalchemy as sa

    name = "ef_fleet_bench_" + secrets.token_hex(4)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {name}"))
    try:
        yield f"{url}?options=-csearch_path%3D{name}"
    finally:
        with eng.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
        eng.dispose()


def capacity_scenario(devices: int, poll: float, seconds: float):
    """The capacity step: ``scale-10k`` with ``devices`` on a ``poll`` s heartbeat, short soak, small gates."""
    return load_scenario("scale-10k").model_copy(
        update={
            "devices": devices,
            "poll_interval_s": poll,
            "soak_s": 5.0,
            "gates": {"min_devices": 3, "min_requests": 100},
            "timeout_s": seconds,
        }
    )


def _scale_row(r: dict, sc, devices: int, poll: float) -> dict:
    o = r.get("overall") or overall(r["samples"]) or {}
    series = [s for s in heartbeat_quantiles(r["samples"]) if s["p99_ms"] is not None]
    return {
        "devices": devices,
        "poll_interval_s": poll,
        "offered_per_s": round(devices / poll, 1),
        "fleet_equivalent_at_60s": round(devices * 60 / poll),
        "setup": r.get("setup"),
        "workers": r.get("workers"),
        "passed": not check(sc, r),
        "failures": check(sc, r),
        "overall": o,
        "heartbeat_p99_ms_worst_interval": max((s["p99_ms"] for s in series), default=None),
        "server_errors_5xx": sum(v for k, v in r["status_counts"].items() if k.startswith("5")),
        "io_errors": sum(v for k, v in r["status_counts"].items() if not k.isdigit()),
        "status_counts": r["status_counts"],
        "rollout_state": r["rollout"]["state"],
        "seconds_to_100pct": _time_to(r, sc.candidate.version, devices, "completed"),
        "seconds": r["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", type=int, default=None, help="scale row's fleet size (default 10000)")
    ap.add_argument("--poll", type=float, default=None, help="scale row's heartbeat interval (default 60 s)")
    ap.add_argument("--workers", type=int, default=None, help="device processes (default: by size and cores)")
    ap.add_argument("--db", default=PG, help="server database for the scale rows ('' for SQLite)")
    ap.add_argument(
        "--capacity", default="10000,20000,40000,80000", help="fleet sizes the capacity row offers"
    )
    ap.add_argument("--capacity-devices", type=int, default=2000)
    ap.add_argument("--capacity-seconds", type=float, default=90.0)
    ap.add_argument("--only", default="", help="rows to run: scale,capacity,bad,herd,outage")
    ap.add_argument(
        "--jobs-in-process",
        action="store_true",
        help="the server as `server run --jobs-in-process`: its periodic jobs in a thread of the request "
        "process (default: in a process of their own, as `server run`); writes fleet_jobs_in_process.json",
    )
    ap.add_argument(
        "--rows-devices",
        type=int,
        default=None,
        help="fleet size of the bad, herd and outage rows; given, they run like the scale row (the server "
        "in its own processes on --db) on a --rows-poll heartbeat (default: 100 devices, the server in a "
        "thread on SQLite, the scenarios' own heartbeat)",
    )
    ap.add_argument("--rows-poll", type=float, default=30.0, help="heartbeat of --rows-devices rows (s)")
    args = ap.parse_args()
    out = OUT.with_name(OUT.stem + "_jobs_in_process.json") if args.jobs_in_process else OUT
    served = {
        "server_process": True,
        "server_jobs_process": not args.jobs_in_process,
        "workers": args.workers,
    }
    only = set(filter(None, args.only.split(","))) or {"scale", "capacity", "bad", "herd", "outage"}
    n_scale = args.devices or (500 if args.quick else 10_000)
    poll = args.poll or (10.0 if args.quick else 60.0)
    n = args.rows_devices or (60 if args.quick else 100)
    # the bad/herd/outage rows: small and in-thread by default, or like the scale row with --rows-devices
    big = args.rows_devices is not None
    at_size = {"poll_interval_s": args.rows_poll} if big else {}

    @contextlib.contextmanager
    def rows_server() -> Iterator[dict]:
        if not big:
            yield {}
            return
        with _schema(args.db) as db:
            yield {"database_url": db, **served}

    reps = 2 if args.quick else 3
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    rows: dict[str, object] = {}
    console = Console()
    load = {"start": os.getloadavg()}

    if "scale" in only:
        sc = load_scenario("scale-10k").model_copy(update={"devices": n_scale, "poll_interval_s": poll})
        with _schema(args.db) as db:
            r = run_scenario(sc, work=work, database_url=db, **served)
        rows["scale"] = _scale_row(r, sc, n_scale, poll)
        console.print(rows["scale"])

    if "capacity" in only:
        steps = []
        for equiv in (int(x) for x in args.capacity.split(",") if x):
            d = args.capacity_devices
            p = round(d * 60 / equiv, 3)
            sc = capacity_scenario(d, p, args.capacity_seconds)
            with _schema(args.db) as db:
                r = run_scenario(sc, work=work, database_url=db, **served)
            step = _scale_row(r, sc, d, p)
            steps.append(step)
            console.print({k: step[k] for k in ("fleet_equivalent_at_60s", "overall", "io_errors")})
            if (step["overall"].get("p99_ms") or 1e9) >= 200:
                break  # past the knee: larger steps only take longer
        held = [s["fleet_equivalent_at_60s"] for s in steps if (s["overall"].get("p99_ms") or 1e9) < 200]
        rows["capacity"] = {"steps": steps, "largest_fleet_at_p99_under_200ms": max(held, default=None)}

    if "bad" in only:
        sc = load_scenario("bad-release-contained").model_copy(update={"devices": n, **at_size})
        if big:  # the scenario's 30 s soak is 60 of its polls; keep it that many polls at this heartbeat
            sc = sc.model_copy(update={"soak_s": 60 * args.rows_poll, "timeout_s": 200 * args.rows_poll})
        with rows_server() as where:
            r = run_scenario(sc, work=work, **where)
        rows["bad_release"] = {
            "devices": n,
            "poll_interval_s": sc.poll_interval_s,
            "setup": r.get("setup"),
            "passed": not check(sc, r),
            "first_wave": r["rollout"]["first_wave"],
            "gate_min_devices": sc.gates["min_devices"],
            "ever_ran_bad": r["ever_ran_candidate"],
            "ever_ran_bad_share": r["ever_ran_candidate_share"],
            "failed_gates": r["rollout"]["failed_gates"],
            "seconds_to_full_rollback": _time_to(r, sc.baseline.version, n, "rolled_back"),
        }

    if "herd" in only:
        herd = load_scenario("thundering-herd")
        ratios: dict[str, list[float]] = {"all at once (spread 0 s)": [], "spread over 1 poll": []}
        for i in range(reps):
            for label, spread in (
                ("all at once (spread 0 s)", 0.0),
                ("spread over 1 poll", herd.poll_interval_s),
            ):
                sc = herd.model_copy(
                    update={"devices": n, "faults": [Fault(kind="herd", at_s=2, spread_s=spread)]}
                )
                if big:  # nudged once the fleet is in its stride: two polls in, spread over one poll
                    poll = args.rows_poll
                    sc = sc.model_copy(
                        update={
                            "poll_interval_s": poll,
                            "soak_s": poll,
                            "timeout_s": 12 * poll,
                            "faults": [Fault(kind="herd", at_s=2 * poll, spread_s=poll if spread else 0.0)],
                        }
                    )
                with rows_server() as where:
                    r = run_scenario(sc, work=work, seed=i, **where)
                pm = peak_over_mean(r)
                if pm is not None:
                    ratios[label].append(pm)
                    print(label, pm, r.get("setup"), flush=True)
        rows["herd"] = {
            k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
            for k, v in ratios.items()
            if v
        } | {
            "devices": n,
            "repetitions": reps,
            "poll_interval_s": args.rows_poll if big else herd.poll_interval_s,
        }

    if "outage" in only:
        sc = load_scenario("regional-outage").model_copy(update={"devices": n})
        with rows_server() as where:  # partitions: a network namespace where permitted, else the proxy
            r = run_scenario(sc, work=work, **where)
        rows["regional_outage"] = {
            "devices": n,
            "passed": not check(sc, r),
            "state": r["rollout"]["state"],
            "final_versions": r["final_versions"],
            "faults": r["faults"],
            "partitions_via": r["partitions_via"],
            "partitions_note": r["partitions_note"],
            "workers": r["workers"],
            "without_version": r["without_version"],
            "members_total": r["rollout"]["members_total"],
            "resets_by_region": {k: v["by_fault"] for k, v in r["proxies"].items()},
            "server_errors_5xx": sum(v for k, v in r["status_counts"].items() if k.startswith("5")),
        }

    t = Table(title="fleet scenarios (issue 17)")
    t.add_column("row")
    t.add_column("figures")
    for k, v in rows.items():
        t.add_row(k, json.dumps(v, default=str)[:600])
    console.print(t)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load1": os.getloadavg()[0],
                    "load_at_start": load["start"],
                },
                "server": "one process (--jobs-in-process)"
                if args.jobs_in_process
                else "request and jobs process",
                "rows": rows,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
