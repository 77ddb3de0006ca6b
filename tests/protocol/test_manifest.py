import json

import pytest

from edgefleet.errors import ManifestError, SchemaVersionError
from edgefleet.protocol import MAX_MANIFEST_BYTES, Manifest, TensorSpec
from edgefleet.protocol._manifest import MANIFEST_SCHEMA_VERSION


def _manifest(**kw) -> Manifest:
    base = dict(
        name="digits",
        version="1.4.0",
        variant="cpu-int8",
        inputs=[TensorSpec(name="input", dtype="float32", shape=["batch", 64], value_range=(0, 1))],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=["batch", 10])],
    )
    base.update(kw)
    return Manifest(**base)


def test_roundtrip_is_canonical():
    m = _manifest()
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.to_json() == m.to_json()
    assert m.key == "digits/1.4.0/cpu-int8"


@pytest.mark.parametrize("version", ["1.4", "v1.4.0", "01.2.3", "1.2.3.4", ""])
def test_version_must_be_semver(version):
    data = json.loads(_manifest().to_json())
    data["version"] = version
    with pytest.raises(ManifestError, match="version"):
        Manifest.from_json(json.dumps(data))


def test_newer_schema_is_refused_with_upgrade_hint():
    data = json.loads(_manifest().to_json())
    data["schema_version"] = MANIFEST_SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError) as e:
        Manifest.from_json(json.dumps(data))
    assert "upgrade edgefleet" in e.value.hint


def test_oversized_manifest_is_refused_before_parsing():
    blob = b"{" + b" " * (MAX_MANIFEST_BYTES + 1) + b"}"
    with pytest.raises(ManifestError, match="bytes"):
        Manifest.from_json(blob)


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_garbage_is_a_manifest_error(payload):
    with pytest.raises(ManifestError):
        Manifest.from_json(payload)


def test_unknown_field_names_where():
    data = json.loads(_manifest().to_json())
    data["runtime"]["gpu"] = True
    with pytest.raises(ManifestError, match=r"runtime\.gpu"):
        Manifest.from_json(json.dumps(data))


def test_name_path_traversal_is_refused():
    with pytest.raises(ValueError):
        _manifest(name="../etc")


@pytest.mark.parametrize(
    "bad",
    [{"requests": -1}, {"errors": -5}, {"latency_p95_ms": float("nan")}, {"mean_confidence": float("inf")}],
)
def test_model_health_refuses_negative_counts_and_non_finite_figures(bad):
    from pydantic import ValidationError

    from edgefleet.protocol import ModelHealth

    with pytest.raises(ValidationError):
        ModelHealth(**bad)
