"""The Flower ClientApp a device runs for a job (under its SuperNode).

It trains the softmax head on what the device holds — the dataset folder named by the SuperNode's
``data-dir`` node config — and replies with the head's weights and the number of samples. Nothing else
leaves the device. ``dp_app`` is the same app behind Flower's ``fixedclipping_mod``, which clips the
update before it is sent (client-side clipping for the server's DP wrapper).

``train-delay-s`` in the node config is a stand-in for a slow device (a phone on a weak CPU or link): the
reply is held back that long. Tests and benchmarks use it to make stragglers; real devices leave it unset.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from edgefleet.federated._data import load_dataset
from edgefleet.federated._head import SoftmaxHead
from edgefleet.federated._model_head import FeatureExtractor
from edgefleet.federated._spec import WEIGHT_KEY


def train(msg: Message, context: Context) -> Message:
    head = SoftmaxHead.from_arrays(msg.content["arrays"].to_numpy_ndarrays())
    config = msg.content["config"]
    x, y = load_dataset(Path(str(context.node_config["data-dir"])))
    if "feature-model" in config:  # raw inputs -> the base model's frozen penultimate features
        x = FeatureExtractor(bytes(config["feature-model"]))(x)
    trained = head.train(
        x,
        y,
        epochs=int(config["local-epochs"]),
        lr=float(config["learning-rate"]),
        prox_mu=float(config.get("proximal-mu", 0.0)),
        seed=int(config["server-round"]),
    )
    delay = float(context.node_config.get("train-delay-s", 0.0))
    if delay > 0:
        time.sleep(delay)
    metrics = MetricRecord(
        {
            WEIGHT_KEY: 1 if config.get("equal-weights") else len(y),
            "samples": len(y),
            "train-loss": trained.loss(x, y),
        }
    )
    return Message(RecordDict({"arrays": ArrayRecord(trained.arrays()), "metrics": metrics}), reply_to=msg)


app = ClientApp()
app.train()(train)

dp_app = ClientApp(mods=[fixedclipping_mod])
dp_app.train()(train)
