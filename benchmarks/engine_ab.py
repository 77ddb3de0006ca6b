"""The rollout engine's cost to the heartbeats, one source tree against another, interleaved (issue 17).

Each repetition runs fleet_bench's capacity step (a ``--devices`` fleet on a ``--poll`` s heartbeat through
the ``scale-10k`` scenario's rollout: soak 5 s, gates of 3 devices and 100 requests; the server in its own
``uvicorn`` process on PostgreSQL in a fresh schema) once with each tree's ``src`` first on PYTHONPATH, in
alternating order. While it runs, PostgreSQL's ``pg_stat_activity`` is sampled every 0.1 s: how often a
server connection waited on a row lock (``Lock``), and the longest transaction seen.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/engine_ab.py --trees /tmp/before/src,src --reps 3

``--jobs-in-process`` compares two configurations of this tree instead: the server as ``server run``
runs by default (the periodic jobs in a process of their own) and with ``--jobs-in-process`` (the jobs in
a thread of the request process).

    .venv/bin/python benchmarks/engine_ab.py --jobs-in-process --reps 3

Writes benchmarks/results/engine_ab.json (engine_ab_jobs_process.json with ``--jobs-in-process``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "engine_ab.json"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def one_run(devices: int, poll: float, seconds: float, jobs_process: bool = False) -> dict:
    """One capacity step in this process (PYTHONPATH chose the tree), with PostgreSQL sampled meanwhile."""
    import sqlalchemy as sa

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from edgefleet.sim._simrun import run_scenario
    from fleet_bench import _scale_row, _schema, capacity_scenario

    sc = capacity_scenario(devices, poll, seconds)
    stop = threading.Event()
    seen = {"samples": 0, "lock_waits": 0, "longest_xact_s": 0.0}

    def sample() -> None:
        eng = sa.create_engine(PG, poolclass=sa.pool.NullPool)
        q = sa.text(
            "select wait_event_type, extract(epoch from now() - xact_start) from pg_stat_activity "
            "where datname = 'test' and pid <> pg_backend_pid() and backend_type = 'client backend'"
        )
        with eng.connect() as c:
            while not stop.wait(0.1):
                rows = c.execute(q).fetchall()
                c.rollback()
                seen["samples"] += 1
                seen["lock_waits"] += sum(1 for wt, _ in rows if wt == "Lock")
                seen["longest_xact_s"] = max([seen["longest_xact_s"], *(float(x) for _, x in rows if x)])

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    with _schema(PG) as db:
        r = run_scenario(
            sc,
            work=Path(tempfile.mkdtemp()),
            database_url=db,
            server_process=True,
            server_jobs_process=jobs_process,
        )
    stop.set()
    t.join()
    row = _scale_row(r, sc, devices, poll)
    o = row["overall"]
    return {
        "heartbeats_per_s": o.get("heartbeats_per_s"),
        "p50_ms": o.get("p50_ms"),
        "p99_ms": o.get("p99_ms"),
        "worst_interval_p99_ms": row["heartbeat_p99_ms_worst_interval"],
        "server_cpu_share": o.get("server_cpu_share"),
        "server_errors_5xx": row["server_errors_5xx"],
        "io_errors": row["io_errors"],
        "rollout_state": row["rollout_state"],
        "seconds_to_100pct": row["seconds_to_100pct"],
        "pg_lock_waits": seen["lock_waits"],
        "pg_longest_xact_s": round(seen["longest_xact_s"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", help="two src directories, comma-separated: before,after")
    ap.add_argument(
        "--jobs-in-process", action="store_true", help="compare this tree's default with --jobs-in-process"
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--poll", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one run, JSON out
    ap.add_argument("--one-jobs-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args.devices, args.poll, args.seconds, args.one_jobs_process)))
        return
    # the two arms: (label, src tree, jobs process)
    if args.jobs_in_process:
        src = str(ROOT / "src")
        arms = [("default (jobs process)", src, True), ("--jobs-in-process", src, False)]
        out = OUT.with_name("engine_ab_jobs_process.json")
    else:
        trees = [str(Path(t).resolve()) for t in (args.trees or "").split(",") if t]
        if len(trees) != 2 or not all(Path(t, "edgefleet").is_dir() for t in trees):
            sys.exit(
                "--trees needs two src directories that hold the edgefleet package (or --jobs-in-process)"
            )
        arms = [(t, t, False) for t in trees]
        out = OUT
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in arms}
    for rep in range(args.reps):
        for label, tree, jobs in arms if rep % 2 == 0 else arms[::-1]:
            env = dict(os.environ, PYTHONPATH=tree)
            cmd = [sys.executable, __file__, "--one", *(["--one-jobs-process"] if jobs else [])]
            cmd += ["--devices", str(args.devices), "--poll", str(args.poll), "--seconds", str(args.seconds)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.seconds + 600)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"a run of {label} failed:\n{p.stderr[-2000:]}")
            runs[label].append(json.loads(line[7:]) | {"rep": rep, "load": os.getloadavg()[0]})
            print(label, runs[label][-1], flush=True)

    from rich.console import Console
    from rich.table import Table

    keys = [
        "p50_ms",
        "p99_ms",
        "worst_interval_p99_ms",
        "server_errors_5xx",
        "pg_lock_waits",
        "pg_longest_xact_s",
    ]
    table = Table(
        title=f"{args.devices} devices, {args.poll} s heartbeat: median (min-max) of {args.reps} runs"
    )
    table.add_column("arm")
    for k in ["heartbeats_per_s", *keys, "seconds_to_100pct"]:
        table.add_column(k)
    summary = {}
    for label, rs in runs.items():
        cells = {}
        for k in ["heartbeats_per_s", *keys, "seconds_to_100pct"]:
            vals = [r[k] for r in rs if r.get(k) is not None]
            cells[k] = (
                {"median": statistics.median(vals), "min": min(vals), "max": max(vals)} if vals else None
            )
        summary[label] = cells
        table.add_row(
            label,
            *(f"{c['median']:g} ({c['min']:g}-{c['max']:g})" if c else "-" for c in cells.values()),
        )
    ratios = [
        b["p99_ms"] / a["p99_ms"]
        for a, b in zip(runs[arms[0][0]], runs[arms[1][0]], strict=True)
        if a.get("p99_ms") and b.get("p99_ms")
    ]
    Console(width=200).print(table)
    print(f"p99 {arms[1][0]} / {arms[0][0]} per repetition:", [round(x, 2) for x in ratios])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count()},
                "args": vars(args),
                "runs": runs,
                "summary": summary,
                "arms": [label for label, _, _ in arms],
                "p99_ratio_second_over_first": ratios,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
