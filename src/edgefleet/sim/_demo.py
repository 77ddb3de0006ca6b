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

import contextlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.client import Client
from edgefleet.errors import ConfigError, RolloutError, ServerError
from edgefleet.sim._demo_config import BAD, CLASSES, GOOD, MARKER, NEW, REGIONS, DemoConfig, DemoDevice
from edgefleet.sim._narrator import Narrator
from edgefleet.sim._releases import ReleaseBuilder
from edgefleet.sim._report import Reporting
from edgefleet.sim._supervisor import Supervisor, child_env, lock_held
from edgefleet.sim._traffic import Traffic

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


class _Demo(Reporting):
    """The story: build the releases, start the fleet, roll out three releases; reports via Reporting."""

    agent_env: dict[str, str] = {}  # a story's extra agent settings

    def __init__(self, cfg: DemoConfig, narrator: Narrator) -> None:
        self.cfg = cfg
        self.n = narrator
        self.dir = Path(cfg.dir).resolve()
        self.sup = Supervisor(child_env(), cfg.stop_timeout_s)
        self.api: Client | None = None
        self.url = ""
        self.ca_file: Path | None = None
        self.devices: list[DemoDevice] = []
        self.traffic: Traffic | None = None
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
        builder = ReleaseBuilder(self.cfg, self.n, self.dir, self.summary)
        data = builder.build()
        self.releases = builder.releases
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
                if lock_held(lock):
                    raise ConfigError(
                        f"a demo is still running in {d} (an agent holds {lock})",
                        hint="stop it (Ctrl-C in its terminal) or pass another --dir",
                    )
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        (d / MARKER).write_text("state of `edgefleet demo`; replaced by the next run with this --dir\n")
        for sub in ("models", "data", "bundles", "logs", "devices"):
            (d / sub).mkdir()

    def _make_certs(self) -> list[str]:
        """A private CA and a loopback server certificate in DIR/tls; the server's flags for them."""
        from edgefleet.tls import CertificateAuthority

        tls = self.dir / "tls"
        ca = CertificateAuthority.init(tls, name="edgefleet demo CA")
        ca.issue_server(["127.0.0.1", "localhost"]).write(tls / "server.crt", tls / "server.key")
        self.ca_file = tls / "ca.crt"
        self.n.note(
            f"private CA in {tls} (pin {self.ca_file}); server certificate for 127.0.0.1 and localhost; "
            "devices get certificates from their own keys at enrollment (mutual TLS, no device tokens)"
        )
        # The same CA signs the devices' CSRs and verifies their client certificates.
        return [
            *("--tls-cert", str(tls / "server.crt"), "--tls-key", str(tls / "server.key")),
            *("--ca", str(tls), "--device-auth", "mtls"),
        ]

    def _start_server(self) -> None:
        from edgefleet.server import free_port

        scheme = "HTTPS with device certificates" if self.cfg.tls else "clear-text HTTP on loopback"
        self.n.step(f"Starting the control plane ({scheme}; SQLite, no MQTT: devices poll)")
        tls_args = self._make_certs() if self.cfg.tls else []
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
            *tls_args,
        ]
        env = {
            "EDGEFLEET_SERVER_ENGINE_TICK_S": str(self.cfg.engine_tick_s),
            "EDGEFLEET_SERVER_STALE_AFTER_S": str(max(10.0, 10 * self.cfg.poll_interval_s)),
            "EDGEFLEET_SERVER_OFFLINE_AFTER_S": str(max(30.0, 30 * self.cfg.poll_interval_s)),
        }
        self.sup.spawn("server", argv, self.dir / "logs" / "server.log", env)
        self.url = f"{'https' if self.cfg.tls else 'http'}://127.0.0.1:{port}"
        self._wait(
            lambda: self._healthy(), self.cfg.start_timeout_s, "the control plane to start", {"server"}
        )
        token_file = data / "admin-token"
        self.api = Client(self.url, token=token_file.read_text().strip(), ca_file=self.ca_file)
        self.n.note(f"{self.url} (OpenAPI at {self.url}/docs); admin token in {token_file}")
        for version in self.releases:
            rel = self.api.register_release(self.cfg.name, version)
            classes = ", ".join(f"{v['variant']}->{'/'.join(v['device_classes'])}" for v in rel["variants"])
            self.n.note(f"registered {self.cfg.name} {version}: {classes}")
        status = self.api.repository()
        self.summary["server"] = {
            "url": self.url,
            "admin_token_file": str(token_file),
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "device_auth": "mtls" if self.cfg.tls else "token",
            "repository": status,
        }

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

        from edgefleet.tls import client_context

        verify = client_context(self.ca_file) if self.ca_file else True
        try:
            return httpx.get(self.url + "/healthz", timeout=2, verify=verify).status_code == 200
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
            dev = DemoDevice(name, cls, region, self.dir / "devices" / name, free_port())
            tok = self.api.create_enrollment_token(tags={"region": region}, expires_in_s=3600)
            creds = enroll(
                AgentConfig(state_dir=dev.state_dir),
                token=tok["token"],
                root_json=root,
                server_url=self.url,
                name=name,
                device_class=cls,
                ca=self.ca_file,  # pinned: the agent trusts this CA only, and sends a CSR for its certificate
            )
            dev.device_id = creds.device_id
            self.devices.append(dev)
        env = {
            "EDGEFLEET_AGENT_HISTORY_EVENTS": "500",
            "EDGEFLEET_AGENT_BACKOFF_MAX_S": "5",
            "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "10",
            **self.agent_env,
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
            self.sup.spawn(
                dev.name, argv, self.dir / "logs" / f"{dev.name}.log", {**env, **self._device_env(dev)}
            )
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

    def _device_env(self, dev: DemoDevice) -> dict[str, str]:
        """A story's settings for one agent (its training data, its device state)."""
        return {}

    def _start_traffic(self, data: Any) -> None:
        self.n.step(
            f"Sending digits test samples to every agent's local API ({self.cfg.request_rate:g} requests/s each)"
        )
        self.traffic = Traffic(
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
            "latency_look_s": self.cfg.latency_look_s,
        }

    def _create(self, version: str, waves: list[float], soak: float, gates: dict[str, Any]) -> dict[str, Any]:
        assert self.api is not None
        r = self.api.create_rollout(
            self.cfg.name,
            version,
            selector="*",
            waves=waves,
            soak_s=soak,
            policy="auto",
            on_fail="rollback",
            gates=gates,
            device_gates=self._device_gates(),
        )
        self.n.note(
            f"rollout {r['id']}: {self.cfg.name} {version}, waves {', '.join(f'{w:g}%' for w in waves)}, "
            f"soak {soak:g}s per wave; wave 1 admitted {r['members'].get('admitted', 0)} devices"
        )
        return r

    def _rollout_everyone(self) -> None:
        self.n.step(f"Rolling out v{GOOD} to every device (one wave)")
        gates = {
            "min_devices": self.cfg.min_devices,
            "min_requests": self.cfg.min_requests,
            "latency_look_s": self.cfg.latency_look_s,
        }
        r = self._create(GOOD, [100.0], 0.0, gates)
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

    def _operator_args(self, keep_running: bool) -> tuple[str, str]:
        """``(--server ..., --token-file ... [--ca ...])`` for the explore commands a story prints."""
        d = self.dir
        conn = f"--token-file {d / 'server' / 'admin-token'}" + (
            f" --ca {self.ca_file}" if self.ca_file else ""
        )
        server = f"--server {self.url}" if keep_running else "--server URL (after edgefleet server run)"
        return server, conn

    def _all_on(self, fleet: list[dict[str, Any]], version: str, *, idle: bool = False) -> bool:
        ids = {d.device_id for d in self.devices}
        mine = [d for d in fleet if d["id"] in ids]
        return len(mine) == len(ids) and all(
            (d["active"] or {}).get("version") == version and (not idle or d["state"] == "idle") for d in mine
        )

    def _follow(
        self, rollout_id: str, version: str, done: Callable[[dict[str, Any], list[dict[str, Any]]], bool]
    ) -> None:
        assert self.api is not None
        deadline = time.monotonic() + self.cfg.phase_timeout_s
        last_state = None
        seen_wave = 0
        while True:
            self.sup.check()
            ro = self.api.rollout(rollout_id)
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


def _completed(ro: dict[str, Any]) -> bool:
    """True once a good release's rollout completed; raises if it ended any other way."""
    if ro["state"] in ("rolled_back", "aborted", "halted"):
        raise RolloutError(
            f"rollout {ro['id']} of the good release {ro['version']} ended {ro['state']}: {ro.get('reason')}",
            hint=f"see `edgefleet rollout audit {ro['id']}` and the logs in the demo directory",
        )
    return ro["state"] == "completed"


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
    if cfg.story == "loop":
        from edgefleet.sim._demo_loop import LoopDemo

        demo: _Demo = LoopDemo(cfg, narrator or Narrator())
    elif cfg.story == "power":
        from edgefleet.sim._demo_power import PowerDemo

        demo = PowerDemo(cfg, narrator or Narrator())
    elif cfg.story == "federated":
        from edgefleet.sim._demo_federated import FederatedDemo

        demo = FederatedDemo(cfg, narrator or Narrator())
    else:
        demo = _Demo(cfg, narrator or Narrator())
    try:
        summary = demo.run()
        cmds = demo.explore(cfg.keep_running)
        summary["explore"] = cmds
        if cfg.keep_running:
            summary["dashboard"] = f"{demo.url}/dashboard"
            summary["trust_ca"] = str(demo.ca_file) if demo.ca_file else None
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
