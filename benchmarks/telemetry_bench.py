"""Telemetry figures: upload bytes per device-hour, drift detection on digits, aggregator overhead, outbox outage.

1. **Bytes**: one simulated hour at 10 inferences/s through a real ONNX Runtime digits MLP wrapped by the
   Aggregator (default windows: 60 s, feature histograms every 600 s), windows queued in a real Outbox and
   uploaded as zstd batches, against raw per-request JSON logs of the same traffic.
2. **Drift**: the digits MLP is trained on one half of digits (the reference is built from that half); windows
   are drawn without replacement from the other, held-out half. False positives on unshifted windows and
   detection rate / windows-to-detect for noise, brightness, contrast, rotation and class-mix shifts at
   several strengths, for a grid of (alpha, threshold) settings, to choose the defaults.
3. **Overhead**: time of ``Aggregator.record`` per request (median, mean including the bulk flushes, p99) and
   end-to-end latency with and without the aggregator; memory of an open window (tracemalloc).
4. **Outbox**: 24 simulated hours offline (telemetry, events, 1% samples biased to low confidence), with a
   clock jump of +1 day at hour 12, then reconnect to a real loopback HTTP server under a bandwidth budget:
   what arrived, what was dropped (by kind and reason), with the default cap and with a small one.

Usage::

    .venv/bin/python benchmarks/telemetry_bench.py            # full (a few minutes on 2 cores)
    .venv/bin/python benchmarks/telemetry_bench.py --quick    # smaller sizes

Writes ``benchmarks/results/telemetry.json`` and prints rich tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import tempfile
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgefleet.bundle import compute_reference, summarize_features
from edgefleet.examples import digits, train_digits_mlp
from edgefleet.telemetry import (
    Aggregator,
    AggregatorConfig,
    DriftConfig,
    Outbox,
    OutboxConfig,
    Reference,
    Sampler,
    SamplerConfig,
    decode_upload,
    drift,
)
from edgefleet.telemetry._shifts import class_mix_indices, inject_shift

console = Console()
RESULTS = Path(__file__).parent / "results" / "telemetry.json"


class OrtPredictor:
    """The digits MLP in a real onnxruntime session (one thread: a small device)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.metadata = None

    def predict(self, batch, **opts):
        label, probs = self.session.run(None, {"input": np.asarray(batch["input"], dtype=np.float32)})
        return {"label": label, "probabilities": probs}

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.jump = 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_750_000_000.0 + self.t + self.jump


def machine() -> dict:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def setup(workdir: Path):
    """Model trained on half of digits; reference from that half; the other half held out."""
    data = digits(seed=0, test_size=0.5)
    model_path = workdir / "digits.onnx"
    acc = train_digits_mlp(model_path, data=data)
    pred = OrtPredictor(model_path)
    xtr = data.x_train / 16.0
    probs = pred.predict({"input": xtr})["probabilities"]
    names, feats = summarize_features(xtr)
    ref = Reference.from_dict(compute_reference(feats, names, probs))
    return data, pred, ref, acc


# --- 1. bytes ------------------------------------------------------------------------------------------


