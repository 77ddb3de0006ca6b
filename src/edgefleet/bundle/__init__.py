"""The deployable artifact: manifest, preprocessing contract, golden set, reference statistics, archive, deltas.

Build side::

    create_bundle("model.onnx", "digits.tar", name="digits", version="1.0.0", variant="cpu",
                  inputs_raw=x_golden, preprocess=[{"op": "scale", "factor": 1 / 16}])

Device side::

    with Bundle.open("digits.tar") as b:   # safe extraction, every hash checked
        b.verify()                           # golden set rerun in a fresh onnxruntime session
"""

from edgefleet.bundle._archive import read_manifest
from edgefleet.bundle._bundle import REFERENCE_FILE, Bundle, VerifyReport, compare_outputs, create_bundle
from edgefleet.bundle._config import BundleConfig
from edgefleet.bundle._delta import DeltaInfo, apply_delta, make_delta, read_delta_header
from edgefleet.bundle._preprocess import Preprocess
from edgefleet.bundle._reference import compute_reference, summarize_features

__all__ = [
    "REFERENCE_FILE",
    "Bundle",
    "BundleConfig",
    "DeltaInfo",
    "Preprocess",
    "VerifyReport",
    "apply_delta",
    "compare_outputs",
    "compute_reference",
    "create_bundle",
    "make_delta",
    "read_delta_header",
    "read_manifest",
    "summarize_features",
]
