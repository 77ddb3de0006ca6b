"""What federated jobs add to the heartbeat path (issue 14 item 1).

Every heartbeat answer asks ``FlJobs.for_device`` whether a running job selects the device (the running jobs
are cached in memory; the device's tags, class and name come from the heartbeat statement's row, so no extra
query). This measures it on a SQLite control plane in this process, for 1,000 devices in three regions and 50
sites, with 0, 1 and 3 running jobs (selectors ``region=eu``, ``region=us class=pi4``, ``site=s1*``), as CPU
time per call (process time), the median of ``--reps`` interleaved repetitions.

Run:  .venv/bin/python benchmarks/fl_jobs_bench.py [--calls 50000] [--reps 5]
Writes benchmarks/results/fl_jobs_bench.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
SELECTORS = ["region=eu", "region=us class=pi4", "site=s1*"]


def main() -> None:
    from edgefleet.server import ServerConfig, create_app
    from edgefleet.server._fl_jobs import FlJobIn, FlJobs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=50_000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    d = Path(tempfile.mkdtemp())
    app = create_app(ServerConfig(data_dir=d, keys_dir=d / "nokeys", engine_enabled=False))
    db = app.state.ctx.db
    services = {}
    for k in (0, 1, 3):
        jobs = FlJobs(db)  # its own cache; the table is shared, so each service sees only its own jobs
        for j in range(k):
            jobs.create(
                FlJobIn(
                    job_id=f"job{k}-{j}", superlink="10.0.0.1:9092", selector=SELECTORS[j], duration_s=86400
                ),
                actor="bench",
            )
        services[k] = jobs
    for k, jobs in services.items():  # each sees every job in the table: keep only its own k
        jobs.reload()
        jobs._active = [a for a in jobs._active if a.job_id.startswith(f"job{k}-")]
        jobs.ttl_s = 1e9
    hb = SimpleNamespace(active=None)
    rows = [
        (None,) * 5
        + (f"dev{i}", "pi4" if i % 2 else "gateway", "aarch64",
           json.dumps({"region": ["eu", "us", "ap"][i % 3], "site": f"s{i % 50}"}))
        for i in range(1000)
    ]  # fmt: skip
    named = {k: sum(jobs.for_device(f"dev{i}", rows[i], hb, time.time()) is not None for i in range(1000))
             for k, jobs in services.items()}  # fmt: skip
    samples: dict[int, list[float]] = {k: [] for k in services}
    for _ in range(args.reps):
        for k, jobs in services.items():
            now = time.time()
            t = time.process_time()
            for i in range(args.calls):
                jobs.for_device(f"dev{i % 1000}", rows[i % 1000], hb, now)
            samples[k].append((time.process_time() - t) / args.calls * 1e6)
    out = {
        str(k): {"us_per_heartbeat": round(statistics.median(v), 2), "devices_named_of_1000": named[k]}
        for k, v in samples.items()
    }
    for k, v in out.items():
        print(
            f"{k} running jobs: {v['us_per_heartbeat']} us per heartbeat ({v['devices_named_of_1000']} of 1000 named)"
        )
    res = ROOT / "benchmarks" / "results" / "fl_jobs_bench.json"
    res.write_text(json.dumps({"calls": args.calls, "reps": args.reps, "results": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