def bench_bytes(pred, ref, data, workdir: Path, hours: float, rate: float) -> dict:
    x = (data.x_test / 16.0).astype(np.float32)
    n_req = int(3600 * hours * rate)
    rng = np.random.default_rng(1)
    order = rng.integers(0, len(x), n_req)
    out = {"hours": hours, "inferences_per_s": rate, "requests": n_req, "upload_intervals": {}}
    # raw per-request logs of the same traffic (what a device would ship without aggregation)
    from edgefleet.telemetry._upload import _zstd

    log_lines, log_lines_inputs = [], []
    for upload_s in (60, 300, 900):
        clock = Clock()
        ob = Outbox(workdir / f"bytes-{upload_s}.sqlite", monotonic=clock.mono, wall=clock.wall)
        agg = Aggregator(
            pred,
            reference=ref,
            outbox=ob,
            tags={"model": "digits", "version": "1.0.0"},
            monotonic=clock.mono,
            wall=clock.wall,
        )
        sent = {"raw": 0, "compressed": 0, "batches": 0}

        def drain(ob=ob, sent=sent):
            rep = ob.drain(lambda u: None, header={"device_id": "dev-0001"})
            sent["raw"] += rep.raw_bytes
            sent["compressed"] += rep.compressed_bytes
            sent["batches"] += rep.batches

        next_upload = upload_s
        for i, j in enumerate(order):
            clock.t = i / rate
            if clock.t >= next_upload:
                agg.tick()
                drain()
                next_upload += upload_s
            t0 = time.perf_counter()
            o = agg.predict({"input": x[j : j + 1]})
            if upload_s == 60:  # build the raw logs once
                lat = (time.perf_counter() - t0) * 1e3
                p = o["probabilities"][0]
                rec = {
                    "ts": round(clock.wall(), 3),
                    "request_id": f"{i:016x}",
                    "device_id": "dev-0001",
                    "model": "digits",
                    "version": "1.0.0",
                    "latency_ms": round(lat, 3),
                    "label": int(p.argmax()),
                    "confidence": round(float(p.max()), 5),
                    "probabilities": [round(float(v), 5) for v in p],
                }
                log_lines.append(json.dumps(rec, separators=(",", ":")))
                rec["input"] = [round(float(v), 4) for v in x[j]]
                log_lines_inputs.append(json.dumps(rec, separators=(",", ":")))
        clock.t = 3600 * hours
        agg.tick()
        agg.flush_window()
        drain()
        ob.close()
        per_hour = sent["compressed"] / hours
        out["upload_intervals"][str(upload_s)] = {
            "compressed_bytes_per_hour": round(per_hour),
            "raw_json_bytes_per_hour": round(sent["raw"] / hours),
            "batches": sent["batches"],
        }
    raw = "\n".join(log_lines).encode()
    raw_in = "\n".join(log_lines_inputs).encode()
    z = _zstd()
    out["raw_logs_bytes_per_hour"] = round(len(raw) / hours)
    out["raw_logs_zstd_bytes_per_hour"] = round(len(z.compress(raw, level=3)) / hours)
    out["raw_logs_with_inputs_bytes_per_hour"] = round(len(raw_in) / hours)
    out["raw_logs_with_inputs_zstd_bytes_per_hour"] = round(len(z.compress(raw_in, level=3)) / hours)
    return out


# --- 2. drift ------------------------------------------------------------------------------------------


SHIFTS = {
    "noise": [0.01, 0.03, 0.1],
    "brightness": [0.005, 0.01, 0.03],
    "contrast": [-0.05, -0.15, -0.3],
    "rotation": [2.0, 5.0, 10.0],
    "class_mix": [0.1, 0.25, 0.5],
}
GRID = [(a, t) for a in (0.001, 0.01, 0.05) for t in (0.2, 0.4, 0.6)]


def _window(pred, ref, xs):
    agg = Aggregator(
        None,
        reference=ref,
        config=AggregatorConfig(window_s=1e9, feature_window_s=0, resources=False, drift_on_close=False),
    )
    probs = pred.predict({"input": xs})["probabilities"]
    agg.record({"input": xs}, {"probabilities": probs}, latency_ms=1.0)
    return agg.flush_window()


