"""The Flower ClientApp a device runs for a job (under its SuperNode).

It trains the softmax head on what the device holds — the dataset folder named by the SuperNode's
``data-dir`` node config — and replies with the head's weights and the number of samples. Nothing else
leaves the device. ``dp_app`` is the same app behind Flower's ``fixedclipping_mod``, which clips the
update before it is sent (client-side clipping for the server's DP wrapper).

With ``update-compression`` in the round's config the reply holds the encoded delta from the global head
instead (``federated/_compress.py``); what the encoding left out is kept in the device's Flower context
state and added to its next delta (error feedback). Under SecAgg+ the server speaks Flower's SecAgg+
protocol: ``app`` passes those messages through Flower's ``secaggplus_mod``, which masks the reply (here the
delta from the global head, bounded, so the mod's clipping range holds) before it leaves the device.

With ``trainer: torch`` in the round's config a device that can import torch fine-tunes the head with torch
(``_torch_head.py``: the same loss and batches); one that cannot trains it in numpy; the ``trainer-torch``
metric says which ran.

``train-delay-s`` in the node config is a stand-in for a slow device (a phone on a weak CPU or link): the
reply is held back that long. Tests and benchmarks use it to make stragglers; real devices leave it unset.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from edgefleet.federated._compress import ENCODED, PLAIN, RESIDUAL, encode
from edgefleet.federated._data import load_dataset
from edgefleet.federated._head import SoftmaxHead
from edgefleet.federated._model_head import FeatureExtractor
from edgefleet.federated._spec import WEIGHT_KEY
from edgefleet.federated._torch_head import torch_available, train_torch

SECAGG_MAX_WEIGHT = 10_000  # SecAgg+ weights a device by its sample count, capped here (Flower's max_weight)


def train(msg: Message, context: Context) -> Message:
    global_arrays = msg.content["arrays"].to_numpy_ndarrays()
    head = SoftmaxHead.from_arrays(global_arrays)
    config = msg.content["config"]
    x, y = load_dataset(Path(str(context.node_config["data-dir"])))
    if "feature-model" in config:  # raw inputs -> the base model's frozen penultimate features
        x = FeatureExtractor(bytes(config["feature-model"]))(x)
    settings = {
        "epochs": int(config["local-epochs"]),
        "lr": float(config["learning-rate"]),
        "prox_mu": float(config.get("proximal-mu", 0.0)),
        "seed": int(config["server-round"]),
    }
    use_torch = str(config.get("trainer", "numpy")) == "torch" and torch_available()
    trained = train_torch(head, x, y, **settings) if use_torch else head.train(x, y, **settings)
    delay = float(context.node_config.get("train-delay-s", 0.0))
    if delay > 0:
        time.sleep(delay)
    metrics = MetricRecord(
        {
            WEIGHT_KEY: 1 if config.get("equal-weights") else len(y),
            "samples": len(y),
            "train-loss": trained.loss(x, y),
            "trainer-torch": int(use_torch),
        }
    )
    codec = str(config.get("update-compression", "none"))
    if codec == "none":
        return Message(RecordDict({PLAIN: ArrayRecord(trained.arrays()), "metrics": metrics}), reply_to=msg)
    delta = [t - g for t, g in zip(trained.arrays(), head.arrays(), strict=True)]
    if RESIDUAL in context.state.array_records:  # error feedback: what last round's encoding left out
        residual = context.state.array_records[RESIDUAL].to_numpy_ndarrays()
        if [r.shape for r in residual] == [d.shape for d in delta]:
            delta = [d + r for d, r in zip(delta, residual, strict=True)]
    record, sent = encode(codec, delta)
    context.state.array_records[RESIDUAL] = ArrayRecord([d - s for d, s in zip(delta, sent, strict=True)])
    encoded = ArrayRecord({name: Array(value) for name, value in record.items()})
    return Message(RecordDict({ENCODED: encoded, "metrics": metrics}), reply_to=msg)


def _secagg_train(call_next: ClientAppCallable) -> ClientAppCallable:
    """The training step as Flower's ``secaggplus_mod`` calls it (the legacy FitIns/FitRes records): the
    reply's parameters are the delta from the global head and its weight the (capped) sample count."""

    def step(msg: Message, context: Context) -> Message:
        parameters, config = compat._recorddict_to_fit_or_evaluate_ins_components(  # noqa: SLF001
            msg.content, "fitins", keep_input=True
        )
        global_arrays = parameters_to_ndarrays(parameters)
        if "proximal_mu" in config:  # Flower's legacy FedProx names it so
            config["proximal-mu"] = config.pop("proximal_mu")
        inner = Message(
            RecordDict({PLAIN: ArrayRecord(global_arrays), "config": ConfigRecord(config)}),  # type: ignore[arg-type]
            dst_node_id=msg.metadata.dst_node_id,
            message_type=MessageType.TRAIN,
        )
        reply = call_next(inner, context)
        trained = reply.content[PLAIN].to_numpy_ndarrays()
        metrics = reply.content["metrics"]
        delta = [np.asarray(t, np.float32) - g for t, g in zip(trained, global_arrays, strict=True)]
        fitres = FitRes(
            status=Status(Code.OK, "ok"),
            parameters=ndarrays_to_parameters(delta),
            num_examples=min(int(metrics["samples"]), SECAGG_MAX_WEIGHT),
            metrics={"train-loss": float(metrics["train-loss"])},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    return step


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the job's SecAgg+ messages; every other message passes through."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, _secagg_train(call_next))


app = ClientApp(mods=[secagg_mod])
app.train()(train)

dp_app = ClientApp(mods=[fixedclipping_mod])
dp_app.train()(train)
