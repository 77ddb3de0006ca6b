"""``edgefleet demo``: the whole flow on one machine, with real parts, in a few minutes.

Trains three releases of a digits classifier (a good v1.0.0, a good retrained v1.1.0 and a v1.2.0
trained on shuffled labels, whose confidence collapses), optimizes them, bundles and publishes them to
a TUF repository, starts the control plane and real agent processes on loopback, drives inference
traffic into every agent's local API, and rolls the three releases out through gated waves. The
control plane's confidence gate (wave vs the control group still on v1.1.0) halts v1.2.0 in its first
wave and rolls that wave back.

Library code does not print: progress goes to a :class:`Narrator` (``RichNarrator`` for the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.errors import AgentError, ConfigError, RolloutError, ServerError

__all__ = ["DemoConfig", "Narrator", "RichNarrator", "run_demo"]

log = logging.getLogger(__name__)

MARKER = ".edgefleet-demo"
GOOD, NEW, BAD = "1.0.0", "1.1.0", "1.2.0"
CLASSES = ("gateway", "sensor")
REGIONS = ("eu", "us")
SCALE = [{"op": "scale", "factor": 1 / 16}]


class DemoConfig(BaseSettings):
    """Settings of ``edgefleet demo`` (environment prefix ``EDGEFLEET_DEMO_``).

    Times are scaled down from production (60 s polls, 10 min soaks) so the story fits in minutes.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_DEMO_", extra="ignore")

    dir: Path = Field(Path("edgefleet-demo"), description="state directory, left behind to explore")
    devices: int = Field(8, ge=2, le=32, description="agent processes to run (two classes, two regions)")
    seed: int = Field(0, description="seed of training, traffic and the bad release's label shuffle")
    keep_running: bool = Field(False, description="keep server, agents and traffic up until Ctrl-C")
    name: str = Field("digits", description="model name of the releases")

    poll_interval_s: float = Field(1.0, gt=0, description="device heartbeat interval the server advises")
    engine_tick_s: float = Field(0.5, gt=0, description="seconds between rollout engine passes")
    request_rate: float = Field(8.0, gt=0, le=200, description="requests/s sent to each agent's local API")
    waves: list[float] = Field(default_factory=lambda: [25.0, 50.0, 100.0], description="wave percentages")
    soak_s: float = Field(4.0, ge=0, description="soak time per wave")
    min_devices: int = Field(2, ge=1, description="devices reporting before a wave is judged")
    min_requests: int = Field(60, ge=0, description="requests a wave (and the control group) must serve")
    max_latency_p95_ratio: float = Field(
        3.0, gt=0, description="server latency gate; generous because a shared 2-core machine is noisy"
    )
    watch_window_s: float = Field(4.0, gt=0, description="device-side watch window before commit")
    device_latency_ratio: float = Field(5.0, gt=0, description="device-side watch latency limit (noise)")

    optimize_runs: int = Field(20, ge=3, description="timed runs per variant in the optimizer")
    start_timeout_s: float = Field(90.0, gt=0, description="longest wait for the server or an agent to start")
    phase_timeout_s: float = Field(150.0, gt=0, description="longest wait for one rollout to finish")
    stop_timeout_s: float = Field(10.0, gt=0, description="wait after SIGTERM before SIGKILL")


# --- narration ------------------------------------------------------------------------------------


class Narrator:
    """Receives the demo's progress; the base class only logs."""

    def step(self, text: str) -> None:
        log.info("%s", text)

    def note(self, text: str) -> None:
        log.info("  %s", text)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        log.info("%s: %d rows", title, len(rows))

    def live_start(self) -> None:
        pass

    def live(self, header: str, columns: list[str], rows: list[list[str]]) -> None:
        pass

    def live_stop(self) -> None:
        pass


class RichNarrator(Narrator):
    """Narration on a rich console: a line per step, a live device table while rollouts run."""

    STYLES = {GOOD: "cyan", NEW: "green", BAD: "bold red"}

    def __init__(self, console: Any, *, live: bool | None = None) -> None:
        self.console = console
        self.use_live = console.is_terminal if live is None else live
        self._live: Any = None
        self.t0 = time.monotonic()

    def _ts(self) -> str:
        return f"[dim]{time.monotonic() - self.t0:6.1f}s[/]"

    def step(self, text: str) -> None:
        self.console.print(f"{self._ts()} [bold]●[/] {text}", highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"         {text}", highlight=False)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self.console.print(self._table(title, columns, rows))

    def _table(self, title: str, columns: list[str], rows: list[list[str]]) -> Any:
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*[self._style(x) for x in r])
        return t

    def _style(self, x: str) -> str:
        s = self.STYLES.get(x)
        return f"[{s}]{x}[/]" if s else x

    def live_start(self) -> None:
        if self.use_live and self._live is None:
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.start()

    def live(self, header: str, columns: list[str], rows: list[list[str]]) -> None:
        if self._live is None:
            return
        from rich.console import Group

        self._live.update(Group(header, self._table("", columns, rows)), refresh=True)

    def live_stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


