"""A published parent release (digits MLP, two variants) and labelled snapshots of shifted digits."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

SCALE = [{"op": "scale", "factor": 1 / 16}]


def shift(x: np.ndarray) -> np.ndarray:
    """Digits seen by a camera knocked two pixels to the right (the region's new data)."""
    return np.roll(np.asarray(x).reshape(-1, 8, 8), 2, axis=2).reshape(len(x), 64)


def fast_settings():
    from edgefleet.optimize import OptimizeConfig

    return OptimizeConfig(
        runs=5,
        warmup_runs=1,
        throughput_batches=(1,),
        throughput_runs=2,
        measure_memory=False,
        interleave_rounds=3,
        interleave_runs=3,
    )


def publish_parent(root: Path, model: Path, data) -> dict[str, Path]:
    """Keys, a TUF repository and ``digits 1.0.0`` published as gateway (fp32) and sensor (dynamic-int8)."""
    from edgefleet.bundle import create_bundle
    from edgefleet.protocol import Budgets, Lineage
    from edgefleet.registry import KeyStore, Repository, init_keys

    keys = init_keys(root / "keys")
    Repository.init(root / "repository", keys)
    repo = Repository(root / "repository", KeyStore(root / "keys"))
    for variant, opt in (("gateway", "fp32"), ("sensor", "dynamic-int8")):
        archive = create_bundle(
            model,
            root / "bundles" / f"digits-1.0.0-{variant}.tar",
            name="digits",
            version="1.0.0",
            variant=variant,
            inputs_raw=data.x_test[:8],
            reference_raw=data.x_train,
            preprocess=SCALE,
            budgets=Budgets(latency_p95_ms=50.0),
            lineage=Lineage(
                dataset_sha256="ab" * 32,
                optimization={"variant": opt, "objective": "size", "max_drop": 2.0},
                tags={"device_classes": variant},
            ),
        )
        repo.publish(archive)
    return {"repo": root / "repository", "keys": root / "keys"}


@pytest.fixture(scope="session")
def parent_release(tmp_path_factory, digits_mlp, digits_split) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return publish_parent(root, digits_mlp, digits_split)


@pytest.fixture
def repo_copy(parent_release, tmp_path) -> dict[str, Path]:
    """A private copy of the parent's repository and keys (jobs publish into it)."""
    out = {}
    for k, p in parent_release.items():
        out[k] = tmp_path / k
        shutil.copytree(p, out[k])
        os.chmod(out[k], 0o700)
    return out


@pytest.fixture(scope="session")
def shifted_snapshot(tmp_path_factory, digits_split) -> Path:
    """300 labelled samples of shifted digits, as a snapshot folder."""
    from edgefleet.retrain import write_snapshot

    d = digits_split
    out = tmp_path_factory.mktemp("snap") / "snapshot"
    write_snapshot(
        out,
        shift(d.x_test[:300]).astype(np.float32),
        d.y_test[:300].astype(np.int64),
        sample_ids=[f"s{i}" for i in range(300)],
        source={"region": "north"},
    )
    return out


@pytest.fixture(scope="session")
def base_data(tmp_path_factory, digits_split) -> Path:
    p = tmp_path_factory.mktemp("base") / "train.npz"
    np.savez(p, x=digits_split.x_train.astype(np.float32), y=digits_split.y_train.astype(np.int64))
    return p
