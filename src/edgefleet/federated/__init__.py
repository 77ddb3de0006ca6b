"""Federated learning across the fleet, on Flower (see docs/design-notes.md, "Federated learning").

Flower does the federated work; edgefleet runs its SuperLink for a job (``Coordinator``), starts a
SuperNode on a device while the job wants it and the device's state allows (``SuperNode``,
``TrainingPolicy``), trains a numpy softmax head on the device's own data (``SoftmaxHead``,
``load_dataset``) and turns the final head into a release.
"""

from edgefleet.federated._coordinator import Coordinator, JobFailed, load_final_head, read_progress
from edgefleet.federated._data import label_skewed_split, load_dataset
from edgefleet.federated._export import bundle_model, export_model, job_lineage, release_from_job
from edgefleet.federated._head import SoftmaxHead
from edgefleet.federated._metrics import JobCollector
from edgefleet.federated._model_head import head_of_model, write_head
from edgefleet.federated._node import SuperNode, TrainingPolicy
from edgefleet.federated._spec import JobSpec, PrivacySettings

__all__ = [
    "Coordinator",
    "JobCollector",
    "JobFailed",
    "JobSpec",
    "PrivacySettings",
    "SoftmaxHead",
    "SuperNode",
    "TrainingPolicy",
    "bundle_model",
    "export_model",
    "head_of_model",
    "job_lineage",
    "label_skewed_split",
    "load_dataset",
    "load_final_head",
    "read_progress",
    "release_from_job",
    "write_head",
]
