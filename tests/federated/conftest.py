"""A federation on loopback: scikit-learn's digits split non-IID over devices, real Flower processes."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from edgefleet.federated import Coordinator, JobSpec, SoftmaxHead, SuperNode, label_skewed_split


def digits_federation(n_devices: int, root: Path, *, seed: int = 0):
    """(device data folders, base head, held-out (x, y)); the base head saw 60 public samples only."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    public, held_out, private = order[:60], order[60:460], order[460:]
    base = SoftmaxHead.zeros(x.shape[1], 10).train(x[public], y[public], epochs=3, lr=0.1)
    folders = []
    for i, part in enumerate(label_skewed_split(y[private], n_devices, alpha=0.5, seed=seed)):
        folder = root / f"device{i}"
        folder.mkdir(parents=True)
        np.savez(folder / "samples.npz", x=x[private][part], y=y[private][part])
        folders.append(folder)
    return folders, base, (x[held_out], y[held_out])


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture
def federation(tmp_path):
    """Starts a job's SuperLink and SuperNodes; stops every process it started."""
    started: list = []

    def start(spec: JobSpec, base: SoftmaxHead, held_out, folders, *, delays=None):
        coordinator = Coordinator(tmp_path / "job", spec, base, eval_data=held_out)
        started.append(coordinator)
        coordinator.start()
        nodes = []
        for i, folder in enumerate(folders):
            delay = (delays or {}).get(i, 0.0)
            node = SuperNode(coordinator.address, folder, tmp_path / f"node{i}", train_delay_s=delay)
            started.append(node)
            node.start()
            nodes.append(node)
        return coordinator, nodes

    yield start
    for proc in reversed(started):
        with contextlib.suppress(Exception):
            proc.stop()
