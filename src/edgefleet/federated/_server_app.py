"""The Flower ServerApp of an edgefleet job (runs under the SuperLink, on the control-plane host).

Flower does the federated work (sampling, messaging, aggregation, DP noise, accounting); this module
drives its Strategy round by round so each round closes at the job's deadline and leaves a report:
selected, answered, late, dropped, payload bytes down and up, the global head's accuracy on the server's
held-out set, and ε when privacy is on. Reports go to the job folder's ``progress.jsonl``; the final head to
``final_head.npz``.

With ``update_compression`` each reply holds an encoded delta (``_compress.py``): it is decoded against
the global head's shapes before the strategy sees it, and a reply that does not decode is left out of the
round with its reason (``rejected``, ``rejected_reasons``); uncompressed replies get the same shape and
finiteness check. ``bytes_up`` counts the arrays a device really sent (the encoded ones), ``bytes_up_wire``
and ``bytes_down_wire`` the serialized records (Flower's protobuf, array headers included). A job with
``secagg`` runs Flower's SecAgg+ workflow instead (``_secagg.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import (
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
    ServerApp,
    strategy,
)

from edgefleet.federated._compress import ENCODED, PLAIN, UpdateRejected, check_plain, decode
from edgefleet.federated._head import SoftmaxHead
from edgefleet.federated._model_head import FeatureExtractor
from edgefleet.federated._spec import (
    EVAL_DATA,
    FEATURE_MODEL,
    FINAL_HEAD,
    INITIAL_HEAD,
    PROGRESS_FILE,
    WEIGHT_KEY,
    JobSpec,
)

app = ServerApp()


def build_strategy(spec: JobSpec) -> strategy.Strategy:
    """Flower's strategy for the job, wrapped in Flower's client-side-clipping DP wrapper when asked."""
    sampling: dict[str, Any] = {
        # fraction_train * connected rounds down to 0, so Flower samples exactly min_train_nodes
        "fraction_train": 1e-9,
        "fraction_evaluate": 0.0,
        "min_train_nodes": spec.clients_per_round,
        "min_available_nodes": spec.clients_per_round,
        "weighted_by_key": WEIGHT_KEY,
    }
    if spec.strategy == "fedprox":
        base: strategy.Strategy = strategy.FedProx(proximal_mu=spec.proximal_mu, **sampling)
    elif spec.strategy == "fedadam":
        base = strategy.FedAdam(eta=0.05, eta_l=spec.learning_rate, **sampling)
    else:
        base = strategy.FedAvg(**sampling)
    if spec.privacy is None:
        return base
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=spec.privacy.delta,
            population_size=spec.clients_per_round,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    return strategy.DifferentialPrivacyClientSideFixedClipping(
        base,
        noise_multiplier=spec.privacy.noise_multiplier,
        clipping_norm=spec.privacy.clipping_norm,
        num_sampled_clients=spec.clients_per_round,
        accountant=accountant,
    )


def _fit_sample(fl_strategy: strategy.Strategy, spec: JobSpec, grid: Grid) -> None:
    """Sample ``clients_per_round`` devices: wait up to the round deadline for that many to connect, then
    take as many as are there (at least ``min_clients``), so a device that went away does not stall the
    job. With DP accounting the sample stays fixed: the noise is calibrated to it."""
    if spec.privacy is not None:
        return
    deadline = time.monotonic() + spec.round_deadline_s
    while len(list(grid.get_node_ids())) < spec.clients_per_round and time.monotonic() < deadline:
        time.sleep(0.5)
    base = fl_strategy
    assert isinstance(base, strategy.FedAvg)
    base.min_available_nodes = spec.min_clients
    base.min_train_nodes = max(spec.min_clients, min(spec.clients_per_round, len(list(grid.get_node_ids()))))


def _payload_bytes(record: ArrayRecord) -> int:
    return sum(a.nbytes for a in record.to_numpy_ndarrays())


def _reply_arrays(reply: Message) -> list[np.ndarray]:
    return reply.content[PLAIN].to_numpy_ndarrays()


def _wire_bytes(message: Message) -> int:
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(message.content).ByteSize())


def accept_reply(content: RecordDict, codec: str, global_arrays: list[np.ndarray]) -> int:
    """Check (and, with ``codec``, decode in place to the new head) one reply's content; returns the bytes
    of the arrays the device sent. ``UpdateRejected`` says why a reply cannot be used."""
    records = content.array_records
    shapes = [a.shape for a in global_arrays]
    if codec == "none":
        if set(records) != {PLAIN}:
            raise UpdateRejected(f"reply holds array records {sorted(records)}; want [{PLAIN!r}]")
        arrays = records[PLAIN].to_numpy_ndarrays()
        check_plain(arrays, shapes)
        return sum(a.nbytes for a in arrays)
    if set(records) != {ENCODED}:
        raise UpdateRejected(f"reply holds array records {sorted(records)}; want [{ENCODED!r}] ({codec})")
    encoded = {name: array.numpy() for name, array in records[ENCODED].items()}
    delta = decode(codec, encoded, shapes)
    del content[ENCODED]
    content[PLAIN] = ArrayRecord(
        [(g + d).astype(np.float32) for g, d in zip(global_arrays, delta, strict=True)]
    )
    return sum(a.nbytes for a in encoded.values())


def _load_eval(job_dir: Path, feature_model: bytes | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The server's held-out set, as the head's features."""
    path = job_dir / EVAL_DATA
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as npz:
        x, y = npz["x"].astype(np.float32), npz["y"].astype(np.int64)
    return (FeatureExtractor(feature_model)(x) if feature_model else x), y