def bench_drift(pred, ref, data, sizes, n_null, n_shift, progress) -> dict:
    x = data.x_test / 16.0
    y = data.y_test
    rng = np.random.default_rng(2)
    configs = {f"alpha={a},threshold={t}": DriftConfig(alpha=a, threshold=t) for a, t in GRID}
    out: dict = {"held_out_rows": len(x), "sizes": {}, "grid": list(configs)}
    total = len(sizes) * (n_null + sum(len(v) for v in SHIFTS.values()) * n_shift)
    task = progress.add_task("drift windows", total=total)
    for size in sizes:
        res: dict = {"null": {}, "shifts": {}}
        # false positives: unshifted held-out windows
        null_flags = {k: [] for k in configs}
        null_scores = []
        for _ in range(n_null):
            w = _window(pred, ref, x[rng.choice(len(x), size, replace=False)])
            base = drift(w, ref)  # the tests once; each setting re-decides on the same p-values and PSIs
            null_scores.append(base.score)
            for k, cfg in configs.items():
                null_flags[k].append(base.rescored(cfg).drifted)
            progress.advance(task)
        res["null"] = {
            k: {"windows": n_null, "false_positive_rate": float(np.mean(v))} for k, v in null_flags.items()
        }
        res["null_score_p95"] = float(np.quantile(null_scores, 0.95))
        for kind, strengths in SHIFTS.items():
            for s in strengths:
                flags = {k: [] for k in configs}
                for _ in range(n_shift):
                    if kind == "class_mix":
                        idx = class_mix_indices(y, s, size, rng=rng)
                        # without replacement where possible: unique rows first
                        xs = x[idx]
                    else:
                        xs = inject_shift(x[rng.choice(len(x), size, replace=False)], kind, s, rng=rng)
                    base = drift(_window(pred, ref, xs.astype(np.float32)), ref)
                    for k, cfg in configs.items():
                        flags[k].append(base.rescored(cfg).drifted)
                    progress.advance(task)
                cell = {}
                for k, v in flags.items():
                    first = next((i + 1 for i, f in enumerate(v) if f), None)
                    cell[k] = {"detection_rate": float(np.mean(v)), "windows_to_detect": first}
                res["shifts"][f"{kind}:{s}"] = cell
        out["sizes"][str(size)] = res
    # the defaults: the most sensitive setting whose false-positive rate is below 2% with 95% confidence
    # (Clopper-Pearson upper bound) at every window size
    from scipy.stats import beta

    def fp_upper(k, s):
        n = out["sizes"][s]["null"][k]["windows"]
        x = round(out["sizes"][s]["null"][k]["false_positive_rate"] * n)
        return 1.0 if x >= n else float(beta.ppf(0.975, x + 1, n - x))

    for s in out["sizes"]:
        for k in configs:
            out["sizes"][s]["null"][k]["false_positive_upper95"] = fp_upper(k, s)
    ok = [k for k in configs if all(fp_upper(k, s) <= 0.02 for s in out["sizes"])]

    def sensitivity(k):
        return np.mean([c[k]["detection_rate"] for s in out["sizes"].values() for c in s["shifts"].values()])

    out["mean_detection_rate"] = {k: float(sensitivity(k)) for k in configs}
    out["chosen"] = max(ok, key=sensitivity) if ok else None
    return out


# --- 3. overhead ---------------------------------------------------------------------------------------


def bench_overhead(pred, ref, data, n: int) -> dict:
    x = (data.x_test / 16.0).astype(np.float32)
    rows = [x[i % len(x) : i % len(x) + 1] for i in range(n)]
    out: dict = {"requests": n}
    for label, reference in (("with_feature_histograms", ref), ("without_reference", None)):
        agg = Aggregator(
            None, reference=reference, config=AggregatorConfig(resources=False, drift_on_close=False)
        )
        outs = [pred.predict({"input": r}) for r in rows[:2000]]
        times = np.empty(n)
        pc = time.perf_counter_ns
        cpu0 = time.process_time_ns()
        for i in range(n):
            b = {"input": rows[i]}
            o = outs[i % 2000]
            t0 = pc()
            agg.record(b, o, latency_ms=0.05)
            times[i] = pc() - t0
        cpu = time.process_time_ns() - cpu0
        stats = (np.median(times), times.mean(), np.quantile(times, 0.99))
        # CPU time per request of a bare loop doing everything but record(), to subtract
        cpu1 = time.process_time_ns()
        for i in range(n):
            b = {"input": rows[i]}
            o = outs[i % 2000]
            t0 = pc()
            times[i % 1] = pc() - t0
        loop = time.process_time_ns() - cpu1
        out[label] = {
            "record_median_us": float(stats[0] / 1e3),
            "record_mean_us": float(stats[1] / 1e3),
            "record_p99_us": float(stats[2] / 1e3),
            # all the CPU the aggregator used (bulk flushes included), per request: immune to preemption
            "record_cpu_per_request_us": float((cpu - loop) / n / 1e3),
        }
    # end to end: bare engine vs wrapped
    agg = Aggregator(pred, reference=ref, config=AggregatorConfig(resources=False, drift_on_close=False))
    e2e, e2e_cpu = {}, {}
    for label, p in (("bare", pred), ("aggregated", agg)):
        ts = np.empty(min(n, 20_000))
        c0 = time.process_time_ns()
        for i in range(len(ts)):
            t0 = time.perf_counter_ns()
            p.predict({"input": rows[i]})
            ts[i] = time.perf_counter_ns() - t0
        e2e_cpu[label] = float((time.process_time_ns() - c0) / len(ts) / 1e3)
        e2e[label] = float(np.median(ts) / 1e3)
    out["end_to_end_median_us"] = e2e
    out["end_to_end_cpu_per_request_us"] = e2e_cpu
    # memory of one open window with 600 requests recorded (sketches, histograms, buffers)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    agg = Aggregator(None, reference=ref, config=AggregatorConfig(resources=False, drift_on_close=False))
    for i in range(600):
        agg.record({"input": rows[i]}, outs[i], latency_ms=0.05 * (1 + i % 7))
    snap = tracemalloc.take_snapshot()
    peak_open = sum(s.size_diff for s in snap.compare_to(base, "filename"))
    w = agg.flush_window()
    tracemalloc.stop()
    from edgefleet.telemetry._upload import _zstd

    js = w.to_json()
    out["memory"] = {
        "aggregator_with_open_window_bytes": int(peak_open),
        "window_json_bytes": len(js),
        "window_json_zstd_bytes": len(_zstd().compress(js, level=3)),
    }
    return out


