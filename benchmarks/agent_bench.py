"""Device agent figures: kill -9 trials, resume, delta vs full, assignment->active, rollback, idle RSS/CPU.

Everything is real and on loopback: a signed TUF repository (edgefleet.registry), the stand-in director
and Range-capable repository server from tests/agent, real agent processes killed with SIGKILL.

    .venv/bin/python benchmarks/agent_bench.py                 # 200 kill -9 trials (the figure)
    .venv/bin/python benchmarks/agent_bench.py --trials 20     # quicker

Prints a table and writes benchmarks/results/agent.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "agent"))

from _killharness import KillHarness, Zygote, check_valid_active  # noqa: E402
from _standin import ENROLL_TOKEN, StandIn  # noqa: E402

PRE = [{"op": "scale", "factor": 1 / 16}]


# --- models ------------------------------------------------------------------------------------------


def random_feature_mlp(
    path: Path, x: np.ndarray, y: np.ndarray, *, hidden: int, seed: int, fit_seed: int, feat_seed: int = 0
) -> None:
    """An MLP whose two hidden layers are fixed random features and whose last layer is trained
    (ridge regression to one-hot labels on a bootstrap sample drawn with ``fit_seed``). Two calls that
    differ only in ``fit_seed`` give a "last-layer retrained" pair of models."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(feat_seed)
    w1 = (rng.standard_normal((64, hidden)) / 8).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    xs = x / 16.0
    h = np.maximum(np.maximum(xs @ w1 + b1, 0) @ w2 + b2, 0)
    idx = np.random.default_rng(fit_seed).choice(len(x), len(x), replace=True)
    onehot = np.eye(10, dtype=np.float32)[y[idx]]
    hh = h[idx]
    w3 = np.linalg.solve(hh.T @ hh + 1.0 * np.eye(hidden), hh.T @ onehot).astype(np.float32)
    b3 = np.zeros(10, np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3")]
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w3"], ["m3"]),
        helper.make_node("Add", ["m3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "rfmlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


class Env:
    """A repository with small (digits MLP) and ~10 MB bundles, and a running stand-in server."""

    def __init__(self, work: Path) -> None:
        from edgefleet.bundle import create_bundle
        from edgefleet.examples import digits, train_digits_mlp
        from edgefleet.registry import Repository, init_keys

        self.work = work
        d = digits(seed=0)
        self.x = d.x_test
        self.bundles: dict[str, Path] = {}
        train_digits_mlp(work / "small1.onnx", data=d)
        train_digits_mlp(work / "small2.onnx", data=d, seed=1)
        random_feature_mlp(work / "big1.onnx", d.x_train, d.y_train, hidden=1536, seed=0, fit_seed=1)
        random_feature_mlp(work / "big2.onnx", d.x_train, d.y_train, hidden=1536, seed=0, fit_seed=2)
        for name, model, version in [
            ("digits", "small1", "1.0.0"),
            ("digits", "small2", "1.1.0"),
            ("big", "big1", "1.0.0"),
            ("big", "big2", "1.1.0"),
        ]:
            self.bundles[f"{name}/{version}"] = create_bundle(
                work / f"{model}.onnx",
                work / f"{name}-{version}.tar",
                name=name,
                version=version,
                variant="cpu",
                inputs_raw=self.x[:16],
                preprocess=PRE,
            )
        keys = init_keys(work / "keys", root_keys=1, root_threshold=1)
        self.repo = Repository.init(work / "repo", keys)
        self.published = {k: self.repo.publish(p) for k, p in self.bundles.items()}
        self.standin = StandIn(work / "repo").start()

    def target(self, key: str) -> str:
        name, version = key.split("/")
        return f"{name}/{version}/cpu.tar"

    def sha(self, key: str) -> str:
        return self.published[key].sha256

    def enrolled_state(self, name: str) -> Path:
        from edgefleet.agent import AgentConfig, enroll

        self.standin.tokens.add(ENROLL_TOKEN)
        state = self.work / name
        enroll(
            AgentConfig(state_dir=state),
            token=ENROLL_TOKEN,
            root_json=self.work / "repo" / "metadata" / "1.root.json",
            server_url=self.standin.url,
        )
        return state

    def agent(self, state: Path, **kw: Any):
        from edgefleet.agent import Agent, AgentConfig, RuntimeHost

        cfg = AgentConfig(state_dir=state, **({"disk_reserve_mb": 0, "latency_runs": 10} | kw))
        a = Agent(cfg, host=RuntimeHost(seed=0))
        a.start()
        return a

    def install(self, a, key: str, watch: float = 0.05) -> None:
        from edgefleet.protocol import GateThresholds

        self.standin.assign(self.target(key), gates=GateThresholds(watch_window_s=watch))
        deadline = time.monotonic() + 300
        while a.journal.state.committed != self.sha(key):
            if time.monotonic() > deadline:
                raise RuntimeError(f"install of {key} did not finish: {a.journal.state.last_error}")
            a.run_once()
            time.sleep(0.01)


# --- figures -----------------------------------------------------------------------------------------


def bench_kill(env: Env, trials: int, seed: int) -> dict[str, Any]:
    from edgefleet.protocol import GateThresholds

    state = env.enrolled_state("kill-template")
    a = env.agent(state)
    env.install(a, "digits/1.0.0")
    a.close()
    env.standin.poll_interval_s = 0.1
    env.standin.assign(env.target("digits/1.1.0"), gates=GateThresholds(watch_window_s=0.3))
    h = KillHarness(
        env.work / "kill",
        state,
        env.sha("digits/1.0.0"),
        env.sha("digits/1.1.0"),
        env={"EDGEFLEET_AGENT_MAX_RATE_BYTES_PER_S": "150000", "EDGEFLEET_AGENT_LATENCY_RUNS": "5"},
    )
    h.work.mkdir()
    h.zygote = Zygote()
    rng = random.Random(seed)
    results = []
    t0 = time.monotonic()
    try:
        for i in range(trials):
            h.env["EDGEFLEET_AGENT_USE_DELTA"] = "true" if i % 2 else "false"
            results.append(h.trial(i, rng, span_s=1.5))
            if (i + 1) % 20 == 0:
                ok = sum(r["ok"] for r in results)
                print(f"  kill trials: {i + 1}/{trials}, {ok} ok ({time.monotonic() - t0:.0f}s)", flush=True)
    finally:
        h.zygote.close()
    by_step: dict[str, int] = {}
    for r in results:
        by_step[r["killed_at"]] = by_step.get(r["killed_at"], 0) + 1
    return {
        "trials": trials,
        "valid_after_kill": sum(r["valid_after_kill"] for r in results),
        "completed_on_restart": sum(r["completed_on_restart"] for r in results),
        "all_ok": sum(r["ok"] for r in results),
        "killed_in_step": by_step,
        "recovery_s_median": statistics.median(r["recovery_s"] for r in results),
        "failures": [r for r in results if not r["ok"]][:10],
    }


def bench_resume(env: Env) -> dict[str, Any]:
    """kill -9 the agent at 50% of a full download, restart, count bytes the server sends afterwards."""
    out = {}
    for label, ignore_range in [("range_resume", False), ("no_range_server", True)]:
        state = env.enrolled_state(f"resume-{label}")
        a = env.agent(state)
        env.install(a, "digits/1.0.0")
        a.close()
        key = "big/1.1.0"
        length = env.published[key].length
        env.standin.assign(env.target(key))
        env.standin.faults = {"ignore_range": ignore_range}
        h = KillHarness(
            env.work / f"resume-run-{label}",
            state,
            env.sha("digits/1.0.0"),
            env.sha(key),
            env={
                "EDGEFLEET_AGENT_MAX_RATE_BYTES_PER_S": str(length // 2),
                "EDGEFLEET_AGENT_USE_DELTA": "false",
            },
        )
        h.work.mkdir()
        log = h.work / "agent.log"
        part = state / "downloads" / f"{env.sha(key)}.part"
        p = h.spawn(state, log)
        while not (part.exists() and part.stat().st_size >= length // 2):
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        at = part.stat().st_size
        sent0 = env.standin.target_bytes_sent
        h.env.pop("EDGEFLEET_AGENT_MAX_RATE_BYTES_PER_S")
        p = h.spawn(state, log)
        ok = h._wait(state, lambda s: s in ("watching", "committed"), 300, p)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        after = env.standin.target_bytes_sent - sent0
        out[label] = {
            "archive_bytes": length,
            "killed_at_bytes": at,
            "killed_at_fraction": round(at / length, 3),
            "bytes_after_restart": after,
            "fraction_after_restart": round(after / length, 3),
            "completed": ok and check_valid_active(state, {env.sha(key)}) is None,
        }
    env.standin.faults = {}
    return out


def bench_delta(env: Env) -> dict[str, Any]:
    out = {}
    for name in ("digits", "big"):
        pub = env.published[f"{name}/1.1.0"]
        out[name] = {
            "full_bytes": pub.length,
            "delta_bytes": pub.delta_length,
            "ratio": round(pub.delta_length / pub.length, 4) if pub.delta_length else None,
        }
    # and what an agent actually transfers for the big update (delta first)
    state = env.enrolled_state("delta-agent")
    a = env.agent(state)
    env.install(a, "big/1.0.0")
    sent0 = env.standin.target_bytes_sent
    env.install(a, "big/1.1.0")
    ev = [e for e in a.journal.state.history if e["event"] == "downloaded"][-1]
    out["agent_update_big"] = {"via": ev["via"], "bytes_on_wire": env.standin.target_bytes_sent - sent0}
    a.close()
    return out


def bench_activation_and_rollback(env: Env, reps: int) -> dict[str, Any]:
    times, steps = [], []
    for i in range(reps):
        state = env.enrolled_state(f"act-{i}")
        a = env.agent(state, use_delta=False)
        a.run_once()
        env.install(a, "big/1.0.0")
        ev = {e["event"]: e["t"] for e in a.journal.state.history}
        times.append(ev["activated"] - ev["assigned"])
        steps.append(
            {
                "download": ev["downloaded"] - ev["assigned"],
                "stage": ev["staged"] - ev["downloaded"],
                "health": ev["health_passed"] - ev["staged"],
                "activate": ev["activated"] - ev["health_passed"],
            }
        )
        if i < reps - 1:
            a.close()
    env.install(a, "big/1.1.0")
    rb = []
    for _j in range(20):
        t0 = time.perf_counter()
        m = a.rollback(None, reason="benchmark")
        rb.append(time.perf_counter() - t0)
        assert a.host.model_key == f"big/{m.version}/cpu"
        a.journal.state.failed.clear()
    a.close()
    size = env.published["big/1.0.0"].length
    return {
        "bundle_bytes": size,
        "assignment_to_active_s": {"median": statistics.median(times), "max": max(times), "runs": len(times)},
        "steps_s_median": {k: round(statistics.median(s[k] for s in steps), 4) for k in steps[0]},
        "rollback_s": {"median": statistics.median(rb), "max": max(rb), "runs": len(rb)},
    }


def bench_idle(env: Env, seconds: float) -> dict[str, Any]:
    import psutil

    state = env.enrolled_state("idle")
    a = env.agent(state)
    env.install(a, "digits/1.0.0")
    a.close()
    env.standin.poll_interval_s = 5.0
    log = env.work / "idle.log"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "agent",
            "run",
            "--state",
            str(state),
            "--api-port",
            "0",
            "--no-progress",
        ],
        stderr=open(log, "wb"),  # noqa: SIM115 - lives as long as the process
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            j = json.loads((state / "journal.json").read_text())
            if any(e["event"] == "replayed" for e in j["history"][-3:]):
                break
            time.sleep(0.1)
        time.sleep(3.0)  # model loaded, API up, first heartbeats done
        proc = psutil.Process(p.pid)
        c0, t0 = proc.cpu_times(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = proc.cpu_times(), time.monotonic()
        rss = proc.memory_info().rss / 2**20
        cpu = 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    env.standin.poll_interval_s = 0.2
    return {
        "rss_mb": round(rss, 1),
        "cpu_percent": round(cpu, 3),
        "window_s": seconds,
        "poll_interval_s": 5.0,
        "model": "digits MLP (64-64-10)",
        "local_api": True,
    }


def machine() -> dict[str, Any]:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except StopIteration:
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200, help="kill -9 trials (default 200)")
    ap.add_argument("--reps", type=int, default=3, help="assignment->active repetitions")
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agent.json")
    args = ap.parse_args()

    import logging

    from rich.console import Console
    from rich.table import Table

    logging.basicConfig(level=logging.ERROR)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-agent-bench-"))
    t_start = time.monotonic()
    try:
        console.print("building models, bundles and a signed repository ...")
        env = Env(work)
        res: dict[str, Any] = {
            "machine": machine(),
            "command": " ".join(["benchmarks/agent_bench.py", *sys.argv[1:]]),
        }
        console.print("delta vs full ...")
        res["delta"] = bench_delta(env)
        console.print("assignment -> active, rollback ...")
        res["activation"] = bench_activation_and_rollback(env, args.reps)
        console.print("resume after kill -9 at 50% ...")
        res["resume"] = bench_resume(env)
        console.print("idle RSS / CPU ...")
        res["idle"] = bench_idle(env, args.idle_seconds)
        console.print(f"{args.trials} kill -9 trials ...")
        res["kill"] = bench_kill(env, args.trials, args.seed)
        env.standin.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = round(time.monotonic() - t_start, 1)

    k, r, d, act, idle = res["kill"], res["resume"], res["delta"], res["activation"], res["idle"]
    t = Table(title="edgefleet agent")
    t.add_column("figure")
    t.add_column("measured", justify="right")
    t.add_column("goal")
    t.add_row(
        "kill -9 trials: valid active model after kill", f"{k['valid_after_kill']}/{k['trials']}", "all"
    )
    t.add_row(
        "kill -9 trials: update completed on restart", f"{k['completed_on_restart']}/{k['trials']}", "all"
    )
    t.add_row(
        "resume: bytes after kill at 50% / archive (Range)",
        f"{r['range_resume']['fraction_after_restart']:.3f}",
        "<= 0.55",
    )
    t.add_row(
        "  same, server without Range support",
        f"{r['no_range_server']['fraction_after_restart']:.3f}",
        "(1.0)",
    )
    t.add_row("delta / full, last-layer retrained (~10 MB)", f"{d['big']['ratio']:.4f}", "<= 0.10")
    t.add_row("delta / full, digits MLP retrained (all layers)", f"{d['digits']['ratio']:.4f}", "-")
    t.add_row(
        f"assignment -> active, {act['bundle_bytes'] / 1e6:.1f} MB bundle, loopback (median)",
        f"{act['assignment_to_active_s']['median']:.3f} s",
        "-",
    )
    t.add_row(
        "rollback to a kept version (median / max)",
        f"{act['rollback_s']['median'] * 1000:.1f} / {act['rollback_s']['max'] * 1000:.1f} ms",
        "< 1 s",
    )
    t.add_row("idle RSS, digits model + local API", f"{idle['rss_mb']:.1f} MB", "<= 150 MB")
    t.add_row("idle CPU (poll every 5 s)", f"{idle['cpu_percent']:.2f} %", "-")
    console.print(t)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    console.print(f"wrote {args.out} ({res['seconds']} s)")


if __name__ == "__main__":
    main()
