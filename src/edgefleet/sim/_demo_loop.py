"""``edgefleet demo --story loop``: the fleet's data comes back and becomes the next gated release.

The story, with real parts end to end: v1.0.0 of the digits classifier runs on real agents in two regions;
the camera of every device in ``eu`` is knocked two pixels to the right (its inputs shift), so accuracy
there falls while ``us`` is unchanged. The agents' samplers (policy set per device group on the server,
inputs kept raw because demo digits carry no personal data) send low-confidence and random answers to
the control plane; the fleet's drift alert for ``eu`` becomes a retraining request; a **scripted
reviewer** (it says so: it knows each request's true label from the traffic generator) labels the samples
through the audited label API; live accuracy per region shows the drop; ``edgefleet retrain run
--request -`` takes the request, refits the model's head on the labelled samples plus the base data,
optimizes both variants with their budgets, publishes v1.0.1 with its lineage and proposes a rollout;
the demo approves it as an operator would, and the gated waves take v1.0.1 to 100 %, restoring accuracy
in ``eu``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from edgefleet.errors import ServerError
from edgefleet.sim._demo import _completed, _Demo
from edgefleet.sim._demo_config import GOOD, REGIONS
from edgefleet.sim._releases import ReleaseBuilder

__all__ = ["LoopDemo", "shift_right"]

RETRAINED = "1.0.1"
SHIFTED = REGIONS[0]  # eu


def shift_right(x: Any, pixels: int = 2) -> Any:
    """An 8x8 digit seen by a camera knocked ``pixels`` to the right (the shifted region's inputs)."""
    return np.roll(np.asarray(x).reshape(-1, 8, 8), pixels, axis=2).reshape(np.shape(x))


def _gate_args(gates: dict[str, Any], device_gates: dict[str, Any]) -> list[str]:
    """``retrain run``'s --gate/--device-gate options for the retrained release's rollout: the demo's
    gates plus the live-accuracy gate, without the gates that trust the old model (see the note)."""
    fleet = {
        **gates,
        "min_labelled": 15,
        "max_accuracy_drop": 0.05,
        "min_accuracy": 0.5,
        "min_confidence_ratio": 0,
        "min_shadow_agreement": 0,
    }
    device = {**device_gates, "min_confidence_ratio": 0}
    out = []
    for k, v in fleet.items():
        out += ["--gate", f"{k}={v:g}"]
    for k, v in device.items():
        out += ["--device-gate", f"{k}={v:g}"]
    return out


class LoopDemo(_Demo):
    """The loop story; reuses the rollout story's server, agents, traffic and rollout following."""

    agent_env = {"EDGEFLEET_AGENT_TELEMETRY_WINDOW_S": "10"}  # drift histograms in every 10 s window

    def run(self) -> dict[str, Any]:
        self._prepare_dir()
        builder = ReleaseBuilder(self.cfg, self.n, self.dir, self.summary, versions=(GOOD,))
        data = builder.build()
        self.releases = builder.releases
        np.savez(self.dir / "data" / "base.npz", x=data.x_train.astype(np.float32), y=data.y_train)
        self.summary["story"] = "loop"
        self.summary["failure_mode"] = (
            f"the inputs of every device in {SHIFTED} shift two pixels to the right; v{GOOD} loses accuracy "
            f"there, the loop brings back labelled samples and retrains v{RETRAINED}"
        )
        self._start_server()
        self._sample_policy()
        self._enroll_and_start_agents()
        self._start_traffic(data)
        self.n.live_start()
        try:
            self._rollout_everyone()
            base = self._phase("before the shift", GOOD)
            self._shift()
            during = self._phase("after the shift", GOOD)
            alert = self._drift_alert()
            labelled = self._review(GOOD, self.cfg.loop_min_labels)
            live = self._live_accuracy(GOOD)
            job = self._retrain(alert)
            self._rollout_retrained(job)
            after = self._phase("on the retrained release", RETRAINED)
            self._review(RETRAINED, self.cfg.loop_min_labels // 3)
            live_after = self._live_accuracy(RETRAINED)
        finally:
            self.n.live_stop()
        self._finish_loop(base, during, after, alert, labelled, live, live_after, job)
        return self.summary

    # --- steps -----------------------------------------------------------------------------------

    def _sample_policy(self) -> None:
        assert self.api is not None
        policy = {
            "rate": 0.05,
            "low_confidence_threshold": 0.9,
            "low_confidence_rate": 0.5,
            "privacy": "raw",
        }
        self.api.set_sample_policy("demo-review", policy, selector="*")
        self.n.step(
            "Sample policy for the whole fleet, set on the server (no new release): 5 % of answers, half of "
            "those under 90 % confidence, inputs kept raw (demo digits carry no personal data; the default "
            "keeps only a hash)"
        )

    def _counts(self) -> dict[str, dict[str, list[float]]]:
        """Per region and version: [answers, correct] so far (from the traffic generator)."""
        assert self.traffic is not None
        out: dict[str, dict[str, list[float]]] = {r: {} for r in REGIONS}
        snap = self.traffic.snapshot()
        for dev in self.devices:
            for v, s in snap.get(dev.name, {}).get("by_version", {}).items():
                c = out[dev.region].setdefault(v, [0, 0.0])
                c[0] += s["requests"]
                c[1] += s["requests"] * s["accuracy"]
        return out

    def _phase(self, what: str, version: str, answers: int = 150) -> dict[str, Any]:
        """Accuracy per region on ``version`` over the next ``answers`` answers of each region."""
        start = self._counts()

        def delta() -> dict[str, list[float]]:
            now = self._counts()
            out = {}
            for r in REGIONS:
                a, b = now[r].get(version, [0, 0.0]), start[r].get(version, [0, 0.0])
                out[r] = [a[0] - b[0], a[1] - b[1]]
            return out

        self._wait(
            lambda: all(n >= answers for n, _ in delta().values()),
            self.cfg.phase_timeout_s,
            f"{answers} answers per region on v{version}",
        )
        got = {r: {"answers": int(n), "accuracy": round(c / n, 4)} for r, (n, c) in delta().items()}
        self.n.note(
            f"{what}: v{version} "
            + ", ".join(f"{r} {g['accuracy']:.1%} of {g['answers']}" for r, g in got.items())
        )
        return {"version": version, **got}

    def _shift(self) -> None:
        assert self.traffic is not None
        names = [d.name for d in self.devices if d.region == SHIFTED]
        self.n.step(f"The cameras in {SHIFTED} are knocked two pixels to the right ({', '.join(names)})")
        self.traffic.truth.clear()  # the reviewer labels what was seen from now on
        self.traffic.set_transform(names, shift_right)
        self.summary["shift_at"] = time.time()

    def _drift_alert(self) -> dict[str, Any]:
        """Evaluate the fleet's alert rules until drift in the shifted region opens an alert and a
        retraining request (the server also evaluates them on its own, every alert_interval_s)."""
        assert self.api is not None
        self.n.step(f"Waiting for the fleet's drift alert on {SHIFTED} and its retraining request")
        found: dict[str, Any] = {}

        def raised() -> bool:
            self.api.evaluate_alerts()  # type: ignore[union-attr]
            for a in self.api.alerts():  # type: ignore[union-attr]
                if a["rule"] == "drift" and (a.get("subject") or {}).get("region") == SHIFTED:
                    found.setdefault("alert", a)
            for r in self.api.retrain_requests(status="pending"):  # type: ignore[union-attr]
                if (r.get("subject") or {}).get("region") == SHIFTED:
                    found["request"] = r
            if "request" in found:
                return True
            time.sleep(2.0)
            return False

        self._wait(raised, self.cfg.phase_timeout_s, f"a drift alert and retraining request for {SHIFTED}")
        alert, request = found.get("alert") or {}, found["request"]
        self.summary["drift_alert_at"] = time.time()
        self.n.note(
            f"alert: {alert.get('message', '-')}; retraining request {request['id']}: {request['reason']}"
        )
        return request

    def _label_known(self, release: str | None, done: dict[str, Any]) -> None:
        """One pass of the scripted reviewer: label every unlabelled sample (of ``release``) whose true
        label the traffic generator knows, one batch per label through the audited label API."""
        assert self.api is not None and self.traffic is not None
        page = self.api.samples(release=release, labelled=False, limit=500)
        by_label: dict[str, list[str]] = {}
        for s in page:
            truth = self.traffic.truth.get(s["request_id"])
            if truth is None:
                continue  # sampled before the shift, or by a request the reviewer did not see
            by_label.setdefault(str(truth), []).append(s["request_id"])
            done["seen"] += 1
            done["low_confidence"] += int(s.get("reason") == "low_confidence")
            key = f"{s.get('release')} {s.get('region') or '-'}"
            done["by_release_region"][key] = done["by_release_region"].get(key, 0) + 1
        for label, ids in by_label.items():
            self.api.label_samples(ids, label)
            done["labelled"] += len(ids)

    def _review(self, version: str, want: int) -> dict[str, Any]:
        """The scripted reviewer labels the sampled answers of ``version`` until ``want`` in the shifted
        region are labelled (the truth comes from the traffic generator, not from a person)."""
        rel = f"{self.cfg.name}@{version}"
        self.n.step(
            f"Scripted reviewer (a stand-in for a person in the dashboard's review queue) labels v{version}'s samples"
        )
        done: dict[str, Any] = {"labelled": 0, "low_confidence": 0, "seen": 0, "by_release_region": {}}

        def step() -> bool:
            self._label_known(rel, done)
            if done["by_release_region"].get(f"{rel} {SHIFTED}", 0) >= want:
                return True
            time.sleep(1.0)
            return False

        self._wait(step, self.cfg.phase_timeout_s, f"{want} labelled samples of v{version} from {SHIFTED}")
        done["low_confidence_share"] = round(done["low_confidence"] / max(done["seen"], 1), 3)
        self.n.note(
            f"labelled {done['labelled']} samples ({done['by_release_region']}); "
            f"{done['low_confidence_share']:.0%} were sampled for low confidence"
        )
        return done

    def _live_accuracy(self, version: str) -> list[dict[str, Any]]:
        assert self.api is not None
        rows = self.api.accuracy(release=f"{self.cfg.name}@{version}", by="region")
        self.n.table(
            f"live accuracy of v{version} from labelled samples",
            ["region", "labelled", "accuracy", "95% CI", "ECE"],
            [
                [
                    r.get("region") or "-",
                    str(r.get("labelled")),
                    f"{r['accuracy']:.1%}" if r.get("accuracy") is not None else "-",
                    "-"
                    if not r.get("accuracy_ci")
                    else f"{r['accuracy_ci'][0]:.1%}-{r['accuracy_ci'][1]:.1%}",
                    f"{r['ece']:.3f}" if r.get("ece") is not None else "-",
                ]
                for r in rows
            ],
        )
        return rows

    def _retrain(self, request: dict[str, Any]) -> dict[str, Any]:
        """``edgefleet retrain run --request -`` with the drift alert's request on stdin, as the alert's
        command hook would run it; then the operator's approval."""
        self.n.step(
            f"Retraining: edgefleet retrain run takes the request, refits v{GOOD}'s head on the labelled "
            f"samples and the base data, optimizes, signs and publishes v{RETRAINED}, proposes its rollout"
        )
        d = self.dir
        conn = ["--server", self.url, "--token-file", str(d / "server" / "admin-token")]
        if self.ca_file:
            conn += ["--ca", str(self.ca_file)]
        argv = [
            sys.executable, "-m", "edgefleet.cli", "retrain", "run", "--request", "-",
            "--repo", str(d / "repository"), "--keys", str(d / "keys" / "publisher"),
            "--parent", GOOD, "--version", RETRAINED, "--base-data", str(d / "data" / "base.npz"),
            "--waves", ",".join(f"{w:g}" for w in self.cfg.waves), "--soak", f"{self.cfg.soak_s:g}s",
            *_gate_args(self._gates(), self._device_gates()),
            "--work", str(d / "retrain"), "--json", *conn,
        ]  # fmt: skip
        env = {
            **self.sup.env,
            "EDGEFLEET_OPTIMIZE_RUNS": str(self.cfg.optimize_runs),
            "EDGEFLEET_OPTIMIZE_MEASURE_MEMORY": "false",
            "EDGEFLEET_OPTIMIZE_THROUGHPUT_BATCHES": "[1]",
            "EDGEFLEET_OPTIMIZE_THROUGHPUT_RUNS": "3",
            "EDGEFLEET_OPTIMIZE_INTERLEAVE_RUNS": "5",
        }
        t0 = time.time()
        with open(d / "logs" / "retrain.log", "w") as log:
            r = subprocess.run(
                argv,
                input=json.dumps(request),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                timeout=self.cfg.phase_timeout_s * 4,
                check=False,
            )
        if r.returncode != 0:
            raise ServerError(
                f"edgefleet retrain run failed (exit {r.returncode})",
                hint=f"see {d / 'logs' / 'retrain.log'}",
            )
        job = json.loads(r.stdout)
        trained = next((s for s in job["steps"] if s["step"] == "trained"), {})
        self.n.note(
            f"job {job['id']}: v{job['parent_version']} -> v{job['version']} in {time.time() - t0:.0f}s; "
            f"held-out accuracy {trained.get('parent_holdout_accuracy', 0):.1%} -> "
            f"{trained.get('new_holdout_accuracy', 0):.1%}; status {job['status']}"
        )
        assert self.api is not None
        approved = self.api.approve_retrain_job(job["id"])
        self.n.note(
            f"approved by the operator (the demo): rollout {approved.get('rollout_id') or job.get('rollout_id')}"
        )
        return {**job, **{k: v for k, v in approved.items() if k in ("rollout_id", "status")}}

    def _rollout_retrained(self, job: dict[str, Any]) -> None:
        rid = job.get("rollout_id")
        if not rid:
            raise ServerError(f"retraining job {job['id']} has no rollout", hint="see logs/retrain.log")
        self.n.step(
            f"Rolling v{RETRAINED} out through gated waves; the live accuracy gate compares each wave's "
            "labelled answers with the control group's, region by region, while the reviewer keeps labelling"
        )
        self.n.note(
            f"v{GOOD} is wrong but confident on the shifted inputs, so agreement with it (shadow runs) and "
            "confidence against it are no evidence here: those gates are off for this rollout"
        )
        t0 = time.time()
        review: dict[str, Any] = {"labelled": 0, "low_confidence": 0, "seen": 0, "by_release_region": {}}
        last = [0.0]

        def done(ro: dict[str, Any], fleet: list[dict[str, Any]]) -> bool:
            if time.monotonic() - last[0] > 2.0:
                self._label_known(None, review)
                last[0] = time.monotonic()
            return _completed(ro) and self._all_on(fleet, RETRAINED, idle=True)

        self._follow(rid, RETRAINED, done)
        self._record(rid, RETRAINED, t0)
        self.summary["all_on_retrained_at"] = time.time()

    def _finish_loop(
        self,
        base: dict[str, Any],
        during: dict[str, Any],
        after: dict[str, Any],
        request: dict[str, Any],
        labelled: dict[str, Any],
        live: list[dict[str, Any]],
        live_after: list[dict[str, Any]],
        job: dict[str, Any],
    ) -> None:
        assert self.api is not None
        self.n.step("What happened")
        stats = self.api.sample_stats()
        hours = (time.time() - self.t0) / 3600
        device_days = len(self.devices) * hours / 24
        lineage = self.api.release_lineage(self.cfg.name, RETRAINED)
        rows = [
            [f"v{GOOD}, before the shift", *(f"{base[r]['accuracy']:.1%}" for r in REGIONS)],
            [f"v{GOOD}, inputs in {SHIFTED} shifted", *(f"{during[r]['accuracy']:.1%}" for r in REGIONS)],
            [f"v{RETRAINED} (retrained), shifted inputs", *(f"{after[r]['accuracy']:.1%}" for r in REGIONS)],
        ]
        self.n.table("accuracy of the answers (traffic with known labels)", ["", *REGIONS], rows)
        alert_to_full = self.summary["all_on_retrained_at"] - self.summary["drift_alert_at"]
        total = int(stats.get("samples") or 0)
        answers = sum(n for region in self._counts().values() for n, _ in region.values())
        self.summary.update(
            {
                "ok": after[SHIFTED]["accuracy"] >= during[SHIFTED]["accuracy"] + 0.10,
                "accuracy": {"before": base, "during": during, "after": after},
                "retraining_request": request,
                "review": labelled,
                "live_accuracy": {GOOD: live, RETRAINED: live_after},
                "samples": stats,
                "samples_per_device_day": round(total / device_days, 1) if device_days else None,
                "sampled_share_of_answers": round(total / answers, 4) if answers else None,
                "retrain_job": job,
                "lineage": lineage,
                "alert_to_full_rollout_s": round(alert_to_full, 1),
                "duration_s": round(time.time() - self.t0, 1),
            }
        )
        self.n.note(
            f"{total} samples stored ({stats.get('bytes', 0) / 1024:.0f} KiB, "
            f"{self.summary['sampled_share_of_answers']:.1%} of {answers} answers), "
            f"{self.summary['samples_per_device_day']} per device-day at this demo's traffic; "
            f"drift alert to v{RETRAINED} on every device: {alert_to_full:.0f}s"
        )

    def explore(self, keep_running: bool) -> list[str]:
        d = self.dir
        server, conn = self._operator_args(keep_running)
        return [
            f"edgefleet samples list {server} {conn}",
            f"edgefleet samples accuracy {server} {conn}",
            f"edgefleet release lineage {self.cfg.name} {RETRAINED} {server} {conn}",
            f"edgefleet retrain status {server} {conn}",
            f"less {d / 'logs' / 'retrain.log'}",
        ]