# --- 4. outbox outage ----------------------------------------------------------------------------------


class _Receiver:
    """A real loopback HTTP server that accepts uploads, deduplicates by item uid and counts by kind."""

    def __init__(self) -> None:
        self.uids: set[str] = set()
        self.by_kind: dict[str, int] = {}
        self.batches = 0
        self.bytes = 0
        recv = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                doc = decode_upload(body)
                recv.batches += 1
                recv.bytes += len(body)
                for it in doc["items"]:
                    if it["uid"] not in recv.uids:
                        recv.uids.add(it["uid"])
                        recv.by_kind[it["kind"]] = recv.by_kind.get(it["kind"], 0) + 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}/upload"

    def close(self) -> None:
        self.srv.shutdown()


def bench_outbox(
    pred, ref, data, workdir: Path, hours: float, cap_bytes: int | None, bandwidth: float
) -> dict:
    import httpx

    x = (data.x_test / 16.0).astype(np.float32)
    clock = Clock()
    # TTL 36 h: a wall-clock TTL would purge half the backlog at the +1 day clock jump; ours purges nothing
    cfg_kw = {"bandwidth_bytes_per_s": bandwidth, "bandwidth_burst_bytes": 256 * 1024, "ttl_s": 36 * 3600.0}
    if cap_bytes:
        cfg_kw["max_bytes"] = cap_bytes
    path = workdir / f"outage-{cap_bytes or 'default'}.sqlite"
    ob = Outbox(path, OutboxConfig(**cfg_kw), monotonic=clock.mono, wall=clock.wall)
    before_ttl = ob.config.ttl_s
    sampler = Sampler(SamplerConfig(enabled=True, rate=0.01, privacy="hash", seed=4), outbox=ob)
    agg = Aggregator(
        None,
        reference=ref,
        outbox=ob,
        sampler=sampler,
        config=AggregatorConfig(resources=False),
        monotonic=clock.mono,
        wall=clock.wall,
    )
    rng = np.random.default_rng(3)
    seconds = int(3600 * hours)
    # the model runs on one batch per simulated second (10 rows = 10 inferences/s); noisy rows now and then
    # so that low-confidence rows exist for the sampler to favour
    for s in range(seconds):
        clock.t = float(s)
        if s == seconds // 2:
            clock.jump += 86_400  # NTP jumps the wall clock a day ahead mid-outage
        idx = rng.integers(0, len(x), 10)
        xs = x[idx]
        if s % 5 == 0:
            xs = np.clip(xs + rng.normal(0, 0.3, xs.shape), 0, 1).astype(np.float32)
        probs = pred.predict({"input": xs})["probabilities"]
        agg.record({"input": xs}, {"probabilities": probs}, latency_ms=float(rng.lognormal(-1, 0.3)))
        if s % 600 == 0:
            ob.put("event", {"type": "heartbeat_missed", "t": clock.wall(), "detail": "server unreachable"})
    clock.t = float(seconds)
    agg.flush_window()
    before = ob.stats()
    produced = {k: c["queued"]["items"] for k, c in before["counters"].items()}
    # reconnect: drain through a real HTTP server, under the bandwidth budget (simulated waiting)
    recv = _Receiver()
    client = httpx.Client(timeout=10)
    waited = 0.0

    def send(up):
        r = client.post(recv.url, content=up.body)
        r.raise_for_status()

    drains = 0
    while True:
        rep = ob.drain(send, header={"device_id": "dev-0001"})
        drains += 1
        if drains > 100_000:
            raise RuntimeError("drain makes no progress")
        if rep.stopped == "bandwidth":
            clock.t += rep.wait_s
            waited += rep.wait_s
            continue
        if rep.stopped != "empty":
            raise RuntimeError(f"drain stopped: {rep.stopped} {rep.error}")
        break
    after = ob.stats()
    client.close()
    recv.close()
    ob.close()
    return {
        "hours_offline": hours,
        "ttl_s": before_ttl,
        "cap_bytes": before["max_bytes"],
        "bandwidth_bytes_per_s": bandwidth,
        "produced": produced,
        "sampler_skipped_budget": sampler.counters["skipped_budget"],
        "queued_at_reconnect": {k: v["items"] for k, v in before["by_kind"].items()},
        "queued_bytes_at_reconnect": before["bytes"],
        "file_bytes_at_reconnect": before["file_bytes"],
        "arrived": recv.by_kind,
        "upload_batches": recv.batches,
        "uploaded_bytes": recv.bytes,
        "drain_time_s_at_budget": round(waited, 1),
        "dropped": after["dropped"],
        "left_in_outbox": after["items"],
    }


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    q = args.quick
    results: dict = {"machine": machine(), "quick": q}
    t_start = time.time()
    with tempfile.TemporaryDirectory() as td, Progress(console=console, transient=True) as progress:
        work = Path(td)
        data, pred, ref, acc = setup(work)
        results["model_accuracy"] = acc
        t = progress.add_task("bytes per device-hour", total=None)
        results["bytes"] = bench_bytes(pred, ref, data, work, hours=0.25 if q else 1.0, rate=10.0)
        progress.remove_task(t)
        results["drift"] = bench_drift(
            pred,
            ref,
            data,
            sizes=[100, 600],
            n_null=60 if q else 300,
            n_shift=5 if q else 20,
            progress=progress,
        )
        t = progress.add_task("aggregator overhead", total=None)
        results["overhead"] = bench_overhead(pred, ref, data, n=5000 if q else 50_000)
        progress.remove_task(t)
        t = progress.add_task("outbox outage", total=None)
        hours = 2.0 if q else 24.0
        results["outbox"] = {
            "default_cap": bench_outbox(pred, ref, data, work, hours, None, bandwidth=50_000),
            "small_cap": bench_outbox(pred, ref, data, work, hours, 2 << 20, bandwidth=50_000),
        }
        progress.remove_task(t)
    results["seconds"] = round(time.time() - t_start, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True))
    report(results)


