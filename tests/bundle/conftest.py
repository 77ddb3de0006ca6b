"""Fixtures for bundle tests: a real digits bundle, and helpers to build tampered or hostile archives."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from bundletools import CREATED, SCALE


@pytest.fixture(scope="session")
def golden_x(digits_split) -> np.ndarray:
    return digits_split.x_test[:16]


@pytest.fixture(scope="session")
def bundle_kwargs(golden_x, digits_split) -> dict:
    return dict(
        name="digits",
        version="1.0.0",
        variant="cpu",
        inputs_raw=golden_x,
        preprocess=SCALE,
        reference_raw=digits_split.x_train[:300],
        created=CREATED,
    )


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory, digits_mlp, bundle_kwargs) -> Path:
    """A real bundle of the digits MLP (session-scoped: tests must copy it before changing it)."""
    from edgefleet.bundle import create_bundle

    out = tmp_path_factory.mktemp("bundles") / "digits-1.0.0-cpu.tar"
    return create_bundle(digits_mlp, out, **bundle_kwargs)


@pytest.fixture(scope="session")
def digits_bundle_v2(tmp_path_factory, digits_mlp_v2, bundle_kwargs) -> Path:
    from edgefleet.bundle import create_bundle

    out = tmp_path_factory.mktemp("bundles") / "digits-1.1.0-cpu.tar"
    return create_bundle(digits_mlp_v2, out, **(bundle_kwargs | {"version": "1.1.0"}))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Route tempfile into tmp_path so tests can prove no temporary directory is left behind."""
    t = tmp_path / "systmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t
