"""Retraining that leads to a gated release: labelled snapshot in, signed and proposed release out.

``RetrainJob(RetrainSpec(...), client).run()`` takes the parent release from the repository and a labelled
data snapshot (``write_snapshot``/``load_snapshot``), trains with the built-in head retrainer
(``retrain_head``) or a user's entry point (``Trainer``), runs the optimizer with each parent variant's
budget, bundles with lineage (parent release, snapshot hash, labels used, job id), publishes, registers the
release on the control plane and proposes its rollout. MLflow interop lives in ``edgefleet.retrain._mlflow``
(optional extra ``mlflow``).
"""

from __future__ import annotations

from edgefleet.retrain._head import find_head, retrain_head
from edgefleet.retrain._job import RetrainJob, RetrainSpec
from edgefleet.retrain._snapshot import DataSnapshot, load_snapshot, snapshot_hash, write_snapshot
from edgefleet.retrain._trainer import Trainer

__all__ = [
    "DataSnapshot",
    "RetrainJob",
    "RetrainSpec",
    "Trainer",
    "find_head",
    "load_snapshot",
    "retrain_head",
    "snapshot_hash",
    "write_snapshot",
]
