"""SecAgg+ rounds: Flower's ``SecAggPlusWorkflow`` inside Flower's legacy ``DefaultWorkflow``.

Flower 1.42 ships SecAgg+ only for its legacy ``flwr.server`` API (a ``DefaultWorkflow`` over a legacy
Strategy, ``secaggplus_mod`` on the clients), so a job with ``secagg`` runs that path inside the same
ServerApp: ``DefaultWorkflow(fit_workflow=<this module's reporting wrapper around SecAggPlusWorkflow>)``.
The server never sees one device's update, only the unmasked sum; devices mask their *delta* from the
global head (bounded, so SecAgg+'s clipping range holds), and ``_DeltaStrategy`` adds the averaged delta
back to the global head before Flower's legacy FedAvg/FedProx/FedAdam aggregates it.

Per round the report has what the plain path has (selected, answered, late, dropped, bytes, accuracy)
plus ``keys_shared`` (devices that got through the key stages), ``dropped_after_keys`` (devices whose
masks the others' shares removed), the shares and threshold used, and the wire bytes of all four stages.
The round deadline bounds each of the protocol's four exchanges (Flower's workflow ``timeout``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import (
    FitRes,
    Parameters,
    Scalar,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import recorddict_to_proto
from flwr.server import LegacyContext, ServerConfig
from flwr.server import strategy as legacy
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from edgefleet.federated._client_app import SECAGG_MAX_WEIGHT
from edgefleet.federated._head import SoftmaxHead
from edgefleet.federated._spec import JobSpec


class _DeltaStrategy(legacy.Strategy):
    """Flower's legacy strategy, fed ``global + mean delta`` (SecAgg+ sums the devices' deltas); a round
    with fewer answers than ``min_clients`` keeps the previous head."""

    def __init__(self, inner: legacy.FedAvg, min_clients: int) -> None:
        self.inner = inner
        self.min_clients = min_clients
        self.global_arrays: list[np.ndarray] = []
        self.aggregated: list[tuple[ClientProxy, FitRes]] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results, failures):
        if len(results) < self.min_clients:
            return None, {}
        mean_delta = parameters_to_ndarrays(results[0][1].parameters)  # the workflow gives all the same
        merged = ndarrays_to_parameters(
            [(g + d).astype(np.float32) for g, d in zip(self.global_arrays, mean_delta, strict=True)]
        )
        for _, fitres in results:
            fitres.parameters = merged
        out = self.inner.aggregate_fit(server_round, results, failures)
        if out[0] is not None:
            self.aggregated = list(results)
        return out

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        return []

    def aggregate_evaluate(self, server_round: int, results, failures):
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters):
        return None


def _message_bytes(content: Any) -> int:
    return int(recorddict_to_proto(content).ByteSize())


class _CountingGrid:
    """The job's Grid as SecAggPlusWorkflow sees it: every exchange is counted per protocol stage."""

    def __init__(self, grid: Grid, on_stage) -> None:
        self._grid = grid
        self._on_stage = on_stage
        self.stages: dict[str, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]) if messages else "?"
        down_wire = sum(_message_bytes(m.content) for m in messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        ok = [r for r in replies if not r.has_error()]
        info: dict[str, Any] = {
            "sent": {m.metadata.dst_node_id for m in messages},
            "ok": {r.metadata.src_node_id for r in ok},
            "bytes_down_wire": down_wire,
            "bytes_up_wire": sum(_message_bytes(r.content) for r in ok),
        }
        if stage == Stage.SETUP and messages:
            setup = messages[0].content.config_records[RECORD_KEY_CONFIGS]
            info["shares"], info["threshold"] = int(setup[Key.SHARE_NUMBER]), int(setup[Key.THRESHOLD])
        if stage == Stage.COLLECT_MASKED_VECTORS:
            info["bytes_down"] = sum(
                sum(a.numpy().nbytes for a in m.content.array_records["fitins.parameters"].values())
                + sum(
                    len(v) for v in m.content.config_records["fitins.config"].values() if isinstance(v, bytes)
                )
                for m in messages
            )
            info["bytes_up"] = sum(
                sum(
                    bytes_to_ndarray(b).nbytes
                    for b in r.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
                )
                for r in ok
            )
        self.stages[stage] = info
        self._on_stage(stage, info)
        return replies


class _SecAggRound:
    """One round of the job: SecAggPlusWorkflow over a counting grid, then the round's report."""

    def __init__(self, spec: JobSpec, strategy: _DeltaStrategy, progress, evaluation, participants: set[int]):
        assert spec.secagg is not None
        self.spec, self.strategy, self.progress = spec, strategy, progress
        self.evaluation, self.participants = evaluation, participants
        self.workflow = SecAggPlusWorkflow(
            num_shares=spec.secagg.shares or 1.0,  # 1.0: every sampled device holds a share
            reconstruction_threshold=spec.secagg.threshold or 0.6,
            max_weight=SECAGG_MAX_WEIGHT,
            clipping_range=spec.secagg.clipping_range,
            timeout=spec.round_deadline_s,
        )

    def __call__(self, grid: Grid, context: Context) -> None:
        assert isinstance(context, LegacyContext)
        spec, inner = self.spec, self.strategy.inner
        rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        manager = context.client_manager
        deadline = time.monotonic() + spec.round_deadline_s
        while manager.num_available() < spec.clients_per_round and time.monotonic() < deadline:
            time.sleep(0.5)
        sample = min(spec.clients_per_round, manager.num_available())
        started = time.monotonic()
        report: dict[str, Any] = {"event": "round", "round": rnd, "secagg": True, "aggregated": False}
        if sample < max(spec.min_clients, 3):
            report.update(selected=0, answered=0, late=0, dropped=0, bytes_down=0, bytes_up=0)
            report["reason"] = f"{sample} devices connected; SecAgg+ here needs {max(spec.min_clients, 3)}"
            self._finish(report, context, started)
            return
        inner.min_fit_clients = inner.min_available_clients = sample
        self.strategy.global_arrays = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        self.strategy.aggregated = None

        def on_stage(stage: str, info: dict[str, Any]) -> None:
            if stage == Stage.SETUP:
                self.progress.write({"event": "round_started", "round": rnd, "selected": len(info["sent"])})
            self.progress.write(
                {"event": "secagg_stage", "round": rnd, "stage": stage, "ok": len(info["ok"])}
            )

        counting = _CountingGrid(grid, on_stage)
        self.workflow(counting, context)
        stages = counting.stages
        setup = stages.get(Stage.SETUP, {"sent": set(), "ok": set()})
        keys = stages.get(Stage.SHARE_KEYS, {"ok": set()})
        masked = stages.get(Stage.COLLECT_MASKED_VECTORS, {"ok": set(), "bytes_up": 0, "bytes_down": 0})
        selected, answered = setup["sent"], masked["ok"]
        missing = selected - answered
        connected = set(grid.get_node_ids())
        report.update(
            selected=len(selected),
            answered=len(answered),
            late=len(missing & connected),
            dropped=len(missing - connected),
            keys_shared=len(keys["ok"]),
            dropped_after_keys=len(keys["ok"] - answered),
            shares=setup.get("shares"),
            threshold=setup.get("threshold"),
            bytes_down=masked.get("bytes_down", 0),
            bytes_up=masked.get("bytes_up", 0),
            bytes_down_wire=sum(s["bytes_down_wire"] for s in stages.values()),
            bytes_up_wire=sum(s["bytes_up_wire"] for s in stages.values()),
            aggregated=self.strategy.aggregated is not None,
        )
        if self.strategy.aggregated is not None:
            self.participants.update(proxy.node_id for proxy, _ in self.strategy.aggregated)
        self._finish(report, context, started)

    def _finish(self, report: dict[str, Any], context: Context, started: float) -> None:
        report["seconds"] = round(time.monotonic() - started, 3)
        arrays = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        report["accuracy"] = (
            SoftmaxHead.from_arrays(arrays).accuracy(*self.evaluation) if self.evaluation else None
        )
        self.progress.write(report)


def _legacy_strategy(spec: JobSpec, head: SoftmaxHead, feature_model: bytes | None) -> legacy.FedAvg:
    def fit_config(server_round: int) -> dict[str, Scalar]:
        config: dict[str, Scalar] = {
            "server-round": server_round,
            "local-epochs": spec.local_epochs,
            "learning-rate": spec.learning_rate,
            "equal-weights": False,
        }
        if feature_model is not None:
            config["feature-model"] = feature_model
        return config

    common: dict[str, Any] = {
        "fraction_fit": 1e-9,  # rounds down to 0: Flower samples exactly min_fit_clients
        "fraction_evaluate": 0.0,
        "min_fit_clients": spec.clients_per_round,
        "min_available_clients": spec.clients_per_round,
        "initial_parameters": ndarrays_to_parameters(head.arrays()),
        "on_fit_config_fn": fit_config,
    }
    if spec.strategy == "fedprox":
        return legacy.FedProx(proximal_mu=spec.proximal_mu, **common)
    if spec.strategy == "fedadam":
        return legacy.FedAdam(eta=0.05, eta_l=spec.learning_rate, **common)
    return legacy.FedAvg(**common)


def run_secagg_rounds(
    grid: Grid,
    context: Context,
    job_dir: Path,
    spec: JobSpec,
    head: SoftmaxHead,
    feature_model: bytes | None,
    evaluation,
    progress,
) -> tuple[SoftmaxHead, int]:
    """Every round of a SecAgg+ job: the final head and how many devices took part."""
    strategy = _DeltaStrategy(_legacy_strategy(spec, head, feature_model), spec.min_clients)
    participants: set[int] = set()
    legacy_context = LegacyContext(context, config=ServerConfig(num_rounds=spec.rounds), strategy=strategy)
    round_ = _SecAggRound(spec, strategy, progress, evaluation, participants)
    DefaultWorkflow(fit_workflow=round_)(grid, legacy_context)
    final = SoftmaxHead.from_arrays(
        legacy_context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    )
    return final, len(participants)
