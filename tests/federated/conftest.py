"""A federation on loopback: scikit-learn's digits split non-IID over devices, real Flower processes."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from edgefleet.federated import Coordinator, JobSpec, SoftmaxHead, SuperNode
from edgefleet.federated._data import digits_federation as example_federation


def digits_federation(n_devices: int, root: Path, *, seed: int = 0):
    """(device data folders, base head, held-out (x, y)): see edgefleet.federated._data.digits_federation."""
    folders, base, held_out, _ = example_federation(n_devices, root, seed=seed)
    return folders, base, held_out


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