def report(r: dict) -> None:
    b = r["bytes"]
    t = Table(
        title=f"1. Upload bytes per device-hour at {b['inferences_per_s']:.0f} inferences/s ({b['requests']} requests)"
    )
    for c in ("what", "bytes/hour", "vs raw logs (zstd)"):
        t.add_column(c)
    raw_z = b["raw_logs_zstd_bytes_per_hour"]
    for k, v in b["upload_intervals"].items():
        t.add_row(
            f"windows, zstd batches every {k} s"
            + (" (default)" if float(k) == OutboxConfig().upload_interval_s else ""),
            f"{v['compressed_bytes_per_hour']:,}",
            f"{raw_z / v['compressed_bytes_per_hour']:.0f}x smaller",
        )
    t.add_row("raw per-request JSON logs", f"{b['raw_logs_bytes_per_hour']:,}", "")
    t.add_row("raw per-request JSON logs, zstd", f"{raw_z:,}", "1x")
    t.add_row("raw logs with inputs, zstd", f"{b['raw_logs_with_inputs_zstd_bytes_per_hour']:,}", "")
    console.print(t)

    d = r["drift"]
    dc = DriftConfig()
    default = f"alpha={dc.alpha},threshold={dc.threshold}"
    t = Table(title="2a. False-positive rate on unshifted held-out digits windows (by setting)")
    t.add_column("setting")
    for size in d["sizes"]:
        t.add_column(f"{size} rows ({d['sizes'][size]['null'][default]['windows']} windows)")
    t.add_column("mean detection rate")
    for k in d["grid"]:
        t.add_row(
            k + (" (default)" if k == default else ""),
            *(
                f"{d['sizes'][s]['null'][k]['false_positive_rate']:.1%} (<{d['sizes'][s]['null'][k]['false_positive_upper95']:.1%})"
                for s in d["sizes"]
            ),
            f"{d['mean_detection_rate'][k]:.0%}",
        )
    console.print(t)
    console.print(f"  most sensitive setting with FP < 2% (95% upper bound) at every size: {d['chosen']}")
    t = Table(title=f"2b. Detection rate / windows-to-detect, default setting ({default})")
    t.add_column("shift")
    for size in d["sizes"]:
        t.add_column(f"{size} rows")
    for cell in next(iter(d["sizes"].values()))["shifts"]:
        vals = []
        for s in d["sizes"]:
            c = d["sizes"][s]["shifts"][cell][default]
            vals.append(f"{c['detection_rate']:.0%} / {c['windows_to_detect'] or '-'}")
        t.add_row(cell, *vals)
    console.print(t)

    o = r["overhead"]
    t = Table(title="3. Aggregator overhead per request (batch of 1) and memory")
    t.add_column("figure")
    t.add_column("value")
    for k in ("with_feature_histograms", "without_reference"):
        v = o[k]
        t.add_row(
            f"record() {k}: median / mean / p99 µs (wall)",
            f"{v['record_median_us']:.1f} / {v['record_mean_us']:.1f} / {v['record_p99_us']:.1f}",
        )
        t.add_row(
            f"record() {k}: CPU per request incl. bulk flushes, µs", f"{v['record_cpu_per_request_us']:.1f}"
        )
    e = o["end_to_end_median_us"]
    t.add_row("end-to-end median µs: bare ORT / aggregated", f"{e['bare']:.1f} / {e['aggregated']:.1f}")
    e = o["end_to_end_cpu_per_request_us"]
    t.add_row(
        "end-to-end CPU per request µs: bare ORT / aggregated", f"{e['bare']:.1f} / {e['aggregated']:.1f}"
    )
    m = o["memory"]
    t.add_row("aggregator + open window (600 requests), bytes", f"{m['aggregator_with_open_window_bytes']:,}")
    t.add_row(
        "one window serialized: JSON / zstd bytes",
        f"{m['window_json_bytes']:,} / {m['window_json_zstd_bytes']:,}",
    )
    console.print(t)

    for name, v in r["outbox"].items():
        t = Table(
            title=f"4. Outbox: {v['hours_offline']:.0f} h offline (wall clock +1 day at half time, TTL "
            f"{v['ttl_s'] / 3600:.0f} h), cap {v['cap_bytes']:,} B ({name}), then reconnect"
        )
        for c in ("kind", "produced", "queued at reconnect", "arrived", "dropped (reason: items)"):
            t.add_column(c)
        for kind in ("event", "telemetry", "sample"):
            dropped = ", ".join(f"{r_}: {x['items']}" for r_, x in v["dropped"].get(kind, {}).items()) or "0"
            t.add_row(
                kind,
                str(v["produced"].get(kind, 0)),
                str(v["queued_at_reconnect"].get(kind, 0)),
                str(v["arrived"].get(kind, 0)),
                dropped,
            )
        console.print(t)
        console.print(
            f"  uploaded {v['uploaded_bytes']:,} B in {v['upload_batches']} batches; drain time at "
            f"{v['bandwidth_bytes_per_s']:,.0f} B/s: {v['drain_time_s_at_budget']} s; sampler stopped at its budget "
            f"{v['sampler_skipped_budget']} times; left in outbox: {v['left_in_outbox']}"
        )
    console.print(f"machine: {r['machine']}; took {r['seconds']} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