# --- processes ------------------------------------------------------------------------------------


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class _Supervisor:
    """Starts children in their own process groups and stops every one of them (no orphans)."""

    def __init__(self, env: dict[str, str], stop_timeout_s: float) -> None:
        self.env = env
        self.children: list[_Child] = []
        self.stop_timeout_s = stop_timeout_s

    def spawn(
        self, name: str, argv: list[str], log_path: Path, extra_env: dict[str, str] | None = None
    ) -> _Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env={**self.env, **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own group: Ctrl-C reaches the demo, which stops them in order
            )
        child = _Child(name, proc, log_path)
        self.children.append(child)
        log.info("started %s (pid %d)", name, proc.pid)
        return child

    def check(self, names: set[str] | None = None) -> None:
        for c in self.children:
            if (names is None or c.name in names) and not c.alive():
                kind = ServerError if c.name == "server" else AgentError
                raise kind(
                    f"{c.name} (pid {c.proc.pid}) exited with code {c.proc.returncode}:\n{c.log_tail()}",
                    hint=f"see its log: {c.log_path}",
                )

    def stop(self, children: list[_Child] | None = None) -> None:
        todo = [c for c in (children if children is not None else self.children) if c.proc.returncode is None]
        for c in todo:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for c in todo:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", c.name, self.stop_timeout_s)
        for c in todo:
            # SIGKILL the whole group: also anything the child started and left behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(5)

    def stop_all(self) -> None:
        agents = [c for c in self.children if c.name != "server"]
        self.stop(agents)  # agents first: they keep polling a server that is gone otherwise
        self.stop([c for c in self.children if c.name == "server"])