class _Progress:
    def __init__(self, path: Path) -> None:
        self._path = path

    def write(self, event: dict[str, Any]) -> None:
        with self._path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"t": time.time(), **event}) + "\n")


def run_rounds(grid: Grid, job_dir: Path, context: Context | None = None) -> None:
    """Every round of the job in ``job_dir``; the final head lands in ``final_head.npz``."""
    spec = JobSpec.load(job_dir)
    progress = _Progress(job_dir / PROGRESS_FILE)
    with np.load(job_dir / INITIAL_HEAD, allow_pickle=False) as npz:
        head = SoftmaxHead.from_arrays([npz["W"], npz["b"]])
    feature_path = job_dir / FEATURE_MODEL
    feature_model = feature_path.read_bytes() if feature_path.exists() else None
    evaluation = _load_eval(job_dir, feature_model)
    base_accuracy = head.accuracy(*evaluation) if evaluation else None
    progress.write({"event": "started", "rounds": spec.rounds, "accuracy": base_accuracy})
    if spec.secagg is not None:
        from edgefleet.federated._secagg import run_secagg_rounds

        final, n_participants = run_secagg_rounds(
            grid, context, job_dir, spec, head, feature_model, evaluation, progress
        )
    else:
        fl_strategy = build_strategy(spec)
        arrays = ArrayRecord(head.arrays())
        participants: set[int] = set()  # Flower node ids, counted only: no id leaves this function
        for rnd in range(1, spec.rounds + 1):
            arrays = _one_round(
                grid, spec, fl_strategy, rnd, arrays, evaluation, progress, feature_model, participants
            )
        final = SoftmaxHead.from_arrays(arrays.to_numpy_ndarrays())
        n_participants = len(participants)
    np.savez(job_dir / FINAL_HEAD, W=final.W, b=final.b)
    progress.write(
        {
            "event": "finished",
            "accuracy": final.accuracy(*evaluation) if evaluation else None,
            "participants": n_participants,
        }
    )


