"""End to end on loopback: enroll, update, health gate, activate, watch, commit, roll back."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
from agenttools import assert_valid_active, run_until


def test_enroll_stores_credentials_0600_and_reports_hardware(world):
    creds = world.state / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    obj = json.loads(creds.read_text())
    assert obj["device_token"] in world.standin.devices.values()
    hw = world.standin.enrollments[0]["hardware"]
    # enrollment ends with one report (state "enrolled"): the device confirms it holds its credentials
    assert [h["state"] for h in world.standin.heartbeats] == ["enrolled"]
    assert world.standin.heartbeats[0]["hardware"]["arch"] == hw["arch"]
    a = world.agent()
    a.run_once()
    a.run_once()
    assert world.standin.heartbeats[1]["hardware"]["arch"] == hw["arch"]  # first heartbeat of a run
    assert world.standin.heartbeats[2]["hardware"] is None
    assert hw["cores"] >= 1 and hw["ram_mb"] > 0 and hw["arch"]
    assert "CPUExecutionProvider" in hw["providers"]
    assert (world.state / "root.json").read_bytes() == (
        world.repo_dir / "metadata" / "1.root.json"
    ).read_bytes()


def test_first_install_then_delta_update_commit(world):
    a = world.agent()
    world.install(a, "1.0.0")
    assert_valid_active(world.state, world.sha("1.0.0"))
    served_before = world.standin.target_bytes_sent
    world.install(a, "1.1.0")
    assert_valid_active(world.state, world.sha("1.1.0"))
    # the update came as the registry's signed delta, not the full archive
    delta_bytes = world.standin.target_bytes_sent - served_before
    assert delta_bytes < world.standin.signed_target(world.target("1.1.0"))["length"]
    assert any(".from-1.0.0.delta" in p for p, _ in world.standin.target_requests)
    a.run_once()  # the heartbeat after the commit
    hb = world.standin.last_heartbeat()
    assert hb["active"]["version"] == "1.1.0"
    assert hb["state"] == "idle"
    kinds = [e["event"] for e in world.standin.events()]
    assert "activated" in kinds and "committed" in kinds
    # the model actually serves, through the hot-swapped runtime
    out = a.host.predict(np.zeros((2, 64), np.float32))
    assert out["probabilities"].shape == (2, 10)


def test_rollback_to_kept_version_is_instant_and_needs_no_download(world):
    a = world.agent()
    world.install(a, "1.0.0")
    world.install(a, "1.1.0")
    sent = world.standin.target_bytes_sent
    m = a.rollback()
    assert m.version == "1.0.0"
    assert_valid_active(world.state, world.sha("1.0.0"))
    assert world.standin.target_bytes_sent == sent
    assert a.host.model_key == "digits/1.0.0/cpu"
    # the version it left is not reinstalled while the director still assigns it
    for _ in range(3):
        a.run_once()
    assert_valid_active(world.state, world.sha("1.0.0"))
    assert "rolled back" in a.journal.state.failed[world.sha("1.1.0")]


def test_server_command_rollback(world):
    a = world.agent()
    world.install(a, "1.0.0")
    world.install(a, "1.1.0")
    world.standin.commands.append("rollback:1.0.0")
    a.run_once()
    assert_valid_active(world.state, world.sha("1.0.0"))
    assert "rollback" in a.journal.state.last_error


def test_keeps_last_three_versions(world):
    a = world.agent()
    for v in ["1.0.0", "1.1.0"]:
        world.install(a, v)
    # publish two more good versions and install them
    from edgefleet.bundle import create_bundle

    repo = world.repository()
    x = np.load(a.store.current().bundle_dir / "golden.npz")
    raw = x["raw"]
    model = a.store.current().bundle_dir / "model.onnx"
    for v in ["2.0.0", "2.1.0"]:
        b = create_bundle(
            model,
            world.root / f"{v}.tar",
            name="digits",
            version=v,
            variant="cpu",
            inputs_raw=raw,
            preprocess=[{"op": "scale", "factor": 1 / 16}],
            lineage=None,
        )
        repo.publish(b)
        world.install(a, v)
    kept = [m.version for m in a.store.list()]
    assert len(kept) == 3 and kept[0] == "2.1.0" and "1.0.0" not in kept
    assert_valid_active(world.state, world.sha("2.1.0"))


def test_status_cli_reads_state_dir(world):
    import subprocess
    import sys

    a = world.agent()
    world.install(a, "1.0.0")
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "status", "--state", str(world.state), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["active"]["version"] == "1.0.0" and st["enrolled"]
    assert st["history"]


def test_director_going_back_during_watch_switches_at_once(world):
    from edgefleet.protocol import GateThresholds

    a = world.agent()
    world.install(a, "1.0.0")
    world.standin.assign(world.target("1.1.0"), gates=GateThresholds(watch_window_s=300))
    run_until(a, lambda: a.journal.state.watch is not None)
    sent = world.standin.target_bytes_sent
    world.standin.assign(world.target("1.0.0"))  # the rollout was halted
    a.run_once()
    assert_valid_active(world.state, world.sha("1.0.0"))
    assert a.journal.state.watch is None and world.standin.target_bytes_sent == sent
    assert world.sha("1.1.0") not in a.journal.state.failed  # not refused: it may be assigned again


def test_agent_follows_root_and_targets_key_rotation(world):
    """The operator replaces the root keys and the targets key; the device, pinned to root v1, follows."""
    from tuf.api.metadata import Metadata

    a = world.agent()
    world.install(a, "1.0.0")
    repo = world.repository()
    old_root_ids = set(repo.root().roles["root"].keyids)
    repo.rotate_key("root")
    repo.rotate_key("targets")
    assert repo.root().version == 3 and not old_root_ids & set(repo.root().roles["root"].keyids)
    world.install(a, "1.1.0")  # verified under root v3: new root keys, new targets key
    assert_valid_active(world.state, world.sha("1.1.0"))
    trusted = [Metadata.from_bytes(p.read_bytes()) for p in world.state.rglob("root.json")]
    assert trusted and max(md.signed.version for md in trusted) == 3


def test_bundle_files_are_hashed_once_from_install_to_serving(world, monkeypatch):
    """The store's Bundle.open checks every file; the health gate and the runtime reuse that Bundle. A start
    (a version installed by an earlier run) checks the files again before serving."""
    import edgefleet.bundle._archive as archive
    import edgefleet.bundle._bundle as bundle

    checked: list[str] = []
    real = archive.verify_files

    def counting(root, manifest, **kw):
        checked.append(manifest.key)
        return real(root, manifest, **kw)

    monkeypatch.setattr(archive, "verify_files", counting)
    monkeypatch.setattr(bundle, "verify_files", counting)
    a = world.agent()
    world.install(a, "1.0.0")
    assert checked == ["digits/1.0.0/cpu"]
    assert a.host.predict(np.zeros((1, 64), np.float32))["probabilities"].shape == (1, 10)
    a.close()
    world.agents.remove(a)
    checked.clear()
    b = world.agent()
    assert b.host.model_key == "digits/1.0.0/cpu" and checked == ["digits/1.0.0/cpu"]