def _child_env() -> dict[str, str]:
    """The environment for children: ours minus settings that would leave the embedded defaults."""
    drop = ("EDGEFLEET_SERVER_", "EDGEFLEET_AGENT_", "EDGEFLEET_TOKEN", "EDGEFLEET_ENROLL_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --- the operator API -----------------------------------------------------------------------------


class _Api:
    """A small operator client: JSON in and out, error bodies turned into ServerError."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url = url
        self.client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"})

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.client.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ServerError(
                f"control plane at {self.url} unreachable: {e}", hint="see logs/server.log"
            ) from e
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"message": r.text[:300]}
            raise ServerError(
                f"{method} {path} failed ({r.status_code}): {body.get('message')}",
                hint=body.get("hint") or "see logs/server.log",
            )
        return r.json() if r.content else None

    def close(self) -> None:
        self.client.close()


# --- traffic --------------------------------------------------------------------------------------


@dataclass
class _DeviceStats:
    requests: int = 0
    errors: int = 0
    by_version: dict[str, list[float]] = field(default_factory=dict)  # version -> [n, correct, conf_sum]
    recent: deque = field(default_factory=lambda: deque(maxlen=40))  # (correct, confidence)
    last_version: str | None = None
    last_error: str | None = None


class _Traffic:
    """Sends digits test samples to every agent's local API from one asyncio loop in a thread."""

    def __init__(self, ports: dict[str, int], x: Any, y: Any, rate: float, seed: int) -> None:
        self.ports = ports
        self.x = x
        self.y = y
        self.rate = rate
        self.seed = seed
        self.stats = {name: _DeviceStats() for name in ports}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-demo-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=4 * len(self.ports) + 4)
        async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:
            await asyncio.gather(*(self._device(client, i, n) for i, n in enumerate(self.ports)))

    async def _device(self, client: Any, index: int, name: str) -> None:
        import httpx
        import numpy as np

        rng = np.random.default_rng(self.seed * 1000 + index)
        url = f"http://127.0.0.1:{self.ports[name]}/v1/predict"
        period = 1.0 / self.rate
        st = self.stats[name]
        health = f"http://127.0.0.1:{self.ports[name]}/healthz"
        while not self._stop.is_set():  # a client waits for the service to be healthy before using it
            try:
                if (await client.get(health)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
        await asyncio.sleep(float(rng.uniform(0, period)))
        while not self._stop.is_set():
            t0 = time.monotonic()
            i = int(rng.integers(len(self.x)))
            try:
                r = await client.post(url, json={"inputs": [self.x[i].tolist()]})
            except httpx.HTTPError as e:  # the agent is starting or swapping its API: not a model error
                with self.lock:
                    st.last_error = type(e).__name__
                await asyncio.sleep(0.5)
                continue
            with self.lock:
                if r.status_code == 200:
                    body = r.json()
                    version = body["model"]["version"]
                    pred = body["predictions"][0]
                    correct = float(pred.get("class") == int(self.y[i]))
                    conf = float(pred.get("confidence") or 0.0)
                    st.requests += 1
                    v = st.by_version.setdefault(version, [0, 0.0, 0.0])
                    v[0] += 1
                    v[1] += correct
                    v[2] += conf
                    st.recent.append((correct, conf))
                    st.last_version = version
                    st.last_error = None
                elif r.status_code == 404:  # no model active yet
                    st.last_error = "no model yet"
                else:
                    st.errors += 1
                    st.last_error = f"HTTP {r.status_code}"
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            out = {}
            for name, st in self.stats.items():
                rec = list(st.recent)
                out[name] = {
                    "requests": st.requests,
                    "errors": st.errors,
                    "accuracy": (sum(c for c, _ in rec) / len(rec)) if rec else None,
                    "confidence": (sum(c for _, c in rec) / len(rec)) if rec else None,
                    "last_version": st.last_version,
                    "last_error": st.last_error,
                    "by_version": {
                        v: {
                            "requests": int(n),
                            "accuracy": round(c / n, 4),
                            "mean_confidence": round(s / n, 4),
                        }
                        for v, (n, c, s) in st.by_version.items()
                        if n
                    },
                }
            return out


# --- the demo -------------------------------------------------------------------------------------


@dataclass
class _Device:
    name: str
    device_class: str
    region: str
    state_dir: Path
    port: int
    device_id: str = ""


class _Demo:
    def __init__(self, cfg: DemoConfig, narrator: Narrator) -> None:
        self.cfg = cfg
        self.n = narrator
        self.dir = Path(cfg.dir).resolve()
        self.sup = _Supervisor(_child_env(), cfg.stop_timeout_s)
        self.api: _Api | None = None
        self.url = ""
        self.devices: list[_Device] = []
        self.traffic: _Traffic | None = None
        self.t0 = time.time()
        self.summary: dict[str, Any] = {
            "ok": False,
            "dir": str(self.dir),
            "seed": cfg.seed,
            "failure_mode": "v1.2.0 is trained on shuffled labels: accuracy falls to chance and mean "
            "confidence collapses; the server's confidence_ratio gate (wave vs control group) catches it",
            "rollouts": [],
        }
        self.releases: dict[str, dict[str, Any]] = {}

    # --- the story -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._prepare_dir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at a demo's small max_iter
            models, data = self._train()
            self._optimize(models, data)
        self._publish(data)
        self._start_server()
        self._enroll_and_start_agents()
        self._start_traffic(data)
        self.n.live_start()
        try:
            self._rollout_everyone()
            self._rollout_good()
            self._rollout_bad()
        finally:
            self.n.live_stop()
        self._finish()
        return self.summary

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        self.sup.stop_all()
        if self.api is not None:
            self.api.close()
        self.summary["processes"] = {
            "started": [{"name": c.name, "pid": c.proc.pid} for c in self.sup.children],
            "running": [c.name for c in self.sup.children if c.alive()],
        }

    def _prepare_dir(self) -> None:
        d = self.dir
        if d.exists() and not d.is_dir():
            raise ConfigError(
                f"{d} is a file, not a directory", hint="pass --dir with a new or empty directory"
            )
        if d.exists() and any(d.iterdir()):
            if not (d / MARKER).exists():
                raise ConfigError(
                    f"{d} exists and is not an edgefleet demo directory",
                    hint="pass --dir with a new or empty directory (a previous demo's directory is replaced)",
                )
            for lock in d.glob("devices/*/agent.lock"):
                if _locked(lock):
                    raise ConfigError(
                        f"a demo is still running in {d} (an agent holds {lock})",
                        hint="stop it (Ctrl-C in its terminal) or pass another --dir",
                    )
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        (d / MARKER).write_text("state of `edgefleet demo`; replaced by the next run with this --dir\n")
        for sub in ("models", "data", "bundles", "logs", "devices"):
            (d / sub).mkdir()

    def _train(self) -> tuple[dict[str, Path], Any]:
        import numpy as np

        from edgefleet.examples import DigitsSplit, digits, train_digits_mlp

        s = self.cfg.seed
        self.n.step("Training three releases of a digits classifier (scikit-learn MLP -> ONNX)")
        data = digits(seed=0)
        shuffled = DigitsSplit(
            data.x_train, np.random.default_rng(s).permutation(data.y_train), data.x_test, data.y_test
        )
        plan = [
            (GOOD, s, data, "first release"),
            (NEW, s + 1, data, "retrained with another seed"),
            (BAD, s + 2, shuffled, "trained on shuffled labels (a broken data pipeline)"),
        ]
        models = {}
        for version, seed, split, what in plan:
            path = self.dir / "models" / f"digits-{version}.onnx"
            acc = train_digits_mlp(path, seed=seed, max_iter=200, data=split)
            models[version] = path
            self.releases[version] = {"version": version, "trained": what, "test_accuracy": round(acc, 4)}
            self.n.note(f"v{version}: {what}; test accuracy {acc:.1%}")
        np.savez(self.dir / "data" / "calib.npz", input=(data.x_train[:128] / 16.0).astype(np.float32))
        np.savez(
            self.dir / "data" / "eval.npz", input=(data.x_test / 16.0).astype(np.float32), labels=data.y_test
        )
        return models, data

    def _optimize(self, models: dict[str, Path], data: Any) -> None:
        from edgefleet.optimize import OptimizeConfig, optimize

        settings = OptimizeConfig(
            runs=self.cfg.optimize_runs,
            warmup_runs=3,
            throughput_batches=(1, 8),
            throughput_runs=5,
            measure_memory=False,
            interleave_rounds=3,
            interleave_runs=10,
        )
        self.n.step(
            "Optimizing for two device classes: 'gateway' keeps the fp32 baseline, 'sensor' gets the "
            "smallest variant within 1 accuracy point"
        )
        variants = ["fp32", "fp16", "dynamic-int8", "static-int8-pc-minmax"]
        small = None
        self.optimized: dict[str, dict[str, Any]] = {}
        for version, model in models.items():
            out = self.dir / "optimize" / version
            rep = optimize(
                model,
                calib=self.dir / "data" / "calib.npz",
                eval=self.dir / "data" / "eval.npz",
                max_drop=1.0,
                objective="size",
                variants=variants if small is None else ["fp32", small],
                out_dir=out,
                keep_variants=True,
                overwrite=True,
                settings=settings,
            )
            if small is None:
                rows = [
                    [
                        r["variant"],
                        r["outcome"],
                        r["size_kb"],
                        r["p50_ms"],
                        r["quality"],
                        r["drop"],
                        r["short"],
                    ]
                    for r in rep.table_rows()
                ]
                self.n.table(
                    f"v{version} variants (objective: size, max drop 1 point)",
                    ["variant", "outcome", "KB", "p50 ms", "accuracy", "drop", "why"],
                    rows,
                )
                small = rep.chosen or "fp32"
                self.summary["optimize"] = {
                    "variants": [
                        {
                            "variant": r["variant"],
                            "outcome": r["outcome"],
                            "size_kb": r["size_kb"],
                            "p50_ms": r["p50_ms"],
                            "accuracy": r["quality"],
                            "drop": r["drop"],
                        }
                        for r in rep.table_rows()
                    ],
                    "chosen_for_sensor": small,
                    "report": str(out / "report.md"),
                }
            self.optimized[version] = {
                "gateway": (out / rep.variant("fp32").file, rep.variant("fp32")),
                "sensor": (out / rep.variant(small).file, rep.variant(small)),
                "profile": rep.profile.name,
            }
            if small is not None and version != GOOD:
                self.n.note(
                    f"v{version}: fp32 and {small} built and measured (accuracy {rep.variant(small).quality.score:.2f})"
                )

    def _publish(self, data: Any) -> None:
        from edgefleet.bundle import create_bundle
        from edgefleet.protocol import LatencyStats, Lineage, Metrics
        from edgefleet.registry import KeyStore, Repository, init_keys

        self.n.step("Creating keys and a TUF repository; bundling and publishing the three releases")
        keys = self.dir / "keys"
        staging = init_keys(keys / ".all", root_keys=3, root_threshold=2)
        repo_dir = self.dir / "repository"
        Repository.init(repo_dir, staging)
        # Split the keys the way DESIGN.md's trust model places them: root offline, the targets key on
        # the publisher's machine, snapshot and timestamp online on the server.
        places = {
            "root": keys / "offline-root",
            "targets": keys / "publisher",
            "snapshot": self.dir / "server" / "keys",
            "timestamp": self.dir / "server" / "keys",
        }
        for info in staging.key_files():
            dst = places[info.role]
            dst.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(dst, 0o700)
            shutil.copy2(info.path, dst / info.path.name)
            os.chmod(dst / info.path.name, 0o600)
        for dst in set(places.values()):
            shutil.copy2(staging.dir / "keystore.json", dst / "keystore.json")
        shutil.rmtree(staging.dir)
        repo = Repository(repo_dir, KeyStore(keys / "publisher"))
        self.n.note(
            "root keys (3, threshold 2) in keys/offline-root, targets key in keys/publisher, "
            "snapshot+timestamp keys in server/keys"
        )

        dataset_sha = hashlib.sha256(data.x_train.tobytes() + data.y_train.tobytes()).hexdigest()
        rows = []
        parent = None
        for version, opt in self.optimized.items():
            for cls in CLASSES:
                path, res = opt[cls]
                variant = f"{cls}-{res.name}"
                lat = res.bench.latency if res.bench else None
                metrics = Metrics(
                    accuracy=res.quality.accuracy if res.quality else None,
                    latency={
                        opt["profile"]: LatencyStats(
                            mean_ms=lat.mean_ms,
                            p50_ms=lat.p50_ms,
                            p90_ms=lat.p90_ms,
                            p95_ms=lat.p95_ms,
                            p99_ms=lat.p99_ms,
                        )
                    }
                    if lat
                    else {},
                    size_bytes=res.size_bytes,
                )
                lineage = Lineage(
                    parent_version=parent,
                    dataset_sha256=dataset_sha,
                    optimization={"variant": res.name, "objective": "size", "max_drop": 1.0},
                    tags={"device_classes": cls, "trained": self.releases[version]["trained"][:200]},
                )
                archive = create_bundle(
                    path,
                    self.dir / "bundles" / f"{self.cfg.name}-{version}-{variant}.tar",
                    name=self.cfg.name,
                    version=version,
                    variant=variant,
                    inputs_raw=data.x_test[:16],
                    reference_raw=data.x_train,
                    preprocess=SCALE,
                    metrics=metrics,
                    lineage=lineage,
                )
                pub = repo.publish(archive)
                rows.append(
                    [
                        version,
                        variant,
                        f"{(res.size_bytes or 0) / 1024:.1f}",
                        f"{pub.length / 1024:.1f}",
                        f"{pub.delta_length / 1024:.1f}" if pub.delta_length else "-",
                        f"{res.quality.score:.1f}" if res.quality else "-",
                    ]
                )
                self.releases[version].setdefault("variants", {})[cls] = {
                    "variant": variant,
                    "target": pub.target_path,
                    "bytes": pub.length,
                    "sha256": pub.sha256,
                }
            parent = version
        self.n.table(
            "published targets (the server signs snapshot and timestamp when it registers them)",
            ["version", "variant", "model KB", "bundle KB", "delta KB", "accuracy"],
            rows,
        )

    def _start_server(self) -> None:
        from edgefleet.server import free_port

        self.n.step("Starting the control plane (SQLite, no MQTT: devices poll)")
        port = free_port()
        data = self.dir / "server"
        argv = [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "server",
            "run",
            "--data",
            str(data),
            "--repo",
            str(self.dir / "repository"),
            "--keys",
            str(data / "keys"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--poll-interval",
            str(self.cfg.poll_interval_s),
        ]
        env = {
            "EDGEFLEET_SERVER_ENGINE_TICK_S": str(self.cfg.engine_tick_s),
            "EDGEFLEET_SERVER_STALE_AFTER_S": str(max(10.0, 10 * self.cfg.poll_interval_s)),
            "EDGEFLEET_SERVER_OFFLINE_AFTER_S": str(max(30.0, 30 * self.cfg.poll_interval_s)),
        }
        self.sup.spawn("server", argv, self.dir / "logs" / "server.log", env)
        self.url = f"http://127.0.0.1:{port}"
        self._wait(
            lambda: self._healthy(), self.cfg.start_timeout_s, "the control plane to start", {"server"}
        )
        token_file = data / "admin-token"
        self.api = _Api(self.url, token_file.read_text().strip())
        self.n.note(f"{self.url} (OpenAPI at {self.url}/docs); admin token in {token_file}")
        for version in self.releases:
            rel = self.api("POST", "/v1/releases", json={"name": self.cfg.name, "version": version})
            classes = ", ".join(f"{v['variant']}->{'/'.join(v['device_classes'])}" for v in rel["variants"])
            self.n.note(f"registered {self.cfg.name} {version}: {classes}")
        status = self.api("GET", "/v1/repository")
        self.summary["server"] = {"url": self.url, "admin_token_file": str(token_file), "repository": status}

    def _wait(self, ok: Callable[[], bool], timeout: float, what: str, watch: set[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            self.sup.check(watch)
            if time.monotonic() > deadline:
                raise ServerError(
                    f"timed out after {timeout:g}s waiting for {what}",
                    hint=f"see the logs in {self.dir / 'logs'}",
                )
            time.sleep(0.2)

    def _healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _enroll_and_start_agents(self) -> None:
        from edgefleet.agent import AgentConfig, enroll
        from edgefleet.server import free_port

        assert self.api is not None
        n = self.cfg.devices
        self.n.step(f"Enrolling {n} devices (one-time tokens scoped to a region) and starting their agents")
        root = self.dir / "repository" / "metadata" / "root.json"
        counters: dict[tuple[str, str], int] = {}
        for i in range(n):
            cls = CLASSES[i % 2]
            region = REGIONS[(i // 2) % 2]
            counters[(cls, region)] = counters.get((cls, region), 0) + 1
            name = f"{cls}-{region}-{counters[(cls, region)]}"
            dev = _Device(name, cls, region, self.dir / "devices" / name, free_port())
            tok = self.api(
                "POST", "/v1/enrollment-tokens", json={"tags": {"region": region}, "expires_in_s": 3600}
            )
            creds = enroll(
                AgentConfig(state_dir=dev.state_dir),
                token=tok["token"],
                root_json=root,
                server_url=self.url,
                name=name,
                device_class=cls,
            )
            dev.device_id = creds.device_id
            self.devices.append(dev)
        env = {
            "EDGEFLEET_AGENT_HISTORY_EVENTS": "500",
            "EDGEFLEET_AGENT_BACKOFF_MAX_S": "5",
            "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "10",
        }
        for dev in self.devices:
            argv = [
                sys.executable,
                "-m",
                "edgefleet.cli",
                "-v",
                "agent",
                "run",
                "--state",
                str(dev.state_dir),
                "--api-port",
                str(dev.port),
                "--no-progress",
            ]
            self.sup.spawn(dev.name, argv, self.dir / "logs" / f"{dev.name}.log", env)
        ids = {d.device_id for d in self.devices}
        self._wait(
            lambda: ids <= {d["id"] for d in self._fleet() if d["state"] not in ("enrolled", None)},
            self.cfg.start_timeout_s,
            "every agent's first heartbeat",
        )
        self.n.note(", ".join(f"{d.name} ({d.device_id})" for d in self.devices))
        self.summary["devices"] = [
            {
                "name": d.name,
                "id": d.device_id,
                "class": d.device_class,
                "region": d.region,
                "state_dir": str(d.state_dir),
                "api_port": d.port,
            }
            for d in self.devices
        ]

    def _start_traffic(self, data: Any) -> None:
        self.n.step(
            f"Sending digits test samples to every agent's local API ({self.cfg.request_rate:g} requests/s each)"
        )
        self.traffic = _Traffic(
            {d.name: d.port for d in self.devices},
            data.x_test,
            data.y_test,
            self.cfg.request_rate,
            self.cfg.seed,
        )
        self.traffic.start()

    # --- rollouts --------------------------------------------------------------------------------

    def _device_gates(self) -> dict[str, Any]:
        # The device-side watch window stays on for errors and latency; its confidence check is off so
        # that the fleet-level gate (the wave against the control group) is what decides in this demo.
        return {
            "watch_window_s": self.cfg.watch_window_s,
            "max_latency_ratio": self.cfg.device_latency_ratio,
            "min_confidence_ratio": 0.0,
        }

    def _gates(self) -> dict[str, Any]:
        return {
            "min_devices": self.cfg.min_devices,
            "min_requests": self.cfg.min_requests,
            "min_control_requests": self.cfg.min_requests,
            "max_latency_p95_ratio": self.cfg.max_latency_p95_ratio,
        }

    def _create(self, version: str, waves: list[float], soak: float, gates: dict[str, Any]) -> dict[str, Any]:
        assert self.api is not None
        body = {
            "name": self.cfg.name,
            "version": version,
            "selector": "*",
            "waves": waves,
            "soak_s": soak,
            "policy": "auto",
            "on_fail": "rollback",
            "gates": gates,
            "device_gates": self._device_gates(),
        }
        r = self.api("POST", "/v1/rollouts", json=body)
        self.n.note(
            f"rollout {r['id']}: {self.cfg.name} {version}, waves {', '.join(f'{w:g}%' for w in waves)}, "
            f"soak {soak:g}s per wave; wave 1 admitted {r['members'].get('admitted', 0)} devices"
        )
        return r

    def _rollout_everyone(self) -> None:
        self.n.step(f"Rolling out v{GOOD} to every device (one wave)")
        r = self._create(
            GOOD, [100.0], 0.0, {"min_devices": self.cfg.min_devices, "min_requests": self.cfg.min_requests}
        )
        t0 = time.time()
        self._follow(r["id"], GOOD, lambda ro, f: _completed(ro) and self._all_on(f, GOOD))
        self._record(r["id"], GOOD, t0)

    def _rollout_good(self) -> None:
        self.n.step(
            f"Rolling out v{NEW} through waves; ML gates compare each wave with the control group on v{GOOD}"
        )
        r = self._create(NEW, self.cfg.waves, self.cfg.soak_s, self._gates())
        t0 = time.time()
        self._follow(r["id"], NEW, lambda ro, f: _completed(ro) and self._all_on(f, NEW, idle=True))
        self._record(r["id"], NEW, t0)

    def _rollout_bad(self) -> None:
        self.n.step(f"Rolling out v{BAD} (labels shuffled at training: its confidence collapses)")
        self.n.note(
            "device-side watch windows check errors and latency only here, so the fleet-level gate "
            "(the wave against the control group) is what decides"
        )
        r = self._create(BAD, self.cfg.waves, self.cfg.soak_s, self._gates())
        t0 = time.time()
        restored: dict[str, float] = {}

        def done(ro: dict[str, Any], f: list[dict[str, Any]]) -> bool:
            if ro["state"] == "completed":
                raise RolloutError(
                    f"rollout {ro['id']} of the bad release v{BAD} completed: the gates did not stop it",
                    hint=f"see `edgefleet rollout audit {ro['id']}` and logs/server.log",
                )
            if ro["state"] in ("rolled_back", "halted", "aborted") and self._all_on(f, NEW):
                restored.setdefault("at", time.time())
                return True
            return False

        self._follow(r["id"], BAD, done)
        self._record(r["id"], BAD, t0, restored_at=restored.get("at"))

    def _all_on(self, fleet: list[dict[str, Any]], version: str, *, idle: bool = False) -> bool:
        ids = {d.device_id for d in self.devices}
        mine = [d for d in fleet if d["id"] in ids]
        return len(mine) == len(ids) and all(
            (d["active"] or {}).get("version") == version and (not idle or d["state"] == "idle") for d in mine
        )

    def _fleet(self) -> list[dict[str, Any]]:
        assert self.api is not None
        return self.api("GET", "/v1/devices", params={"limit": 1000})["devices"]

    def _follow(
        self, rollout_id: str, version: str, done: Callable[[dict[str, Any], list[dict[str, Any]]], bool]
    ) -> None:
        assert self.api is not None
        deadline = time.monotonic() + self.cfg.phase_timeout_s
        last_state = None
        seen_wave = 0
        while True:
            self.sup.check()
            ro = self.api("GET", f"/v1/rollouts/{rollout_id}")
            fleet = self._fleet()
            self._render(ro, fleet)
            if ro["wave"] != seen_wave or ro["state"] != last_state:
                if ro["wave"] != seen_wave and ro["state"] == "running":
                    self.n.note(
                        f"wave {ro['wave']}/{len(ro['waves'])} ({ro['wave_percent']:g}%) open: "
                        f"{ro['members'].get('admitted', 0)} devices admitted"
                    )
                if ro["state"] != last_state and ro["state"] != "running":
                    self.n.note(f"rollout {ro['state']}" + (f": {ro['reason']}" if ro.get("reason") else ""))
                seen_wave, last_state = ro["wave"], ro["state"]
            if done(ro, fleet):
                return
            if time.monotonic() > deadline:
                ev = ro.get("evaluation") or {}
                raise RolloutError(
                    f"rollout {rollout_id} of v{version} did not finish within {self.cfg.phase_timeout_s:g}s "
                    f"(state {ro['state']}, wave {ro['wave']}; waiting for: {'; '.join(ev.get('waiting_for') or []) or '-'})",
                    hint=f"look at {self.dir / 'logs'} and `edgefleet rollout show {rollout_id}`",
                )
            time.sleep(0.5)

    def _render(self, ro: dict[str, Any], fleet: list[dict[str, Any]]) -> None:
        ev = ro.get("evaluation") or {}
        gates = []
        for g in ev.get("gates") or []:
            if g["status"] in ("pass", "fail"):
                v = f" {g['value']:.3g}" if isinstance(g.get("value"), (int, float)) else ""
                colour = "green" if g["status"] == "pass" else "red"
                gates.append(f"[{colour}]{g['name']}{v}[/]")
        c = ev.get("counts") or {}
        header = (
            f"[bold]{ro['name']} {ro['version']}[/] {ro['id']}: [bold]{ro['state']}[/] wave {ro['wave']}/"
            f"{len(ro['waves'])} ({ro['wave_percent']:g}%) - admitted {c.get('admitted', 0)}, installed "
            f"{c.get('installed', 0)}, reporting {c.get('reporting', 0)}; control group {ev.get('control_devices', 0)}"
            f" devices; soak {ev.get('soak_elapsed_s', 0):.0f}/{ev.get('soak_s', 0):.0f}s\n"
            f"gates: {', '.join(gates) or 'waiting for data'}"
        )
        by_id = {d["id"]: d for d in fleet}
        members = {m["device_id"]: m for m in ro.get("devices") or []}
        traffic = self.traffic.snapshot() if self.traffic else {}
        rows = []
        for dev in self.devices:
            d = by_id.get(dev.device_id) or {}
            t = traffic.get(dev.name, {})
            acc, conf = t.get("accuracy"), t.get("confidence")
            m = members.get(dev.device_id) or {}
            wave = {"admitted": f"wave {m.get('wave')}", "rolled_back": "rolled back"}.get(
                m.get("status"), "control"
            )
            rows.append(
                [
                    dev.name,
                    dev.device_class,
                    dev.region,
                    wave,
                    (d.get("active") or {}).get("version") or "-",
                    d.get("state") or "-",
                    str(t.get("requests", 0)),
                    f"{acc:.0%}" if acc is not None else "-",
                    f"{conf:.2f}" if conf is not None else "-",
                ]
            )
        self.n.live(
            header,
            ["device", "class", "region", "rollout", "version", "agent", "served", "accuracy", "confidence"],
            rows,
        )

    def _record(self, rollout_id: str, version: str, t0: float, restored_at: float | None = None) -> None:
        assert self.api is not None
        ro = self.api("GET", f"/v1/rollouts/{rollout_id}")
        audit = self.api("GET", f"/v1/rollouts/{rollout_id}/audit")
        waves = []
        failed: dict[str, Any] | None = None
        for a in audit:
            det = a["details"] or {}
            if a["action"] == "rollout.wave_passed":
                waves.append(_wave_entry(det, "passed", a["at"], t0))
            elif a["action"] == "rollout.gate_failed":
                failed = _wave_entry(det, "failed", a["at"], t0)
                failed["reason"] = det.get("reason")
                waves.append(failed)
        entry: dict[str, Any] = {
            "id": rollout_id,
            "version": version,
            "state": ro["state"],
            "waves": ro["waves"],
            "wave_reached": ro["wave"],
            "soak_s": ro["soak_s"],
            "reason": ro.get("reason"),
            "wave_results": waves,
            "failed_gates": failed["failed_gates"] if failed else [],
            "duration_s": round(time.time() - t0, 1),
        }
        if failed is not None:
            entry["gate_failed_at"] = failed["at_s"]
        if restored_at is not None and failed is not None:
            gate_t = t0 + failed["at_s"]
            entry["all_back_seen_by_server_s"] = round(restored_at - gate_t, 2)
        self.summary["rollouts"].append(entry)
        if failed:
            self.n.note(f"[red]gate failed[/] in wave {failed['wave']}: {failed.get('reason')}")
        else:
            self.n.note(
                f"v{version} reached {ro['wave_percent']:g}% of the fleet in {entry['duration_s']:.0f}s "
                f"({len(waves)} wave{'s' if len(waves) != 1 else ''} passed)"
            )

    # --- the end ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        from edgefleet.agent import agent_status

        self.n.step("What happened")
        fleet = {d["id"]: d for d in self._fleet()}
        traffic = self.traffic.snapshot() if self.traffic else {}
        bad = next((r for r in self.summary["rollouts"] if r["version"] == BAD), None)
        ever_bad, rolled_back_t = [], []
        devices = []
        for dev in self.devices:
            st = agent_status(dev.state_dir)
            hist = st["history"]
            ran = sorted(
                {e.get("version") for e in hist if e.get("event") == "activated" and e.get("version")}
            )
            served = sorted(traffic.get(dev.name, {}).get("by_version", {}))
            if BAD in ran or BAD in served:
                ever_bad.append(dev.name)
                rolled_back_t += [
                    e["t"] for e in hist if e.get("event") == "rolled_back" and e.get("to") == NEW
                ]
            d = fleet.get(dev.device_id) or {}
            devices.append(
                {
                    "name": dev.name,
                    "id": dev.device_id,
                    "class": dev.device_class,
                    "region": dev.region,
                    "state_dir": str(dev.state_dir),
                    "final_version": (d.get("active") or {}).get("version"),
                    "variant": (d.get("active") or {}).get("variant"),
                    "versions_activated": ran,
                    "served": traffic.get(dev.name, {}).get("by_version", {}),
                }
            )
        self.summary["devices"] = devices
        self.summary["final_versions"] = {d["name"]: d["final_version"] for d in devices}
        if bad is not None:
            wave1 = next((w for w in bad["wave_results"] if w["wave"] == 1), None)
            gate_abs = None
            audit = self.api("GET", f"/v1/rollouts/{bad['id']}/audit") if self.api else []
            for a in audit:
                if a["action"] == "rollout.gate_failed":
                    gate_abs = a["at"]
            bad["devices_ever_ran"] = ever_bad
            bad["first_wave_devices"] = wave1["devices"] if wave1 else None
            if gate_abs is not None and rolled_back_t:
                bad["time_to_roll_back_s"] = round(max(rolled_back_t) - gate_abs, 2)
            bad["devices_on_bad_at_end"] = sum(1 for d in devices if d["final_version"] == BAD)
        by_rollout = {r["version"]: r for r in self.summary["rollouts"]}
        good = by_rollout.get(NEW, {})
        self.summary["ok"] = bool(
            by_rollout.get(GOOD, {}).get("state") == "completed"
            and good.get("state") == "completed"
            and bad is not None
            and bad["state"] == "rolled_back"
            and bad["failed_gates"]
            and bad.get("devices_on_bad_at_end") == 0
            and all(v == NEW for v in self.summary["final_versions"].values())
        )
        self.summary["duration_s"] = round(time.time() - self.t0, 1)
        self._final_tables(devices)

    def _final_tables(self, devices: list[dict[str, Any]]) -> None:
        rows = []
        for r in self.summary["rollouts"]:
            waves = []
            for w in r["wave_results"]:
                figs = _gate_figures(w["gates"])
                waves.append(
                    f"w{w['wave']} {w['percent']:g}% {w['result']} ({w['devices']} dev){': ' + figs if figs else ''}"
                )
            extra = ""
            if r["version"] == BAD:
                extra = (
                    f"ran it: {len(r.get('devices_ever_ran', []))} device(s) "
                    f"({', '.join(r.get('devices_ever_ran', [])) or '-'}); "
                    f"rolled back in {_fmt(r.get('time_to_roll_back_s'))}s after the gate failed"
                )
            rows.append(
                [r["version"], r["id"], r["state"], "\n".join(waves) or "-", f"{r['duration_s']:.0f}s", extra]
            )
        self.n.table(
            "rollouts",
            [
                "release",
                "rollout",
                "final state",
                "waves and the gate figures that decided",
                "took",
                "bad release",
            ],
            rows,
        )
        self.n.table(
            "devices",
            ["device", "class", "region", "final", "variant", "activated", "served (accuracy)"],
            [
                [
                    d["name"],
                    d["class"],
                    d["region"],
                    d["final_version"] or "-",
                    d["variant"] or "-",
                    ", ".join(d["versions_activated"]),
                    ", ".join(
                        f"{v}: {s['requests']} ({s['accuracy']:.0%})" for v, s in sorted(d["served"].items())
                    ),
                ]
                for d in devices
            ],
        )

    def explore(self, keep_running: bool) -> list[str]:
        d = self.dir
        tok = f"--token-file {d / 'server' / 'admin-token'}"
        first = self.devices[0].name if self.devices else "DEVICE"
        bad = next((r["id"] for r in self.summary["rollouts"] if r["version"] == BAD), "ROLLOUT")
        server = f"--server {self.url}" if keep_running else "--server http://127.0.0.1:8700"
        cmds = []
        if not keep_running:
            cmds.append(
                f"edgefleet server run --data {d / 'server'} --repo {d / 'repository'} "
                f"--keys {d / 'server' / 'keys'} --port 8700 &"
            )
        cmds += [
            f"edgefleet rollout list {server} {tok}",
            f"edgefleet rollout audit {bad} {server} {tok}",
            f"edgefleet devices list {server} {tok}",
            f"edgefleet agent status --state {d / 'devices' / first}",
            f"edgefleet registry list --repo {d / 'repository'}",
            f"less {d / 'optimize' / GOOD / 'report.md'}",
        ]
        return cmds


def _locked(path: Path) -> bool:
    """Does a running process hold the agent's lock file (flock)?"""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _completed(ro: dict[str, Any]) -> bool:
    """True once a good release's rollout completed; raises if it ended any other way."""
    if ro["state"] in ("rolled_back", "aborted", "halted"):
        raise RolloutError(
            f"rollout {ro['id']} of the good release {ro['version']} ended {ro['state']}: {ro.get('reason')}",
            hint=f"see `edgefleet rollout audit {ro['id']}` and the logs in the demo directory",
        )
    return ro["state"] == "completed"


def _wave_entry(det: dict[str, Any], result: str, at: float, t0: float) -> dict[str, Any]:
    ev = det.get("evaluation") or {}
    counts = ev.get("counts") or {}
    return {
        "wave": det.get("wave"),
        "percent": ev.get("percent", det.get("percent")),
        "result": result,
        "at_s": round(at - t0, 2),
        "devices": counts.get("admitted"),
        "reporting": counts.get("reporting"),
        "reference": ev.get("reference_source"),
        "control_devices": ev.get("control_devices"),
        "failed_gates": ev.get("failed_gates") or [],
        "gates": {
            g["name"]: {k: g.get(k) for k in ("status", "value", "threshold", "reference")}
            for g in ev.get("gates") or []
        },
    }


def _gate_figures(gates: dict[str, dict[str, Any]]) -> str:
    """The judged ML gates of one wave in words: value, limit and the control group's figure."""
    out = []
    g = gates.get("confidence_ratio")
    if g and g["status"] in ("pass", "fail"):
        ref = f"; control mean confidence {g['reference']:.2f}" if g.get("reference") is not None else ""
        out.append(f"confidence ratio {g['value']:.2f} (min {g['threshold']:g}{ref})")
    g = gates.get("latency_p95_ratio")
    if g and g["status"] in ("pass", "fail"):
        ref = f"; control p95 {g['reference']:.2f} ms" if g.get("reference") is not None else ""
        out.append(f"p95 latency ratio {g['value']:.2f} (max {g['threshold']:g}{ref})")
    g = gates.get("error_rate")
    if g and g["status"] in ("pass", "fail"):
        out.append(f"error rate {g['value']:.1%} (max {g['threshold']:.1%})")
    g = gates.get("golden_pass_rate")
    if g and g["status"] in ("pass", "fail"):
        out.append(f"golden set passed on {g['value']:.0%}")
    return ", ".join(out)


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def run_demo(
    config: DemoConfig | None = None,
    *,
    narrator: Narrator | None = None,
    on_ready: Callable[[dict[str, Any], list[str]], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the whole demo and return its summary (also written to ``DIR/summary.json``).

    Every process the demo starts runs in its own process group and is stopped before this returns,
    on success, failure or KeyboardInterrupt. With ``keep_running`` the server, agents and traffic stay
    up after the story (``on_ready`` receives the summary and commands to explore) until Ctrl-C.

    Raises:
        ConfigError: ``dir`` exists and is not a previous demo's directory.
        ServerError, AgentError: a process failed to start or died (its log tail is in the message).
        RolloutError: a rollout did not reach its expected end in time.
    """
    cfg = (config or DemoConfig()).model_copy(update=overrides)
    demo = _Demo(cfg, narrator or Narrator())
    try:
        summary = demo.run()
        cmds = demo.explore(cfg.keep_running)
        summary["explore"] = cmds
        if cfg.keep_running:
            summary["dashboard"] = f"{demo.url}/dashboard"
        (demo.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if on_ready is not None:
            on_ready(summary, cmds)
        if cfg.keep_running:
            while True:  # until Ctrl-C (KeyboardInterrupt) or a process dies
                demo.sup.check()
                time.sleep(1.0)
    finally:
        demo.close()
        if (demo.dir / "summary.json").exists():
            with contextlib.suppress(OSError, ValueError):
                s = json.loads((demo.dir / "summary.json").read_text())
                s["processes"] = demo.summary.get("processes")
                (demo.dir / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    return summary
