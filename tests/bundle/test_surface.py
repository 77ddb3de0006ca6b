"""Pins the bundle API other packages (registry, agent, runtime, telemetry) code against."""

import edgefleet.bundle as bundle

AGREED = [
    "Preprocess",
    "Bundle",
    "create_bundle",
    "read_manifest",
    "make_delta",
    "apply_delta",
    "summarize_features",
    "compute_reference",
]


def test_agreed_names_are_public():
    for name in AGREED:
        assert name in bundle.__all__ and hasattr(bundle, name), name


def test_bundle_attributes(digits_bundle):
    with bundle.Bundle.open(digits_bundle) as b:
        for attr in ("manifest", "root", "model_path", "preprocess", "golden", "reference", "verify"):
            assert getattr(b, attr) is not None, attr
        for attr in ("inputs_raw", "inputs", "expected", "atol", "rtol"):
            assert hasattr(b.golden, attr), attr
    assert callable(bundle.Bundle.from_dir)
