"""``edgefleet demo --story federated``: the fleet trains the model on data that never leaves the devices.

The story, with real parts end to end: v1.0.0 of the digits classifier was trained on a small public set
(100 samples) and is rolled out to real agents. Every device holds its own non-IID slice of the rest of the
digits training data in its federated dataset folder (``AgentConfig.fl_data_dir``, the folder an application
fills). The operator runs ``edgefleet fl start --server URL --selector '*'``: Flower's SuperLink starts on the
control-plane host and the job is registered with the control plane, which names it in the selected devices'
signed heartbeat answers. Each agent whose device state allows training (a scripted power trace per device,
a stand-in for batteries this machine lacks; one device sits on a 30 % battery and declines) starts a Flower
SuperNode; rounds train the model's final layer on the devices' frozen features; only head weights come back.
Then ``edgefleet fl export --repo`` writes the federated head into the model, runs it through the optimizer
with v1.0.0's budget for each of its variants (gateway: fp32; sensor: the smallest within 1 point), bundles
each with the job's lineage and signs them into the TUF repository; the release is registered and rolled
out through the gated waves to every device; the answers' accuracy before and after is measured on the
traffic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgefleet.errors import ServerError
from edgefleet.sim._demo import _completed, _Demo
from edgefleet.sim._demo_config import GOOD, SCALE, DemoDevice
from edgefleet.sim._releases import ReleaseBuilder

__all__ = ["FederatedDemo"]

FEDERATED = "1.1.0"
JOB = "digits-fleet"
PUBLIC = 100  # samples the base release was trained on
LOW_BATTERY = 30.0  # the declining device's battery level (TrainingPolicy's default floor is 50 %)


class _SmallBase(ReleaseBuilder):
    """v1.0.0 trained on a small public set only: the data that would make it better sits on the devices."""

    def _train(self) -> tuple[dict[str, Path], Any]:
        from edgefleet.examples import DigitsSplit, digits, train_digits_mlp

        self.n.step(f"Training v{GOOD} of a digits classifier on {PUBLIC} public samples (MLP -> ONNX)")
        data = digits(seed=0)
        public = DigitsSplit(data.x_train[:PUBLIC], data.y_train[:PUBLIC], data.x_test, data.y_test)
        path = self.dir / "models" / f"digits-{GOOD}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acc = train_digits_mlp(path, seed=self.cfg.seed, max_iter=60, data=public)
        what = f"trained on {PUBLIC} public samples"
        self.releases[GOOD] = {"version": GOOD, "trained": what, "test_accuracy": round(acc, 4)}
        self.n.note(f"v{GOOD}: {what}; test accuracy {acc:.1%}")
        np.savez(self.dir / "data" / "calib.npz", input=(data.x_train[:128] / 16.0).astype(np.float32))
        np.savez(
            self.dir / "data" / "eval.npz", input=(data.x_test / 16.0).astype(np.float32), labels=data.y_test
        )
        return {GOOD: path}, data


def _max_drop(variant: dict[str, Any]) -> float:
    report = json.loads(Path(variant["report"]).read_text())
    return float(report["budget"]["max_drop"])


class FederatedDemo(_Demo):
    """The federated story; reuses the rollout story's server, agents, traffic and rollout following."""

    def run(self) -> dict[str, Any]:
        self._prepare_dir()
        builder = _SmallBase(self.cfg, self.n, self.dir, self.summary, versions=(GOOD,))
        data = builder.build()
        self.releases = builder.releases
        self.summary["story"] = "federated"
        self.summary["failure_mode"] = (
            f"v{GOOD} saw {PUBLIC} public samples; the data that would make it better is on the devices and "
            "must not leave them: a federated job trains on it there and only weights come back"
        )
        self._prepare_data(data)
        self._start_server()
        self._enroll_and_start_agents()
        self._start_traffic(data)
        self.n.live_start()
        try:
            self._rollout_everyone()
            before = self._accuracy(GOOD)
            job = self._federated_job()
            self._publish_federated()
            self._rollout_federated()
            after = self._accuracy(FEDERATED)
        finally:
            self.n.live_stop()
        self._finish_federated(before, after, job)
        return self.summary

    # --- data and devices ------------------------------------------------------------------------

    def _declines(self, index: int) -> bool:
        return index == self.cfg.devices - 1  # the last device: on a low battery

    def _prepare_data(self, data: Any) -> None:
        """Non-IID slices of the private training data (model input space) for the devices that will train;
        the server keeps the test set to score rounds; golden inputs for the bundle in raw space."""
        from edgefleet.federated import label_skewed_split

        d = self.dir / "data"
        x = (data.x_train[PUBLIC:] / 16.0).astype(np.float32)
        y = data.y_train[PUBLIC:]
        n = self.cfg.devices
        self._slices = label_skewed_split(y, n, alpha=0.5, seed=self.cfg.seed)
        for i, part in enumerate(self._slices):
            folder = d / "devices" / f"device{i}"
            folder.mkdir(parents=True)
            np.savez(folder / "samples.npz", x=x[part], y=y[part])
        np.savez(d / "fl-eval.npz", x=(data.x_test / 16.0).astype(np.float32), y=data.y_test)
        np.savez(d / "golden.npz", x=data.x_test.astype(np.float32), y=data.y_test)
        (d / "scale.json").write_text(json.dumps(SCALE))
        for name, battery, source in (("mains", 100.0, "ac"), ("low-battery", LOW_BATTERY, "battery")):
            rows = [{"t": 0, "battery_percent": battery, "power_source": source}]
            (d / f"power-{name}.yaml").write_text(yaml.safe_dump(rows))
        self.n.note(
            f"{len(y)} private training samples split over {n} devices by a Dirichlet(0.5) label skew "
            f"(samples per device: {', '.join(str(len(p)) for p in self._slices)}); they never leave them"
        )

    def _device_env(self, dev: DemoDevice) -> dict[str, str]:
        i = self.devices.index(dev)
        power = "low-battery" if self._declines(i) else "mains"
        return {
            "EDGEFLEET_AGENT_FL_DATA_DIR": str(self.dir / "data" / "devices" / f"device{i}"),
            # a scripted power trace: a stand-in for the battery and charger this machine lacks
            "EDGEFLEET_AGENT_DEVICE_STATE": f"scripted:{self.dir / 'data' / f'power-{power}.yaml'}",
        }

    # --- the job ---------------------------------------------------------------------------------

    def _conn(self) -> list[str]:
        conn = ["--server", self.url, "--token-file", str(self.dir / "server" / "admin-token")]
        return conn + (["--ca", str(self.ca_file)] if self.ca_file else [])

    def _federated_job(self) -> dict[str, Any]:
        d = self.dir
        training = self.cfg.devices - 1
        minimum = max(2, training // 2)
        self.n.step(
            f"Federated job {JOB}: edgefleet fl start --server --selector '*' runs Flower's SuperLink here and "
            f"registers the job; agents hear of it in their signed heartbeat answers and start SuperNodes"
        )
        self.n.note(
            f"{self.cfg.fl_rounds} rounds of FedAvg, {training} devices per round (at least {minimum} by the "
            f"60 s deadline), the model's final layer trained on each device's frozen features"
        )
        self.n.note(
            "Flower over TLS: the SuperLink's certificate comes from the control plane's CA (the agents pinned it "
            "at enrollment); each agent sends a per-job SuperNode key over its mutual-TLS channel and fl start "
            "registers it, so only the selected devices' SuperNodes are let in"
            if self.cfg.tls
            else "Flower in clear text (--insecure), like this demo's clear-text control plane: no SuperNode "
            "authentication"
        )
        argv = [
            sys.executable, "-m", "edgefleet.cli", "fl", "start", str(d / "fl-job"), "--job-id", JOB,
            "--base-model", str(d / "models" / f"digits-{GOOD}.onnx"), "--eval-data", str(d / "data" / "fl-eval.npz"),
            "--rounds", str(self.cfg.fl_rounds), "--clients-per-round", str(training),
            "--min-clients", str(minimum), "--local-epochs", "2", "--learning-rate", "0.5", "--deadline", "60s",
            "--timeout", f"{self.cfg.phase_timeout_s * 2:g}s", "--selector", "*", "--json", *self._conn(),
        ]  # fmt: skip
        if self.cfg.tls:  # the SuperLink's certificate from the control plane's CA, the one the agents pinned
            argv += ["--tls-ca-dir", str(d / "tls")]
        t0 = time.time()
        with open(d / "logs" / "fl-start.log", "w") as log:
            r = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=self.sup.env,
                timeout=self.cfg.phase_timeout_s * 2 + 60,
                check=False,
            )
        if r.returncode != 0:
            raise ServerError(
                f"edgefleet fl start failed (exit {r.returncode})", hint=f"see {d / 'logs' / 'fl-start.log'}"
            )
        result = json.loads(r.stdout)
        rounds = [e for e in result["events"] if e["event"] == "round"]
        started = next(e for e in result["events"] if e["event"] == "started")
        finished = result["events"][-1]
        self.n.table(
            f"job {JOB}: rounds (accuracy on the server's held-out set; v{GOOD}'s head: {started['accuracy']:.1%})",
            ["round", "selected", "answered", "late", "dropped", "KiB up", "s", "accuracy"],
            [
                [str(e["round"]), str(e["selected"]), str(e["answered"]), str(e["late"]), str(e["dropped"]),
                 f"{e['bytes_up'] / 1024:.1f}", f"{e['seconds']:.1f}", f"{e['accuracy']:.1%}"]
                for e in rounds
            ],
        )  # fmt: skip
        self.n.note(self._participation())
        assert self.api is not None
        job = self.api.fl_job(JOB)
        self.n.note(
            f"job {job['state']} on the control plane after {time.time() - t0:.0f}s; "
            f"{finished.get('participants')} devices took part; accuracy {started['accuracy']:.1%} -> "
            f"{finished['accuracy']:.1%}"
        )
        return {
            "id": JOB,
            "state": job["state"],
            "seconds": round(time.time() - t0, 1),
            "participants": finished.get("participants"),
            "accuracy_base": started["accuracy"],
            "accuracy_final": finished["accuracy"],
            "rounds": rounds,
        }

    def _journal(self, dev: DemoDevice) -> list[dict[str, Any]]:
        try:
            return list(json.loads((dev.state_dir / "journal.json").read_text()).get("history", []))
        except (OSError, ValueError):
            return []

    def _participation(self) -> str:
        """Who joined and who declined, from the agents' own journals."""
        joined, declined = [], []
        for dev in self.devices:
            events = [e for e in self._journal(dev) if e.get("job") == JOB]
            if any(e["event"] == "fl_joined" for e in events):
                joined.append(dev.name)
            for e in events:
                if e["event"] == "fl_declined":
                    declined.append(f"{dev.name} ({e['reason']})")
                    break
        self.summary["participation"] = {"joined": joined, "declined": declined}
        return f"joined: {', '.join(joined) or '-'}; declined: {', '.join(declined) or '-'}"

    def _publish_federated(self) -> None:
        d = self.dir
        self.n.step(
            f"edgefleet fl export --repo writes the federated head into v{GOOD}'s model, optimizes it with "
            f"v{GOOD}'s budget for each of its variants, bundles them with the job's lineage (no device ids), "
            f"signs v{FEDERATED} into the TUF repository, registers it and starts its gated rollout"
        )
        argv = [
            sys.executable, "-m", "edgefleet.cli", "fl", "export", str(d / "fl-job"),
            "--base-model", str(d / "models" / f"digits-{GOOD}.onnx"), "--out", str(d / "models" / f"digits-{FEDERATED}.onnx"),
            "--repo", str(d / "repository"), "--keys", str(d / "keys" / "publisher"), "--name", self.cfg.name,
            "--version", FEDERATED, "--parent-version", GOOD, "--golden-data", str(d / "data" / "golden.npz"),
            "--work", str(d / "fl-release"), "--json",
            # registered and rolled out through the gated waves by fl export itself (policy auto here:
            # the story has no operator to approve each wave; approval is fl export's default)
            *self._conn(), "--selector", "*", "--waves", ",".join(f"{w:g}" for w in self.cfg.waves),
            "--soak", f"{self.cfg.soak_s:g}s", "--policy", "auto",
            *[a for k, v in self._gates().items() for a in ("--gate", f"{k}={v:g}")],
            *[a for k, v in self._device_gates().items() for a in ("--device-gate", f"{k}={v:g}")],
        ]  # fmt: skip
        env = {  # short measurements (two variants at most per class): the story's time stays about the same
            **self.sup.env,
            "EDGEFLEET_OPTIMIZE_RUNS": str(max(3, self.cfg.optimize_runs // 4)),
            "EDGEFLEET_OPTIMIZE_WARMUP_RUNS": "1",
            "EDGEFLEET_OPTIMIZE_MEASURE_MEMORY": "false",
            "EDGEFLEET_OPTIMIZE_THROUGHPUT_BATCHES": "[1]",
            "EDGEFLEET_OPTIMIZE_THROUGHPUT_RUNS": "2",
            "EDGEFLEET_OPTIMIZE_INTERLEAVE_RUNS": "3",
        }
        with open(d / "logs" / "fl-export.log", "w") as log:
            r = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env, timeout=300, check=False
            )
        if r.returncode != 0:
            raise ServerError(
                f"edgefleet fl export failed (exit {r.returncode})",
                hint=f"see {d / 'logs' / 'fl-export.log'}",
            )
        exported = json.loads(r.stdout)
        release = exported["release"]
        self.n.table(
            f"v{FEDERATED}: the optimizer's choice per v{GOOD} variant, with v{GOOD}'s budget (objective size)",
            ["variant", "max drop", "chosen", "accuracy", "KB", "why the others lost"],
            [
                [v["variant"], f"{_max_drop(v):g}", v["chosen"],
                 "-" if v["accuracy"] is None else f"{v['accuracy']:.2f}", f"{(v['size_bytes'] or 0) / 1024:.1f}",
                 "; ".join(f"{c['variant']}: {c['why']}" for c in v["candidates"] if c["variant"] != v["chosen"]) or "-"]
                for v in release["variants"]
            ],
        )  # fmt: skip
        self._fed_rollout = exported["rollout"]["id"]
        self.releases[FEDERATED] = {
            "version": FEDERATED,
            "trained": f"federated job {JOB}",
            "lineage": exported["lineage"],
            "variants": {
                v["variant"]: {
                    "chosen": v["chosen"],
                    "candidates": v["candidates"],
                    "target": v["target"],
                    "bytes": v["bytes"],
                }
                for v in release["variants"]
            },
        }
        self.summary["federated_release"] = self.releases[FEDERATED]
        lin = exported["lineage"]
        classes = ", ".join(f"{k}->{'/'.join(v)}" for k, v in exported["registered"].items())
        self.n.note(
            f"v{FEDERATED}: lineage job {lin['federated_job']}, {lin['rounds']} rounds, {lin['participants']} "
            f"devices, accuracy {lin['accuracy_base']:.1%} -> {lin['accuracy_final']:.1%}; published "
            f"{', '.join(v['target'] for v in release['variants'])}, registered ({classes}); rollout "
            f"{self._fed_rollout} started"
        )

    def _rollout_federated(self) -> None:
        self.n.step(
            f"Following v{FEDERATED}'s rollout through the gated waves; the ML gates compare each wave with the "
            f"control group on v{GOOD}"
        )
        rollout_id = self._fed_rollout  # started by fl export --server
        t0 = time.time()
        self._follow(
            rollout_id, FEDERATED, lambda ro, f: _completed(ro) and self._all_on(f, FEDERATED, idle=True)
        )
        self._record(rollout_id, FEDERATED, t0)
        self.summary["all_on_federated_at"] = time.time()

    # --- measuring -------------------------------------------------------------------------------

    def _counts(self) -> dict[str, list[float]]:
        """Per version: [answers, correct] so far over the whole fleet (from the traffic generator)."""
        assert self.traffic is not None
        out: dict[str, list[float]] = {}
        for dev in self.traffic.snapshot().values():
            for v, s in dev.get("by_version", {}).items():
                c = out.setdefault(v, [0, 0.0])
                c[0] += s["requests"]
                c[1] += s["requests"] * s["accuracy"]
        return out

    def _accuracy(self, version: str, answers: int = 300) -> dict[str, Any]:
        """Accuracy of the fleet's answers on ``version`` over the next ``answers`` answers."""
        start = self._counts().get(version, [0, 0.0])

        def delta() -> list[float]:
            now = self._counts().get(version, [0, 0.0])
            return [now[0] - start[0], now[1] - start[1]]

        self._wait(
            lambda: delta()[0] >= answers, self.cfg.phase_timeout_s, f"{answers} answers on v{version}"
        )
        n, c = delta()
        got = {"version": version, "answers": int(n), "accuracy": round(c / n, 4)}
        self.n.note(f"the fleet's answers on v{version}: {got['accuracy']:.1%} correct of {got['answers']}")
        return got

    def _finish_federated(self, before: dict[str, Any], after: dict[str, Any], job: dict[str, Any]) -> None:
        self.n.step("What happened")
        rows = [
            [f"v{GOOD} ({PUBLIC} public samples)", f"{job['accuracy_base']:.1%}", f"{before['accuracy']:.1%}"],
            [f"v{FEDERATED} (federated, {len(job['rounds'])} rounds)", f"{job['accuracy_final']:.1%}",
             f"{after['accuracy']:.1%}"],
        ]  # fmt: skip
        self.n.table("accuracy", ["release", "server's held-out set", "fleet's answers (traffic)"], rows)
        self.summary.update(
            {
                "ok": after["accuracy"] > before["accuracy"] and job["accuracy_final"] > job["accuracy_base"],
                "accuracy": {"before": before, "after": after},
                "federated_job": job,
                "duration_s": round(time.time() - self.t0, 1),
            }
        )

    def explore(self, keep_running: bool) -> list[str]:
        d = self.dir
        server, conn = self._operator_args(keep_running)
        return [
            f"edgefleet fl status {d / 'fl-job'}",
            f"edgefleet fl job {JOB} {server} {conn}",
            f"edgefleet rollout list {server} {conn}",
            f"edgefleet agent status --state {self.devices[0].state_dir}" if self.devices else "",
            f"less {d / 'logs' / 'fl-start.log'}",
        ]
