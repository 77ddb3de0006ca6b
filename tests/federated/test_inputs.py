"""Bad inputs to federated jobs get one clear error and lose nothing; the device training policy."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgefleet.errors import InputError, PayloadTooLargeError
from edgefleet.federated import JobSpec, SoftmaxHead, TrainingPolicy, load_dataset
from edgefleet.power import DeviceState


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "fl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )


def test_dataset_folder_reads_all_files_and_refuses_bad_ones(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    np.savez(good / "a.npz", x=np.ones((3, 4)), y=np.array([0, 1, 2]))
    np.savez(good / "b.npz", x=np.zeros((2, 4)), y=np.array([1, 1]))
    x, y = load_dataset(good)
    assert x.shape == (5, 4) and x.dtype == np.float32 and y.tolist() == [0, 1, 2, 1, 1]

    cases = {
        "pickled": lambda p: np.savez(p, x=np.array([{"a": 1}], dtype=object), y=np.array([0])),
        "no-y": lambda p: np.savez(p, x=np.ones((2, 4))),
        "truncated": lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 10),
        "shapes": lambda p: np.savez(p, x=np.ones((2, 4)), y=np.array([0, 1, 2])),
        "float-labels": lambda p: np.savez(p, x=np.ones((2, 4)), y=np.array([0.5, 1.0])),
        "nan": lambda p: np.savez(p, x=np.full((1, 4), np.nan), y=np.array([0])),
    }
    for name, write in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "d.npz")
        with pytest.raises(InputError) as e:
            load_dataset(folder)
        assert str(folder) in e.value.message, name
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "absent")


def test_an_npz_that_would_inflate_past_the_limit_is_refused_before_it_is_read(tmp_path):
    folder = tmp_path / "bomb"
    folder.mkdir()
    with zipfile.ZipFile(folder / "d.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", b"\0" * (2 << 20))  # 2 MiB of zeros: a few KiB on disk
    with pytest.raises(PayloadTooLargeError):
        load_dataset(folder, max_bytes=1 << 20)


def test_head_training_refuses_features_it_was_not_built_for():
    head = SoftmaxHead.zeros(4, 3)
    with pytest.raises(InputError, match="features"):
        head.train(np.ones((2, 5), np.float32), np.array([0, 1]), epochs=1)
    with pytest.raises(InputError, match="labels"):
        head.train(np.ones((2, 4), np.float32), np.array([0, 7]), epochs=1)
    with pytest.raises(InputError, match="NaN"):
        SoftmaxHead.from_arrays([np.full((4, 3), np.nan), np.zeros(3)])


def test_job_settings_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(InputError, match="min_clients"):
        JobSpec.parse({"job_id": "a", "clients_per_round": 2, "min_clients": 3})
    with pytest.raises(InputError, match="job_id"):
        JobSpec.parse({"job_id": "Bad Name"})
    done = _cli("start", str(tmp_path / "job"), "--job-id", "a", "--base-head", str(tmp_path / "none.npz"))
    assert done.returncode == 1 and "cannot read the head" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "job").exists()
    for command in (["status"], ["export", "--base-model", "m.onnx", "--out", str(tmp_path / "o.onnx")]):
        done = _cli(command[0], str(tmp_path), *command[1:])
        assert done.returncode == 1 and "not a federated job folder" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    (tmp_path / "job.json").write_text("{not json")
    done = _cli("status", str(tmp_path))
    assert done.returncode == 1 and "cannot be read" in done.stderr and "Traceback" not in done.stderr


def test_training_policy_follows_the_device_state():
    policy = TrainingPolicy(min_battery_percent=50, max_cpu_pressure=20)
    assert policy.allows(DeviceState())[0]  # a device that cannot tell is not blocked
    assert policy.allows(DeviceState(power_source="ac", battery_percent=10))[0]
    assert not policy.allows(DeviceState(power_source="battery", battery_percent=10))[0]
    assert policy.allows(DeviceState(power_source="battery", battery_percent=80))[0]
    assert policy.allows(DeviceState(link="metered")) == (False, "metered link")
    assert not policy.allows(DeviceState(cpu_pressure=60))[0]
    assert TrainingPolicy(allow_metered=True).allows(DeviceState(link="metered"))[0]
