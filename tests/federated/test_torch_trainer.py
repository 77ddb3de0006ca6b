"""Devices with torch fine-tune the head with torch when the job asks (``trainer: torch``); devices without it
train the same head in numpy and give the same update, so one job can mix both."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType

from conftest import digits_federation
from edgefleet.federated import JobSpec, load_dataset

pytestmark = pytest.mark.torch


def test_the_torch_trainer_computes_the_numpy_trainers_update(tmp_path):
    from edgefleet.federated._torch_head import train_torch

    folders, base, _ = digits_federation(2, tmp_path)
    x, y = load_dataset(folders[0])
    for mu in (0.0, 0.5):
        by_torch = train_torch(base, x, y, epochs=3, lr=0.5, prox_mu=mu, seed=7)
        by_numpy = base.train(x, y, epochs=3, lr=0.5, prox_mu=mu, seed=7)
        np.testing.assert_allclose(by_torch.W, by_numpy.W, atol=1e-5)
        np.testing.assert_allclose(by_torch.b, by_numpy.b, atol=1e-5)
        assert by_torch.loss(x, y) < base.loss(x, y) - 0.1
    assert not np.allclose(
        train_torch(base, x, y, epochs=3, lr=0.5, prox_mu=5.0, seed=7).W, by_numpy.W, atol=1e-3
    )  # the proximal term really pulls towards the global head


def _round(folder, head, trainer: str) -> Message:
    from edgefleet.federated import _client_app

    config = {"local-epochs": 2, "learning-rate": 0.5, "server-round": 1, "trainer": trainer}
    msg = Message(
        RecordDict({"arrays": ArrayRecord(head.arrays()), "config": ConfigRecord(config)}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    context = Context(
        run_id=1, node_id=1, node_config={"data-dir": str(folder)}, state=RecordDict(), run_config={}
    )
    return _client_app.train(msg, context)


def test_the_client_app_takes_the_torch_path_when_the_job_asks_and_torch_imports(tmp_path, monkeypatch):
    """The ClientApp's train step in this process, as Flower's ClientApp process calls it (its task identity
    set as Flower's runtime sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    from edgefleet.federated._torch_head import train_torch

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)

    folders, base, _ = digits_federation(2, tmp_path)
    x, y = load_dataset(folders[0])
    expected = train_torch(base, x, y, epochs=2, lr=0.5, seed=1)
    for trainer, torch_ran in (("torch", 1), ("numpy", 0)):
        reply = _round(folders[0], base, trainer)
        assert reply.content["metrics"]["trainer-torch"] == torch_ran
        W, b = reply.content["arrays"].to_numpy_ndarrays()
        np.testing.assert_allclose(W, expected.W, atol=1e-5)
    monkeypatch.setitem(sys.modules, "torch", None)  # a lean device: torch cannot be imported
    reply = _round(folders[0], base, "torch")
    assert reply.content["metrics"]["trainer-torch"] == 0
    np.testing.assert_allclose(reply.content["arrays"].to_numpy_ndarrays()[0], expected.W, atol=1e-5)


def test_the_trainer_setting_is_checked():
    from edgefleet.errors import InputError

    assert JobSpec.parse({"job_id": "j", "trainer": "torch"}).trainer == "torch"
    with pytest.raises(InputError, match="trainer"):
        JobSpec.parse({"job_id": "j", "trainer": "tensorflow"})
