"""Runtime figures, measured side by side in one run, every figure with its spread over interleaved
repetitions (the default configuration first, the tuned one second).

1. In-process overhead: p50 latency at batch 1 through ``Runtime.predict`` with its defaults
   (validation, contract, batcher and model-call timeout on), then tuned (those off), vs a bare
   ``InferenceSession.run`` on the same session and input, one call each in rotation; the ratio is
   also worked out per repetition (5 consecutive slices of the rotation) for its spread. Also the
   raw C++ call (``InferenceSession._sess.run``).
2. Batching: 32 concurrent client threads, batch-1 requests in a closed loop, through the default
   Runtime vs the same with the batcher off (and references), in alternating rounds: throughput,
   p50/p99, and the per-round speedup's spread.
3. HTTP: ``edgefleet serve`` (defaults, then ``--no-batching`` and ``--workers 2``) vs a minimal hand-rolled FastAPI +
   ONNX Runtime endpoint, each in its own process, loaded by ``wrk`` (Debian) on loopback with 32
   connections, for the digits bundle and the 17 MB MLP; the default server also through the Open
   Inference Protocol's ``POST /v2/models/{name}/infer``. Per-round ratios give the spreads.
4. Memory: RSS after 200,000 requests minus RSS after 10,000 (full default pipeline, 4 threads).
5. Degradation: a primary failing 30% of calls (a fault-injecting wrapper around a real engine), a
   real backup model: share of requests answered, and failures seen before the breaker opened.

Models are trained here (no downloads): scikit-learn's digits MLP and, when torch is installed, a
small digits CNN and a wide (64-2048-2048-10, 17 MB) digits MLP exported to ONNX.

Usage::

    .venv/bin/python benchmarks/runtime_bench.py            # all sections (~5 minutes)
    .venv/bin/python benchmarks/runtime_bench.py --quick    # smaller sizes

Writes ``benchmarks/results/runtime.json`` and prints rich tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from edgefleet.errors import InferenceError
from edgefleet.examples import digits, train_digits_mlp
from edgefleet.runtime import (
    BatcherConfig,
    BreakerConfig,
    FallbackConfig,
    OrtEngine,
    Runtime,
    RuntimeConfig,
    ValidationConfig,
)

console = Console(width=170)
ALL_SECTIONS = "overhead,batching,http,memory,degradation"
ROOT = Path(__file__).resolve().parents[1]


# --- models ---------------------------------------------------------------------------------------------


def train_cnn(path: Path, data) -> float | None:
    """A small digits CNN (conv 32, conv 64, pool, dense 128) trained with torch, exported to ONNX."""
    try:
        import torch
        import torch.nn as nn
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 16, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    xt = torch.tensor(data.x_train / 16, dtype=torch.float32).reshape(-1, 1, 8, 8)
    yt = torch.tensor(data.y_train)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(8):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()

    class Flat(nn.Module):  # takes the same [N, 64] input as the MLP; outputs probabilities
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.softmax(self.inner(x.reshape(-1, 1, 8, 8)), dim=1)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Flat(net).eval(),
            (torch.zeros(1, 64),),
            str(path),
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            dynamo=False,
        )
    with torch.no_grad():
        xs = torch.tensor(data.x_test / 16, dtype=torch.float32).reshape(-1, 1, 8, 8)
        return float((net(xs).argmax(1).numpy() == data.y_test).mean())


def train_wide_mlp(path: Path, data, hidden: int = 2048, epochs: int = 3) -> float | None:
    """A wide digits MLP (64-2048-2048-10, ~17 MB of fp32 weights) trained with torch, exported to ONNX.

    At batch 1 its dense layers are memory-bound matrix-vector products; batching turns them into
    matrix-matrix products that reuse each weight for every row, which is where batching pays on a CPU.
    """
    try:
        import torch
        import torch.nn as nn
    except ImportError:
        return None
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )
    xt = torch.tensor(data.x_train / 16, dtype=torch.float32)
    yt = torch.tensor(data.y_train)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            nn.Sequential(net, nn.Softmax(dim=1)).eval(),
            (torch.zeros(1, 64),),
            str(path),
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            dynamo=False,
        )
    with torch.no_grad():
        return float(
            (net(torch.tensor(data.x_test / 16, dtype=torch.float32)).argmax(1).numpy() == data.y_test).mean()
        )


def fast_config() -> RuntimeConfig:
    """Runtime with validation, contract, postprocessing, batcher and timeout off (metrics on)."""
    return RuntimeConfig(
        batcher=BatcherConfig(enabled=False),
        validation=ValidationConfig(enabled=False),
        fallback=FallbackConfig(timeout_ms=None),
        preprocess=False,
        postprocess=False,
    )


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# --- 1. overhead --------------------------------------------------------------------------------------


BARE_OWN = "bare InferenceSession.run, the default runtime's session"


def bench_overhead(
    models: dict[str, Path], x: np.ndarray, max_calls: int, budget_s: float, reps: int = 5
) -> list[dict]:
    rows = []
    for name, path in models.items():
        fast = Runtime.from_bundle(path, fast_config())
        full = Runtime.from_bundle(path, RuntimeConfig())  # defaults: validation, batcher, timeout...
        # the bare calls use the very session the fast runtime serves with: same weights, same caches
        sess = fast.pipeline._session
        feed = {"input": x[:1]}
        names = [o.name for o in sess.get_outputs()]
        # The default runtime loads the model into a session of its own: it is compared with bare calls on
        # that session (two 17 MB models do not share a 32 MB L3: each is compared on its own weights).
        own = _engine_of(full)._session
        calls = {
            "bare InferenceSession.run": lambda s=sess, f=feed: s.run(None, f),
            BARE_OWN: lambda s=own, f=feed: s.run(None, f),
            "Runtime.predict (defaults)": lambda r=full, f=feed: r.predict(f),
            "Runtime.predict (tuned: checks, batcher, timeout off)": lambda r=fast, f=feed: r.predict(f),
            "raw C++ session call": lambda s=sess, f=feed, n=names: s._sess.run(n, f, None),
            "reference: least Python doing the default's checks": minimal_wrapper(sess, feed),
        }
        samples: dict[str, list[int]] = {k: [] for k in calls}
        fns = list(calls.items())
        for _, fn in fns:
            for _ in range(200):
                fn()
        t = time.perf_counter()
        for _, fn in fns:
            fn()
        per_round = time.perf_counter() - t
        # Fast models: one call each per round. Slow ones (the 17 MB MLP): runs of 6 calls, the first 2 of
        # each run not counted: the default runtime has a session of its own, and two 17 MB models do not fit
        # the L3 together, so a switch of session takes more than one call to settle; what is compared is
        # then warm call against warm call. The order is shuffled every round (seeded): in a fixed cyclic
        # order the variant just after a switch of session pays for it every time.
        run, skip = (1, 0) if per_round / len(fns) < 1e-4 else (6, 2)
        n = int(min(max_calls, max(300, budget_s / per_round))) // run
        perf = time.perf_counter_ns
        order = list(range(len(fns)))
        rng = random.Random(0)
        for _ in range(n):  # every variant once per round: noise hits all variants alike
            rng.shuffle(order)
            for j in order:
                k, fn = fns[j]
                for c in range(run):
                    t0 = perf()
                    fn()
                    if c >= skip:
                        samples[k].append(perf() - t0)
        split = inside_outside({"defaults": full, "tuned": fast}, feed, run, min(n * run, 1500))
        fast.close()
        full.close()
        bares = {k: np.asarray(samples[k], dtype=np.float64) for k in ("bare InferenceSession.run", BARE_OWN)}
        for k, v in samples.items():
            vs = BARE_OWN if k == "Runtime.predict (defaults)" else "bare InferenceSession.run"
            bare = bares[vs]
            bare50 = float(np.percentile(bare, 50))
            arr = np.asarray(v, dtype=np.float64)
            # the calls split into `reps` consecutive repetitions (each interleaved): a ratio per repetition
            per_rep = [
                float(np.percentile(a, 50) / np.percentile(b, 50))
                for a, b in zip(np.array_split(arr, reps), np.array_split(bare, reps), strict=True)
            ]
            rows.append(
                {
                    "model": name,
                    "variant": k,
                    "p50_us": round(pct(arr, 50) / 1000, 2),
                    "p99_us": round(pct(arr, 99) / 1000, 2),
                    "ratio_p50_vs_bare": round(pct(arr, 50) / bare50, 3),
                    "vs": "its own session" if vs == BARE_OWN else "the shared session",
                    "ratio_reps": reps,
                    "ratio_spread": f"{min(per_rep):.3f}-{max(per_rep):.3f}",
                    "ratio_each_rep": [round(r, 3) for r in per_rep],
                    # call i of every variant ran back to back: the median paired difference is the
                    # overhead least disturbed by a shared machine's slow drifts
                    "paired_overhead_us": round(float(np.median(arr - bare)) / 1000, 2),
                    "samples": len(v),
                    **split.get(k, {}),
                }
            )
    return rows


def minimal_wrapper(sess, feed: dict):
    """The least Python that does what the default runtime must per request, written out by hand for one
    float32 input: dtype/rank/shape and finiteness checks, a lock round trip each for the hot-swap
    in-flight count and the batcher's admission, a watchdog slot holding the call's RunOptions, the C++
    call, named outputs and a result object with the latency. A floor for the runtime's overhead, not
    an alternative to it (no metrics, no errors worth reading, no priorities, no swap)."""
    import itertools
    import math

    names = [o.name for o in sess.get_outputs()]
    run = sess._sess.run
    options = ort.RunOptions()
    slots: dict[int, tuple[float, object]] = {}
    ids = itertools.count()
    swap_lock, admit_lock = threading.Lock(), threading.Lock()
    f32 = np.dtype(np.float32)
    tail = feed["input"].shape[1:]
    ndim = len(tail) + 1

    class Answer:
        __slots__ = ("outputs", "latency_ms")

        def __init__(self, outputs: dict, latency_ms: float) -> None:
            self.outputs, self.latency_ms = outputs, latency_ms

    def call(feed: dict, perf=time.perf_counter, mono=time.monotonic) -> Answer:
        t0 = perf()
        a = feed.get("input")
        if (
            type(a) is not np.ndarray
            or a.dtype != f32
            or a.ndim != ndim
            or a.shape[1:] != tail
            or not math.isfinite(a.sum())
        ):
            raise ValueError("bad input")
        with swap_lock:
            pass
        with admit_lock:
            pass
        token = next(ids)
        slots[token] = (mono() + 1.0, options)
        try:
            out = run(names, feed, options)
        finally:
            slots.pop(token, None)
        return Answer(dict(zip(names, out, strict=True)), (perf() - t0) * 1000)

    return lambda: call(feed)


def _engine_of(rt: Runtime):
    """The OrtEngine a Runtime serves with (walks its pipeline's wrappers)."""
    from edgefleet.runtime._engines import OrtEngine

    seen: set[int] = set()

    def walk(o, depth=0):
        if id(o) in seen or depth > 8:
            return None
        seen.add(id(o))
        if isinstance(o, OrtEngine):
            return o
        for v in getattr(o, "__dict__", {}).values():
            if (r := walk(v, depth + 1)) is not None:
                return r
        return None

    return walk(rt)


def inside_outside(runtimes: dict[str, Runtime], feed: dict, run: int, calls: int) -> dict[str, dict]:
    """Per runtime: the median time inside the ORT call (timed in the engine) and around it (the rest of
    ``predict``), from ``calls`` extra calls in the same rotation; keyed like the variants above."""
    inner: dict[str, list[int]] = {k: [] for k in runtimes}
    outer: dict[str, list[int]] = {k: [] for k in runtimes}
    perf = time.perf_counter_ns
    engines = {}
    for k, rt in runtimes.items():
        eng = _engine_of(rt)
        if eng is None:
            return {}
        real = eng._call

        def timed(*a, _real=real, _k=k):
            t = perf()
            r = _real(*a)
            inner[_k].append(perf() - t)
            return r

        engines[k] = (eng, real)
        eng._call = timed
    try:
        for _ in range(max(1, calls // run)):
            for k, rt in runtimes.items():
                for c in range(run):
                    t0 = perf()
                    rt.predict(feed)
                    if c or run == 1:
                        outer[k].append(perf() - t0)
                    elif inner[k]:
                        inner[k].pop()
    finally:
        for eng, real in engines.values():
            eng._call = real
    out = {}
    for k in runtimes:
        o, i = (
            np.asarray(outer[k], dtype=np.float64),
            np.asarray(inner[k][-len(outer[k]) :], dtype=np.float64),
        )
        label = (
            "Runtime.predict (defaults)"
            if k == "defaults"
            else "Runtime.predict (tuned: checks, batcher, timeout off)"
        )
        out[label] = {
            "inside_ort_us": round(float(np.median(i)) / 1000, 2),
            "around_ort_us": round(float(np.median(o - i)) / 1000, 2),
        }
    return out


# --- 2. batching --------------------------------------------------------------------------------------


def closed_loop(rt: Runtime, x: np.ndarray, clients: int, seconds: float) -> dict:
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        mine = lat[k]
        i = k
        start.wait()
        while not stop.is_set():
            row = x[i % len(x) : i % len(x) + 1]
            t = time.perf_counter()
            try:
                rt.predict(row)
            except Exception:
                errors[k] += 1
            mine.append(time.perf_counter() - t)
            i += clients

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    all_lat = [v for part in lat for v in part]
    return {
        "requests": len(all_lat),
        "errors": sum(errors),
        "req_per_s": round(len(all_lat) / elapsed, 1),
        "cpu_us_per_req": round(cpu / max(1, len(all_lat)) * 1e6, 1),
        "p50_ms": round(pct(all_lat, 50) * 1000, 3),
        "p99_ms": round(pct(all_lat, 99) * 1000, 3),
    }


class BareSession:
    """Reference for the batching table: one ORT session shared by every client thread, no runtime."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict(self, row: np.ndarray) -> list:
        return self.session.run(None, {self.input: row})

    def close(self) -> None:
        pass


def bench_batching(
    models: dict[str, Path], x: np.ndarray, clients: int, seconds: float, rounds: int
) -> list[dict]:
    """Default Runtime with the batcher off vs on, alternating short runs; medians over the rounds.

    Reference rows run in the same rotation: the Runtime with neither batcher nor model-call timeout
    (no thread hand-off at all), from all clients and from a single client thread, and a bare ORT
    session shared by the client threads.
    """
    rows = []
    for name, path in models.items():
        fast = RuntimeConfig(batcher=BatcherConfig(enabled=False), fallback=FallbackConfig(timeout_ms=None))
        rts: dict[str, Any] = {
            "off": Runtime.from_bundle(path, RuntimeConfig(batcher=BatcherConfig(enabled=False))),
            "on": Runtime.from_bundle(path, RuntimeConfig()),  # the default configuration
            # tuned: a batch worker per usable core (batches run in parallel, each smaller)
            "on, workers=0": Runtime.from_bundle(path, RuntimeConfig(batcher=BatcherConfig(workers=0))),
            "off, no timeout": Runtime.from_bundle(path, fast),
            "off, no timeout, 1 client": Runtime.from_bundle(path, fast),
            "bare ORT session": BareSession(path),
        }
        threads = {k: 1 if k.endswith("1 client") else clients for k in rts}
        runs: dict[str, list[dict]] = {k: [] for k in rts}
        try:
            for key, rt in rts.items():
                closed_loop(rt, x, threads[key], 0.5)  # warm-up
            for _ in range(rounds):
                for key, rt in rts.items():
                    runs[key].append(closed_loop(rt, x, threads[key], seconds))
            mean_batch = {}
            for key in ("on", "on, workers=0"):
                text = rts[key].metrics.exposition().decode()
                count = float(re.search(r"batch_size_count (\S+)", text).group(1))
                total = float(re.search(r"batch_size_sum (\S+)", text).group(1))
                mean_batch[key] = round(total / max(count, 1), 1)
        finally:
            for rt in rts.values():
                rt.close()
        for key in rts:
            rs = runs[key]
            # round i of every variant ran back to back: the per-round ratio is the paired figure
            ratios = [r["req_per_s"] / o["req_per_s"] for r, o in zip(rs, runs["off"], strict=True)]
            row = {
                "model": name,
                "batcher": key,
                "clients": threads[key],
                "rounds": len(rs),
                "requests": sum(r["requests"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "req_per_s": round(float(np.median([r["req_per_s"] for r in rs])), 1),
                "cpu_us_per_req": round(float(np.median([r["cpu_us_per_req"] for r in rs])), 1),
                "p50_ms": round(float(np.median([r["p50_ms"] for r in rs])), 3),
                "p99_ms": round(float(np.median([r["p99_ms"] for r in rs])), 3),
                "req_per_s_each_round": [r["req_per_s"] for r in rs],
                "speedup_vs_off": round(float(np.median(ratios)), 2),
                "speedup_spread": f"{min(ratios):.2f}-{max(ratios):.2f}",
                "p99_ms_each_round": [r["p99_ms"] for r in rs],
            }
            if key in mean_batch:
                row["mean_batch"] = mean_batch[key]
            rows.append(row)
    return rows


# --- 3. HTTP ------------------------------------------------------------------------------------------

BASELINE_APP = """
import numpy as np, onnxruntime as ort
from fastapi import FastAPI, Request
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
sess = ort.InferenceSession("{model}", so, providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
app = FastAPI()

@app.post("/v1/predict")
async def predict(request: Request):
    body = await request.json()
    x = np.asarray(body["inputs"], dtype=np.float32) * {scale}
    outs = sess.run(None, {{"input": x}})
    return {{"outputs": {{n: o.tolist() for n, o in zip(names, outs)}}}}
"""

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait_http(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def _parse_wrk(out: str) -> dict:
    def dur(s: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    dist = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": round(dur(dist["50"]), 3),
        "p99_ms": round(dur(dist["99"]), 3),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else None,
    }


def bench_http(
    source: Path,
    model: Path,
    rows: list,
    scale: float,
    seconds: int,
    rounds: int,
    connections: int,
    tmp: Path,
) -> list[dict]:
    """``edgefleet serve`` (defaults, then --no-batching) vs a hand-rolled FastAPI + ORT endpoint.

    ``source`` is what edgefleet serves (a bundle with its contract, or the bare model), ``model`` the
    .onnx the baseline loads, ``rows`` the one-row request body and ``scale`` the baseline's
    preprocessing. The default server is also loaded through ``POST /v2/models/{name}/infer``.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        console.print("[yellow]wrk not found (apt-get install -y wrk): HTTP section skipped[/]")
        return []
    tag = model.stem
    lua = tmp / f"post-{tag}.lua"
    lua.write_text(WRK_LUA.format(body=json.dumps({"inputs": rows}, separators=(",", ":"))))
    arr = np.asarray(rows, dtype=np.float32) * scale  # /v2 takes model tensors: preprocessed
    v2_body = {
        "inputs": [
            {"name": "input", "shape": list(arr.shape), "datatype": "FP32", "data": arr.ravel().tolist()}
        ]
    }
    lua_v2 = tmp / f"v2-{tag}.lua"
    lua_v2.write_text(WRK_LUA.format(body=json.dumps(v2_body, separators=(",", ":"))))
    app_file = tmp / f"baseline_{tag}.py"
    app_file.write_text(BASELINE_APP.format(model=model, scale=scale))
    env = {**os.environ, "PYTHONPATH": str(tmp)}
    serve = [sys.executable, "-m", "edgefleet.cli", "serve", str(source), "--threads", "1", "--port"]
    servers = {
        "edgefleet serve (defaults)": lambda port: [*serve, str(port)],
        "edgefleet serve --no-batching": lambda port: [*serve, str(port), "--no-batching"],
        # tuned: two processes share the port (each its own model copy and batcher)
        "edgefleet serve --workers 2": lambda port: [*serve, str(port), "--workers", "2"],
        "hand-rolled FastAPI + ORT": lambda port: [
            sys.executable,
            "-m",
            "uvicorn",
            f"baseline_{tag}:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
    }
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    loads: dict[str, tuple[str, str, Path]] = {}  # row name -> (server, path, lua)
    try:
        for name, cmd in servers.items():  # all up at once; idle ones cost nothing
            port = _free_port()
            proc = subprocess.Popen(
                cmd(port), cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            procs[name] = (proc, port)
            loads[name] = (name, "/v1/predict", lua)
        for proc, port in procs.values():
            _wait_http(port, proc)
        import httpx

        served_name = httpx.get(f"http://127.0.0.1:{procs['edgefleet serve (defaults)'][1]}/v1/model").json()
        loads["edgefleet serve (defaults), /v2 infer"] = (
            "edgefleet serve (defaults)",
            f"/v2/models/{served_name['name']}/infer",
            lua_v2,
        )
        runs: dict[str, list[dict]] = {name: [] for name in loads}
        for server, path, script in loads.values():
            url = f"http://127.0.0.1:{procs[server][1]}{path}"
            subprocess.run(
                [wrk, "-t1", f"-c{connections}", "-d2s", "-s", str(script), url], capture_output=True
            )
        # short runs in rotation: a shared machine's noise then hits every server alike
        for _ in range(rounds):
            for name, (server, path, script) in loads.items():
                url = f"http://127.0.0.1:{procs[server][1]}{path}"
                out = subprocess.run(
                    [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                runs[name].append(_parse_wrk(out))
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    out_rows = []
    base = runs["hand-rolled FastAPI + ORT"]
    unbatched = runs["edgefleet serve --no-batching"]
    for name, rs in runs.items():
        vs_base = [r["req_per_s"] / b["req_per_s"] for r, b in zip(rs, base, strict=True)]
        vs_unbatched = [r["req_per_s"] / u["req_per_s"] for r, u in zip(rs, unbatched, strict=True)]
        out_rows.append(
            {
                "model": tag,
                "server": name,
                "connections": connections,
                "rounds": len(rs),
                "seconds_each": seconds,
                "req_per_s": round(float(np.median([r["req_per_s"] for r in rs])), 1),
                "p50_ms": round(float(np.median([r["p50_ms"] for r in rs])), 3),
                "p99_ms": round(float(np.median([r["p99_ms"] for r in rs])), 3),
                "requests": sum(r["requests"] for r in rs),
                "non_2xx": sum(r["non_2xx"] for r in rs),
                "req_per_s_each_round": [r["req_per_s"] for r in rs],
                "p99_ms_each_round": [r["p99_ms"] for r in rs],
                "ratio_vs_baseline": round(float(np.median(vs_base)), 2),
                "baseline_spread": f"{min(vs_base):.2f}-{max(vs_base):.2f}",
                "ratio_vs_no_batching": round(float(np.median(vs_unbatched)), 2),
                "no_batching_spread": f"{min(vs_unbatched):.2f}-{max(vs_unbatched):.2f}",
            }
        )
    return out_rows


# --- 4. memory ----------------------------------------------------------------------------------------


def bench_memory(bundle: Path, x_raw: np.ndarray, first: int, total: int, threads: int = 4) -> dict:
    import psutil

    proc = psutil.Process()
    rt = Runtime.from_bundle(bundle)  # every default on: contract, validation, batcher, metrics
    counter = iter(range(10**9))
    lock = threading.Lock()

    def drive(n: int) -> None:
        def worker() -> None:
            while True:
                with lock:
                    i = next(counter)
                if i >= n:
                    return
                j = i % len(x_raw)
                rt.predict(x_raw[j : j + 1])

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    t0 = time.perf_counter()
    drive(first)
    gc.collect()
    rss_first = proc.memory_info().rss
    drive(total)
    gc.collect()
    rss_total = proc.memory_info().rss
    elapsed = time.perf_counter() - t0
    rt.close()
    return {
        "requests_first": first,
        "requests_total": total,
        "rss_after_first_mb": round(rss_first / 2**20, 2),
        "rss_after_total_mb": round(rss_total / 2**20, 2),
        "growth_mb": round((rss_total - rss_first) / 2**20, 2),
        "seconds": round(elapsed, 1),
    }


# --- 5. degradation -------------------------------------------------------------------------------------


class FaultInjectingPredictor:
    """Fault-injecting wrapper around a real engine: fails ``rate`` of calls (seeded)."""

    def __init__(self, inner: OrtEngine, rate: float, seed: int = 0) -> None:
        self.inner, self.rate = inner, rate
        self.rng = np.random.default_rng(seed)
        self.calls = self.failures = 0
        self.lock = threading.Lock()

    @property
    def metadata(self):
        return self.inner.metadata

    def predict(self, batch, **opts):
        with self.lock:
            self.calls += 1
            fail = self.rng.random() < self.rate
            self.failures += fail
        if fail:
            raise InferenceError("injected failure")
        return self.inner.predict(batch, **opts)

    def close(self) -> None:
        self.inner.close()


def bench_degradation(primary: Path, backup: Path, x: np.ndarray, n: int, rate: float) -> dict:
    faulty = FaultInjectingPredictor(OrtEngine(primary, name="digits", version="1.0.0"), rate)
    breaker = BreakerConfig(failure_threshold=5, window=20, backoff_s=0.05, backoff_max_s=1.0)
    cfg = RuntimeConfig(breaker=breaker, batcher=BatcherConfig(enabled=False))
    rt = Runtime.from_bundle(faulty, cfg, backup=OrtEngine(backup, tier="backup"))
    answered = failed = 0
    tiers: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(n):
        try:
            res = rt.predict(x[i % len(x) : i % len(x) + 1])
            answered += 1
            tiers[res.tier] = tiers.get(res.tier, 0) + 1
        except Exception:
            failed += 1
    elapsed = time.perf_counter() - t0
    [br] = [b for b in rt.pipeline.breakers()]
    opened = br.breaker.failures_when_opened
    rt.close()
    return {
        "requests": n,
        "failure_rate_injected": rate,
        "primary_calls": faulty.calls,
        "primary_failures": faulty.failures,
        "answered": answered,
        "answered_pct": round(100 * answered / n, 3),
        "unanswered": failed,
        "by_tier": tiers,
        "breaker_threshold": breaker.failure_threshold,
        "breaker_window": breaker.window,
        "breaker_opened": len(opened),
        "max_failures_in_window_when_opened": max(opened) if opened else None,
        "seconds": round(elapsed, 2),
    }


# --- main ---------------------------------------------------------------------------------------------


def machine() -> dict:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s+(.*)", out)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def table(title: str, rows: list[dict], cols: list[str]) -> None:
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(r.get(c, "")) for c in cols])
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--sections", default=ALL_SECTIONS, help="comma-separated subset to run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    q = args.quick
    sections = set(args.sections.split(","))
    results: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["benchmarks/runtime_bench.py", *sys.argv[1:]]),
    }
    with tempfile.TemporaryDirectory(prefix="edgefleet-rt-bench-") as td:
        tmp = Path(td)
        data = digits()
        x = (data.x_test / 16).astype(np.float32)
        with console.status("training models (digits MLP, backup MLP, digits CNN, wide digits MLP)..."):
            mlp, backup = tmp / "mlp.onnx", tmp / "backup.onnx"
            acc = {"mlp": train_digits_mlp(mlp, data=data)}
            acc["backup"] = train_digits_mlp(backup, hidden=(32,), seed=3, max_iter=200, data=data)
            cnn = tmp / "cnn.onnx"
            acc_cnn = train_cnn(cnn, data)
            models = {"digits MLP": mlp}
            if acc_cnn is not None:
                acc["cnn"] = acc_cnn
                models["digits CNN"] = cnn
            wide = tmp / "wide.onnx"
            acc_wide = train_wide_mlp(wide, data)
            if acc_wide is not None:
                acc["wide_mlp"] = acc_wide
                models["wide digits MLP"] = wide
            from edgefleet.bundle import create_bundle

            bundle = create_bundle(
                mlp,
                tmp / "digits.tar",
                name="digits",
                version="1.0.0",
                variant="cpu",
                inputs_raw=data.x_test[:16],
                preprocess=[{"op": "scale", "factor": 1 / 16}],
            )
        results["accuracy"] = {k: round(v, 4) for k, v in acc.items()}

        if "overhead" in sections:
            with console.status("1/5 in-process overhead..."):
                rows = bench_overhead(models, x, max_calls=5_000 if q else 30_000, budget_s=8 if q else 40)
            results["overhead"] = rows
            table(
                "In-process latency at batch 1 (round-robin, one call each)",
                rows,
                [
                    "model",
                    "variant",
                    "p50_us",
                    "p99_us",
                    "ratio_p50_vs_bare",
                    "vs",
                    "ratio_spread",
                    "paired_overhead_us",
                    "inside_ort_us",
                    "around_ort_us",
                ],
            )
        if "batching" in sections:
            with console.status("2/5 batching with 32 clients..."):
                # the digits CNN adds nothing here that the two MLPs do not show
                batch_models = {k: v for k, v in models.items() if k != "digits CNN"}
                rows = bench_batching(batch_models, x, clients=32, seconds=2, rounds=2 if q else 5)
            for name in batch_models:
                off = next(r for r in rows if r["model"] == name and r["batcher"] == "off")
                for r in rows:
                    if r["model"] == name and r is not off:
                        r["cpu_saving_vs_off"] = round(off["cpu_us_per_req"] / r["cpu_us_per_req"], 2)
            results["batching"] = rows
            table(
                "32 concurrent clients, batch-1 requests (default pipeline, median of rounds)",
                rows,
                [
                    "model",
                    "batcher",
                    "req_per_s",
                    "cpu_us_per_req",
                    "p50_ms",
                    "p99_ms",
                    "mean_batch",
                    "errors",
                    "speedup_vs_off",
                    "speedup_spread",
                    "cpu_saving_vs_off",
                ],
            )
        if "http" in sections:
            with console.status("3/5 HTTP with wrk..."):
                rows = []
                http_rounds = 2 if q else 5
                # the digits bundle (raw pixels through its contract) and the wide MLP (model tensors)
                rows += bench_http(
                    bundle, mlp, data.x_test[:1].tolist(), 1 / 16, 3, http_rounds, connections=32, tmp=tmp
                )
                if "wide digits MLP" in models:
                    rows += bench_http(
                        wide, wide, x[:1].tolist(), 1.0, 3, http_rounds, connections=32, tmp=tmp
                    )
            results["http"] = rows
            table(
                "POST on loopback (wrk -t1 -c32, median of interleaved rounds; spreads are per-round ratios)",
                rows,
                [
                    "model",
                    "server",
                    "req_per_s",
                    "p50_ms",
                    "p99_ms",
                    "non_2xx",
                    "ratio_vs_no_batching",
                    "no_batching_spread",
                    "ratio_vs_baseline",
                    "baseline_spread",
                ],
            )
        if "memory" in sections:
            with console.status("4/5 memory over many requests..."):
                r = bench_memory(bundle, data.x_test, first=10_000, total=30_000 if q else 200_000)
            results["memory"] = r
            table("RSS growth (full default pipeline, 4 threads)", [r], list(r))
        if "degradation" in sections:
            with console.status("5/5 degradation with a 30% failing primary..."):
                r = bench_degradation(mlp, backup, x, n=5_000 if q else 20_000, rate=0.3)
            results["degradation"] = r
            table(
                "Primary failing 30% of calls, backup model behind it",
                [r],
                [
                    "requests",
                    "primary_failures",
                    "answered_pct",
                    "by_tier",
                    "breaker_opened",
                    "max_failures_in_window_when_opened",
                    "breaker_threshold",
                ],
            )
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and sections != set(ALL_SECTIONS.split(",")):
        # a partial run updates its sections and keeps the others
        previous = json.loads(args.out.read_text())
        results = {
            **previous,
            **results,
            "command": f"{previous.get('command', '')}; then {results['command']}",
            "machine": {**previous.get("machine", {}), f"during {args.sections}": results["machine"]},
        }
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
