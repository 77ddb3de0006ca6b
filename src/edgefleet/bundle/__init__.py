"""The deployable artifact: manifest, preprocessing contract, golden set, reference statistics, archive, deltas.

Build side::

    create_bundle("model.onnx", "digits.tar", name="digits", version="1.0.0", variant="cpu",
                  inputs_raw=x_golden, preprocess=[{"op": "scale", "factor": 1 / 16}])

Device side::

    with Bundle.open("digits.tar") as b:   # safe extraction, every hash checked
        b.verify()                           # golden set rerun in a fresh onnxruntime session
"""

from edgefleet._fs import sha256_file
from edgefleet.bundle._archive import read_manifest, safe_extract
from edgefleet.bundle._bundle import (
    GOLDEN_FILE,
    REFERENCE_FILE,
    Bundle,
    Golden,
    VerifyReport,
    compare_outputs,
    create_bundle,
)
from edgefleet.bundle._config import BundleConfig
from edgefleet.bundle._delta import DeltaInfo, apply_delta, make_delta, read_delta_header
from edgefleet.bundle._model import ModelRunner, check_runtime_requirements
from edgefleet.bundle._preprocess import STEP_TYPES, Preprocess
from edgefleet.bundle._reference import (
    REFERENCE_SCHEMA_VERSION,
    SUMMARY_FEATURES,
    compute_reference,
    confidence_from_outputs,
    softmax,
    summarize_features,
)
from edgefleet.protocol import PreprocessStep

__all__ = [
    "GOLDEN_FILE",
    "REFERENCE_FILE",
    "REFERENCE_SCHEMA_VERSION",
    "STEP_TYPES",
    "SUMMARY_FEATURES",
    "Bundle",
    "BundleConfig",
    "DeltaInfo",
    "Golden",
    "ModelRunner",
    "Preprocess",
    "PreprocessStep",
    "VerifyReport",
    "apply_delta",
    "check_runtime_requirements",
    "compare_outputs",
    "compute_reference",
    "confidence_from_outputs",
    "create_bundle",
    "make_delta",
    "read_delta_header",
    "read_manifest",
    "safe_extract",
    "sha256_file",
    "softmax",
    "summarize_features",
]