def _one_round(
    grid: Grid,
    spec: JobSpec,
    fl_strategy: strategy.Strategy,
    rnd: int,
    arrays: ArrayRecord,
    evaluation: tuple[np.ndarray, np.ndarray] | None,
    progress: _Progress,
    feature_model: bytes | None,
    participants: set[int],
) -> ArrayRecord:
    config = ConfigRecord(
        {
            "local-epochs": spec.local_epochs,
            "learning-rate": spec.learning_rate,
            "equal-weights": spec.privacy is not None,
            "update-compression": spec.update_compression,
            "trainer": spec.trainer,
        }
    )
    if feature_model is not None:  # every round: a device may join in any round
        config["feature-model"] = feature_model
    _fit_sample(fl_strategy, spec, grid)
    messages = list(fl_strategy.configure_train(rnd, arrays, config, grid))
    selected = {m.metadata.dst_node_id for m in messages}
    progress.write({"event": "round_started", "round": rnd, "selected": len(selected)})
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=spec.round_deadline_s))
    answered = [r for r in replies if not r.has_error()]
    failed = {r.metadata.src_node_id for r in replies if r.has_error()}
    missing = selected - {r.metadata.src_node_id for r in replies}
    connected = set(grid.get_node_ids())
    global_arrays = arrays.to_numpy_ndarrays()
    ok: list[Message] = []
    rejected: list[str] = []
    bytes_up = bytes_up_wire = 0
    for r in answered:
        bytes_up_wire += _wire_bytes(r)
        try:
            bytes_up += accept_reply(r.content, spec.update_compression, global_arrays)
            ok.append(r)
        except UpdateRejected as e:
            rejected.append(str(e))
    report: dict[str, Any] = {
        "event": "round",
        "round": rnd,
        "selected": len(selected),
        "answered": len(ok),
        # no answer by the deadline while still connected: a straggler; gone or failed: dropped
        "late": len(missing & connected),
        "dropped": len(missing - connected) + len(failed),
        "rejected": len(rejected),
        "bytes_down": (_payload_bytes(arrays) + len(feature_model or b"")) * len(messages),
        "bytes_up": bytes_up,
        "bytes_down_wire": sum(_wire_bytes(m) for m in messages),
        "bytes_up_wire": bytes_up_wire,
        "aggregated": False,
        # answers trained by torch (a device without torch trains the head in numpy: the same update)
        "torch_clients": sum(
            int(r.content["metrics"].get("trainer-torch", 0)) for r in ok if "metrics" in r.content
        ),
    }
    if rejected:
        report["rejected_reasons"] = sorted(set(rejected))[:5]
    if len(ok) >= spec.min_clients:
        plain_mean = [np.mean(layer, axis=0) for layer in zip(*(_reply_arrays(r) for r in ok), strict=True)]
        new_arrays, _ = fl_strategy.aggregate_train(rnd, ok)
        if new_arrays is not None:
            arrays = new_arrays
            report["aggregated"] = True
            participants.update(r.metadata.src_node_id for r in ok)
            if spec.privacy is not None:
                report.update(_privacy_report(fl_strategy, spec, arrays, plain_mean))
    report["seconds"] = round(time.monotonic() - started, 3)
    report["accuracy"] = (
        SoftmaxHead.from_arrays(arrays.to_numpy_ndarrays()).accuracy(*evaluation) if evaluation else None
    )
    progress.write(report)
    return arrays


def _privacy_report(
    fl_strategy: strategy.Strategy, spec: JobSpec, arrays: ArrayRecord, plain_mean: list[np.ndarray]
) -> dict[str, Any]:
    """ε spent so far, and the noise Flower added: the aggregate minus the plain mean of the clipped updates."""
    assert spec.privacy is not None
    spent = fl_strategy.privacy_spent()  # type: ignore[attr-defined]
    noise = np.concatenate(
        [(a - m).ravel() for a, m in zip(arrays.to_numpy_ndarrays(), plain_mean, strict=True)]
    )
    return {
        "epsilon": None if spent is None else spent.epsilon,
        "delta": spec.privacy.delta,
        "noise_std": float(noise.std()),
        "noise_std_expected": spec.privacy.noise_multiplier
        * spec.privacy.clipping_norm
        / spec.clients_per_round,
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    job_dir = Path(str(context.run_config["job-dir"]))
    try:
        run_rounds(grid, job_dir, context)
    except Exception as e:  # the coordinator reads the failure from the progress file
        _Progress(job_dir / PROGRESS_FILE).write({"event": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
