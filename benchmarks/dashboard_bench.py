"""Dashboard API latency: fleet queries over one hour of telemetry from N devices.

A real control plane (SQLite, in-process ASGI client) with N enrolled devices (two classes, three regions), each
holding one hour of real telemetry windows: 60 one-minute windows made by the telemetry Aggregator around an ONNX
Runtime digits MLP at 10 inferences/s (feature histograms every 10 minutes, the defaults). The windows are
written straight into the ``telemetry_windows`` table (ingestion is measured by the telemetry benchmark); every
query then goes through the HTTP API the dashboard uses.

For each endpoint: **cold** (parsed-window cache emptied first: every stored window is read and validated) and
**warm** (median of 3 repeats with the cache), side by side for each fleet size.

Usage::

    .venv/bin/python benchmarks/dashboard_bench.py             # N = 100 and 500 devices
    .venv/bin/python benchmarks/dashboard_bench.py --quick     # N = 50
    .venv/bin/python benchmarks/dashboard_bench.py --devices 100 1000

Writes ``benchmarks/results/dashboard.json`` and prints a rich table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

console = Console(width=150)

ENDPOINTS = [
    ("overview", "GET", "/v1/fleet/overview", None),
    ("devices", "GET", "/v1/fleet/devices", {"limit": 500}),
    ("telemetry by class,region", "GET", "/v1/fleet/telemetry", {"by": "device_class,region"}),
    ("timeseries by release", "GET", "/v1/fleet/timeseries", {"by": "release"}),
    ("drift by class,region", "GET", "/v1/fleet/drift", None),
    ("outliers", "GET", "/v1/fleet/outliers", None),
    ("rollouts", "GET", "/v1/fleet/rollouts", None),
    ("events", "GET", "/v1/fleet/events", None),
    ("evaluate alerts", "POST", "/v1/fleet/alerts/evaluate", None),
    ("/metrics scrape", "GET", "/metrics", None),
]
PARSES = {
    "telemetry by class,region",
    "timeseries by release",
    "drift by class,region",
    "outliers",
    "evaluate alerts",
}


class _Clock:
    def __init__(self, t0: float) -> None:
        self.t0, self.t = t0, 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t0 + self.t


class _Ort:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.metadata = None

    def predict(self, batch, **_):
        label, probs = self.s.run(None, {"input": np.asarray(batch["input"], dtype=np.float32)})
        return {"label": label, "probabilities": probs}

    def close(self) -> None:
        pass


def _hour_of_windows(model: Path, reference: dict, x: np.ndarray, t_end: float) -> list[dict]:
    """One hour at 10 inferences/s through the Aggregator with its default windows (60 s, features every 600 s)."""
    from edgefleet.telemetry import Aggregator, AggregatorConfig

    rng = np.random.default_rng(0)
    clk = _Clock(t_end - 3600)
    out: list = []
    agg = Aggregator(
        _Ort(model),
        reference=reference,
        config=AggregatorConfig(resources=False, drift_on_close=False),
        tags={"model": "digits", "version": "1.0.0"},
        sink=out.append,
        monotonic=clk.mono,
        wall=clk.wall,
    )
    for i in range(36_000):
        clk.t = i * 0.1
        agg.predict({"input": (x[rng.integers(0, len(x), 1)] / 16.0).astype(np.float32)})
    clk.t = 3600 - 1e-3
    agg.flush_window()
    return [w.to_dict() for w in out]


def _setup(base: Path):
    from edgefleet.bundle import Bundle, create_bundle
    from edgefleet.examples import digits, train_digits_mlp
    from edgefleet.registry import Repository, init_keys

    ds = digits(seed=0)
    model = base / "digits.onnx"
    train_digits_mlp(model, data=ds)
    keys = init_keys(base / "keys", root_keys=1, root_threshold=1)
    repo = Repository.init(base / "repo", keys)
    tar = create_bundle(
        model,
        base / "digits-1.0.0-cpu.tar",
        name="digits",
        version="1.0.0",
        variant="cpu",
        inputs_raw=ds.x_test[:8],
        reference_raw=ds.x_train,
        preprocess=[{"op": "scale", "factor": 1 / 16}],
        created=datetime(2025, 1, 2, tzinfo=UTC),
    )
    repo.publish(tar, delta=False)
    with Bundle.open(tar) as b:
        ref = b.reference
    return model, base / "repo", ref, ds


def _fleet(base: Path, n: int, repo: Path, windows: list[dict], now: float):
    from fastapi.testclient import TestClient

    from edgefleet.server import ServerConfig, create_app
    from edgefleet.server._models import TelemetryWindowRow

    cfg = ServerConfig(
        data_dir=base / f"server-{n}", repo_dir=repo, keys_dir=base / "no-keys", engine_enabled=False
    )
    app = create_app(cfg, clock=lambda: now)
    client = TestClient(app)
    client.__enter__()
    admin = {"Authorization": "Bearer " + cfg.admin_token_path.read_text().strip()}
    assert client.post(
        "/v1/releases", json={"name": "digits", "version": "1.0.0"}, headers=admin
    ).status_code in (200, 201)
    ids = []
    regions = ("eu", "us", "ap")
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"enrolling {n} devices", total=n)
        for i in range(n):
            tok = client.post(
                "/v1/enrollment-tokens", json={"tags": {"region": regions[i % 3]}}, headers=admin
            ).json()
            hw = {
                "arch": "x86_64",
                "cores": 4,
                "ram_mb": 4096,
                "disk_free_mb": 10_000,
                "isa_flags": ["avx2"],
                "onnxruntime_version": "1.20.0",
                "device_class": "cpu" if i % 2 else "arm",
                "tags": {},
            }
            r = client.post("/v1/enroll", json={"token": tok["token"], "hardware": hw})
            ids.append(r.json()["device_id"])
            prog.advance(task)
    db = app.state.ctx.db
    with db.write() as s:
        for dev in ids:
            s.add_all(
                TelemetryWindowRow(
                    device_id=dev, batch_id="bench", received_at=now, start=w["start"], end=w["end"], data=w
                )
                for w in windows
            )
    return client, admin, app.state.fleet


def _time(client, admin, method, path, params) -> float:
    t = time.perf_counter()
    r = client.request(method, path, params=params, headers=admin)
    dt = time.perf_counter() - t
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dashboard.json")
    args = ap.parse_args()
    sizes = [50] if args.quick else args.devices
    logging.basicConfig(level=logging.ERROR)
    now = time.time()
    results: dict = {"sizes": sizes, "endpoints": {}}
    with tempfile.TemporaryDirectory(prefix="edgefleet-dash-bench-") as tmp:
        base = Path(tmp)
        model, repo, ref, ds = _setup(base)
        t = time.perf_counter()
        windows = _hour_of_windows(model, ref, ds.x_train, now - 1)
        results["windows_per_device"] = len(windows)
        results["window_bytes_mean"] = int(statistics.mean(len(json.dumps(w)) for w in windows))
        console.print(
            f"one device-hour: {len(windows)} windows, {results['window_bytes_mean']} B mean JSON "
            f"({time.perf_counter() - t:.1f} s to produce)"
        )
        for n in sizes:
            client, admin, view = _fleet(base, n, repo, windows, now)
            for name, method, path, params in ENDPOINTS:
                view.queries.clear_cache()
                cold = _time(client, admin, method, path, params)
                warm = statistics.median(_time(client, admin, method, path, params) for _ in range(3))
                results["endpoints"].setdefault(name, {})[str(n)] = {
                    "cold_ms": round(cold * 1e3, 1),
                    "warm_ms": round(warm * 1e3, 1),
                }
            client.__exit__(None, None, None)
    cpu = subprocess.run(
        ["sh", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True
    ).stdout.strip()
    results["machine"] = {
        "cpu": cpu,
        "python": platform.python_version(),
        "note": "2 cores shared with parallel work",
    }
    t = Table(
        title=f"dashboard API latency, one hour of telemetry per device ({results['windows_per_device']} windows)"
    )
    t.add_column("endpoint")
    for n in sizes:
        t.add_column(f"N={n} cold ms", justify="right")
        t.add_column(f"N={n} warm ms", justify="right")
    t.add_column(f"warm N={sizes[-1]}/N={sizes[0]}", justify="right")
    for name, *_ in ENDPOINTS:
        row = results["endpoints"][name]
        cells = []
        for n in sizes:
            cells += [f"{row[str(n)]['cold_ms']:.1f}", f"{row[str(n)]['warm_ms']:.1f}"]
        ratio = row[str(sizes[-1])]["warm_ms"] / max(row[str(sizes[0])]["warm_ms"], 1e-3)
        t.add_row(name + (" *" if name in PARSES else ""), *cells, f"{ratio:.1f}x")
    console.print(t)
    console.print("* reads every window of the range (cold: parses and validates each stored window)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
