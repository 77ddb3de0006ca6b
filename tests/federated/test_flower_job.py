"""Federated jobs with real Flower processes on loopback: a SuperLink (flower-superlink) the Coordinator
manages, and one SuperNode (flower-supernode) per device, each running edgefleet's ClientApp on its own
non-IID slice of scikit-learn's digits. The "devices" are SuperNode processes, not full agents."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import digits_federation, wait_for
from edgefleet.federated import JobSpec, PrivacySettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _rounds(events):
    return [e for e in events if e["event"] == "round"]


def test_cli_job_over_five_devices_improves_the_base_model_and_writes_it_back(tmp_path):
    """`edgefleet fl start` (SuperLink + ServerApp) with an ONNX base model; one device joins through
    `edgefleet fl join` (device state read from an empty sysfs-like tree: nothing blocks it), four more
    as SuperNode processes. Devices hold raw inputs; the ClientApp trains the model's final layer on its
    frozen penultimate features; `--out` writes the federated head back into the model."""
    import onnxruntime as ort

    from edgefleet.examples import DigitsSplit, train_digits_mlp
    from edgefleet.federated import SuperNode
    from edgefleet.federated._process import free_port

    folders, _, (x_eval, y_eval) = digits_federation(5, tmp_path / "data")
    x, y = load_digits(return_X_y=True)
    small = DigitsSplit(x[:80].astype("float32"), y[:80], x[80:90].astype("float32"), y[80:90])
    base_model = tmp_path / "base.onnx"
    with warnings.catch_warnings():  # a deliberately under-trained base: sklearn warns it did not converge
        warnings.simplefilter("ignore")
        train_digits_mlp(base_model, hidden=(32,), max_iter=60, data=small)
    np.savez(tmp_path / "eval.npz", x=x_eval, y=y_eval)
    port = free_port()
    job_dir, out = tmp_path / "job", tmp_path / "federated.onnx"
    cli = [sys.executable, "-m", "edgefleet.cli", "fl"]
    start = subprocess.Popen(
        cli + ["start", str(job_dir), "--job-id", "digits", "--base-model", str(base_model),
               "--eval-data", str(tmp_path / "eval.npz"), "--rounds", "3", "--clients-per-round", "5",
               "--min-clients", "5", "--local-epochs", "2", "--learning-rate", "0.5", "--deadline", "4m",
               "--port", str(port), "--out", str(out), "--timeout", "5m", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    (tmp_path / "sys").mkdir()
    join = subprocess.Popen(
        cli + ["join", f"127.0.0.1:{port}", "--data-dir", str(folders[0]), "--work-dir", str(tmp_path / "n0"),
               "--state-source", f"sysfs:{tmp_path / 'sys'}", "--duration", "5m", "--insecure"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    nodes = [SuperNode(f"127.0.0.1:{port}", f, tmp_path / f"n{i + 1}") for i, f in enumerate(folders[1:])]
    try:
        for node in nodes:
            node.start()
        stdout, stderr = start.communicate(timeout=360)
    finally:
        start.kill()
        os.killpg(join.pid, signal.SIGTERM)
        join.wait(30)
        for node in nodes:
            node.stop()
    assert start.returncode == 0, stderr[-2000:]
    # `fl join` stopped its SuperNode when it was told to stop (SIGTERM): no Flower process of the job is left
    import psutil

    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if f"127.0.0.1:{port}" in " ".join(p.info["cmdline"] or [])
    ]
    assert not left, [p.info["cmdline"] for p in left]
    result = json.loads(stdout)
    rounds = _rounds(result["events"])
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["answered"] == 5 and r["aggregated"] for r in rounds)
    lineage = result["export"]["lineage"]
    assert lineage["participants"] == 5 and lineage["rounds"] == 3 and lineage["epsilon"] is None

    def accuracy(model: Path) -> float:
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        probabilities = sess.run(["probabilities"], {"input": x_eval.astype(np.float32)})[0]
        return float((probabilities.argmax(axis=1) == y_eval).mean())

    base_accuracy, federated_accuracy = accuracy(base_model), accuracy(out)
    assert lineage["accuracy_base"] == pytest.approx(base_accuracy)
    assert lineage["accuracy_final"] == pytest.approx(federated_accuracy, abs=1e-6)
    assert federated_accuracy > base_accuracy + 0.05, (base_accuracy, federated_accuracy)
    # down: the head (W 32x10 + b 10, float32) and the feature model; up: the head only
    head_bytes = (32 * 10 + 10) * 4
    assert all(r["bytes_up"] == 5 * head_bytes for r in rounds)
    assert all(
        r["bytes_down"] == 5 * (head_bytes + (job_dir / "features.onnx").stat().st_size) for r in rounds
    )
    assert json.loads(out.with_suffix(".lineage.json").read_text()) == lineage

    # the federated model as a bundle whose lineage carries the job's (no device ids), for publishing
    from edgefleet.bundle import Bundle

    done = subprocess.run(
        cli + ["export", str(job_dir), "--base-model", str(base_model), "--out", str(tmp_path / "again.onnx"),
               "--bundle", str(tmp_path / "fed.tar"), "--name", "digits", "--version", "1.1.0",
               "--parent-version", "1.0.0", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with Bundle.open(tmp_path / "fed.tar") as bundle:
        m = bundle.manifest
        assert (m.name, m.version, m.lineage.parent_version) == ("digits", "1.1.0", "1.0.0")
        assert m.lineage.tags["federated_job"] == "digits" and m.lineage.tags["participants"] == "5"
        assert m.metrics.accuracy == pytest.approx(federated_accuracy, abs=1e-6)


def test_a_straggler_is_left_out_and_a_dead_device_does_not_stall_the_job(tmp_path, federation):
    folders, base, held_out = digits_federation(6, tmp_path / "data")
    spec = JobSpec(
        job_id="churn",
        rounds=2,
        clients_per_round=6,
        min_clients=1,
        local_epochs=1,
        learning_rate=0.5,
        round_deadline_s=20,
    )
    # device 4 answers ten minutes late (a stand-in for a slow device); device 5 is killed mid-round
    coordinator, nodes = federation(spec, base, held_out, folders, delays={4: 600.0, 5: 600.0})
    wait_for(lambda: any(e.get("event") == "round_started" for e in coordinator.events()), 120)
    nodes[5].kill()
    events = coordinator.wait(timeout_s=300)  # far less than the straggler's 600 s: the job did not wait

    first = _rounds(events)[0]
    assert first["selected"] == 6
    assert first["answered"] + first["late"] + first["dropped"] == 6
    assert first["answered"] <= 4  # neither the straggler nor the dead device got into the aggregate
    assert first["late"] + first["dropped"] >= 2
    assert events[-1]["event"] == "finished"

    # the same counts reach Prometheus
    from prometheus_client import CollectorRegistry, generate_latest

    from edgefleet.federated import JobCollector

    registry = CollectorRegistry()
    registry.register(JobCollector(coordinator.job_dir))
    text = generate_latest(registry).decode()
    last = _rounds(events)[-1]
    for state in ("selected", "answered", "late", "dropped"):
        assert f'edgefleet_fl_round_clients{{job="churn",state="{state}"}} {float(last[state])}' in text
    assert 'edgefleet_fl_rounds_total{job="churn"} 2.0' in text
    assert 'edgefleet_fl_running{job="churn"} 0.0' in text


def test_with_dp_the_accountant_reports_epsilon_and_the_noise_is_really_added(tmp_path, federation):
    folders, base, held_out = digits_federation(5, tmp_path / "data")
    privacy = PrivacySettings(noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5)
    spec = JobSpec(
        job_id="private",
        rounds=2,
        clients_per_round=5,
        min_clients=5,
        local_epochs=1,
        learning_rate=0.5,
        round_deadline_s=240,
        privacy=privacy,
    )
    coordinator, _ = federation(spec, base, held_out, folders)
    rounds = _rounds(coordinator.wait(timeout_s=300))

    assert all(r["aggregated"] for r in rounds)
    epsilons = [r["epsilon"] for r in rounds]
    assert all(math.isfinite(e) and e > 0 for e in epsilons)
    assert epsilons[1] > epsilons[0]  # privacy loss composes over rounds
    for r in rounds:
        # Flower's wrapper adds N(0, (z * C / n)^2) per coordinate: 0.2 here; 650 coordinates pin it to a few %
        assert r["noise_std_expected"] == pytest.approx(0.2)
        assert 0.8 * r["noise_std_expected"] < r["noise_std"] < 1.25 * r["noise_std_expected"]
