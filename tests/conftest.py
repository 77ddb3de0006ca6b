"""Fixtures shared by every test folder: small real models trained here, never downloaded."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

# A skip that hides an in-tree import failure fails the run (see tests/_skipguard.py).
from _skipguard import (  # noqa: F401
    pytest_configure,
    pytest_make_collect_report,
    pytest_runtest_makereport,
    pytest_unconfigure,
)


@pytest.fixture(scope="session")
def digits_split():
    from edgefleet.examples import digits

    return digits(seed=0)


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory, digits_split) -> Path:
    """A real scikit-learn MLP trained on digits, exported to ONNX (input 'input' [N,64] in [0,1])."""
    path = tmp_path_factory.mktemp("models") / "digits_mlp.onnx"
    from edgefleet.examples import train_digits_mlp

    train_digits_mlp(path, data=digits_split)
    return path


@pytest.fixture(scope="session")
def digits_mlp_v2(tmp_path_factory, digits_split) -> Path:
    """The same architecture retrained with another seed: a new version of the same model."""
    path = tmp_path_factory.mktemp("models") / "digits_mlp_v2.onnx"
    from edgefleet.examples import train_digits_mlp

    train_digits_mlp(path, data=digits_split, seed=1)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the local PostgreSQL test database; skips with the reason when none is running."""
    if not _port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (start it to run this test)")
    return "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    """URL of the local MQTT broker; skips with the reason when none is running."""
    if not _port_open("127.0.0.1", 1883):
        pytest.skip("no MQTT broker on 127.0.0.1:1883 (start mosquitto to run this test)")
    return "mqtt://127.0.0.1:1883"
