"""Create -> open -> verify on a real digits model, determinism, and the golden-set health check."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime

import numpy as np
import pytest
from bundletools import CREATED, SCALE, read_entries, rebuild, tree
from PIL import Image

from edgefleet.bundle import Bundle, create_bundle, read_manifest
from edgefleet.errors import (
    GoldenMismatchError,
    InputError,
    IntegrityError,
    ManifestError,
    ModelLoadError,
    PreprocessError,
)
from edgefleet.protocol import Lineage, Metrics, Postprocess


def test_round_trip(digits_bundle, digits_mlp, golden_x, digits_split, tmp_path):
    m = read_manifest(digits_bundle)
    assert (m.name, m.version, m.variant, m.created) == ("digits", "1.0.0", "cpu", CREATED)
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [("input", "float32", ["batch", 64])]
    assert [t.name for t in m.outputs] == ["label", "probabilities"]
    assert m.runtime.opset == 17
    assert m.golden.count == len(golden_x)
    assert m.postprocess.output == "probabilities"  # found automatically: the float (batch, classes) output
    assert set(m.files) == {"model.onnx", "golden.npz", "reference.json"}
    assert m.files["model.onnx"].size == digits_mlp.stat().st_size
    with Bundle.open(digits_bundle, tmp_path / "b") as b:
        assert b.model_path.read_bytes() == digits_mlp.read_bytes()
        report = b.verify()
        assert report.ok and report.golden_count == len(golden_x) and report.files_checked == 3
        g = b.golden
        np.testing.assert_array_equal(g.inputs_raw, golden_x)
        np.testing.assert_allclose(g.inputs["input"], golden_x / 16, rtol=1e-6)
        # expected outputs are the model's real answers: they classify most test digits right
        acc = (g.expected["label"] == digits_split.y_test[: len(golden_x)]).mean()
        assert acc >= 0.8
        ref = b.reference
        assert ref["count"] == 300 and len(ref["features"]) == 64
        assert ref["confidence"]["mean"] > 0.5 and sum(ref["classes"]["counts"]) == 300
        assert b.preprocess.to_manifest() == m.preprocess


def test_same_inputs_give_byte_identical_archives(digits_mlp, bundle_kwargs, tmp_path):
    a = create_bundle(digits_mlp, tmp_path / "a.tar", **bundle_kwargs)
    b = create_bundle(digits_mlp, tmp_path / "b.tar", **bundle_kwargs)
    assert a.read_bytes() == b.read_bytes()
    c = create_bundle(
        digits_mlp, tmp_path / "c.tar", **(bundle_kwargs | {"created": datetime(2025, 6, 1, tzinfo=UTC)})
    )
    assert c.read_bytes() != a.read_bytes()  # the determinism test can fail: inputs do matter


def test_created_from_source_date_epoch(digits_mlp, bundle_kwargs, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    kw = {k: v for k, v in bundle_kwargs.items() if k != "created"}
    a = create_bundle(digits_mlp, tmp_path / "a.tar", **kw)
    b = create_bundle(digits_mlp, tmp_path / "b.tar", **kw)
    assert read_manifest(a).created == datetime.fromtimestamp(1700000000, tz=UTC)
    assert a.read_bytes() == b.read_bytes()


def test_metadata_and_extra_files(digits_mlp, bundle_kwargs, tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# digits\n")
    labels = [f"digit-{i}" for i in range(10)]
    out = create_bundle(
        digits_mlp,
        tmp_path / "m.tar",
        **bundle_kwargs,
        postprocess=Postprocess(labels=labels),
        metrics=Metrics(accuracy=0.97),
        lineage=Lineage(parent_version="0.9.0", tags={"team": "vision"}),
        extra_files={"docs/card.md": card},
    )
    m = read_manifest(out)
    assert m.metrics.accuracy == 0.97 and m.lineage.parent_version == "0.9.0"
    assert m.files["docs/card.md"].size == card.stat().st_size
    with Bundle.open(out, tmp_path / "x") as b:
        assert (b.root / "docs" / "card.md").read_text() == "# digits\n"
        assert b.reference["classes"]["labels"] == labels
        b.verify()


def _png_digits(x: np.ndarray) -> list[bytes]:
    out = []
    for row in x:
        buf = io.BytesIO()
        Image.fromarray(np.clip(row.reshape(8, 8) * 16, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def test_image_contract_end_to_end(digits_mlp, golden_x, tmp_path):
    """PNG bytes -> decode -> float -> scale -> flatten: the same contract at build time and on 'the device'."""
    steps = [
        {"op": "decode_image", "mode": "L"},
        {"op": "to_float"},
        {"op": "scale", "factor": 1 / 256},
        {"op": "reshape", "shape": [64]},
    ]
    pngs = _png_digits(golden_x)
    out = create_bundle(
        digits_mlp,
        tmp_path / "img.tar",
        name="digits-img",
        version="1.0.0",
        variant="cpu",
        inputs_raw=pngs,
        preprocess=steps,
        created=CREATED,
    )
    with Bundle.open(out, tmp_path / "x") as b:
        assert b.golden.inputs_raw == pngs
        b.verify()
        feeds = b.model_inputs(pngs[:3])
        np.testing.assert_allclose(feeds["input"], np.clip(golden_x[:3] * 16, 0, 255) / 256, atol=1e-6)


def test_verify_catches_a_swapped_model(digits_bundle, digits_mlp_v2, tmp_path):
    # A model with the same signature but other weights, hashes updated: only the golden set can tell.
    bad = rebuild(digits_bundle, tmp_path / "swap.tar", replace={"model.onnx": digits_mlp_v2.read_bytes()})
    with (
        Bundle.open(bad, tmp_path / "x") as b,
        pytest.raises(GoldenMismatchError, match="probabilities") as ei,
    ):
        b.verify()
    assert "do not activate" in ei.value.hint


def test_verify_catches_tampered_expected_outputs(digits_bundle, tmp_path):
    with Bundle.open(digits_bundle, tmp_path / "orig") as b:
        g = b.golden
    buf = io.BytesIO()
    arrays = dict(np.load(tmp_path / "orig" / "golden.npz"))
    arrays["expected/probabilities"] = g.expected["probabilities"] + np.float32(0.01)
    np.savez(buf, **arrays)
    bad = rebuild(digits_bundle, tmp_path / "t.tar", replace={"golden.npz": buf.getvalue()})
    with Bundle.open(bad, tmp_path / "x") as b, pytest.raises(GoldenMismatchError, match=r"16 samples off"):
        b.verify()


def test_verify_catches_preprocessing_skew(digits_bundle, tmp_path):
    """The manifest's contract changed (say, a different scale) while the golden set did not."""

    def edit(m):
        m.preprocess[0] = type(m.preprocess[0])(op="scale", factor=1 / 15, offset=0.0)

    bad = rebuild(digits_bundle, tmp_path / "skew.tar", manifest_edit=edit)
    with (
        Bundle.open(bad, tmp_path / "x") as b,
        pytest.raises(GoldenMismatchError, match="preprocessing contract"),
    ):
        b.verify()


def test_verify_model_onnxruntime_cannot_load(digits_bundle, tmp_path):
    bad = rebuild(digits_bundle, tmp_path / "junk.tar", replace={"model.onnx": b"\x08\x07garbage" * 100})
    with (
        Bundle.open(bad, tmp_path / "x") as b,
        pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"),
    ):
        b.verify()


def test_verify_model_with_another_signature(digits_bundle, tmp_path):
    def edit(m):
        m.outputs[1].name = "scores"

    bad = rebuild(digits_bundle, tmp_path / "sig.tar", manifest_edit=edit)
    with (
        Bundle.open(bad, tmp_path / "x") as b,
        pytest.raises(GoldenMismatchError, match="model file was swapped"),
    ):
        b.verify()


def test_verify_rechecks_hashes_on_disk(digits_bundle, tmp_path):
    b = Bundle.open(digits_bundle, tmp_path / "x")
    data = bytearray(b.model_path.read_bytes())
    data[-10] ^= 0xFF
    b.model_path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.onnx has sha256"):
        b.verify()


# --- create refuses bad input and writes nothing -----------------------------------------------------------


def _create(tmp_path, model, kw, **over):
    out = tmp_path / "out" / "b.tar"
    try:
        return create_bundle(model, out, **(kw | over))
    finally:
        if not out.exists() and out.parent.exists():
            assert list(out.parent.iterdir()) == [], "no partial archive may be left"


def test_create_refuses_model_onnxruntime_cannot_load(bundle_kwargs, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(2000))
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load junk.onnx"):
        _create(tmp_path, junk, bundle_kwargs)
    assert not (tmp_path / "out" / "b.tar").exists()
    txt = tmp_path / "model.pkl"
    txt.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model format '.pkl'"):
        _create(tmp_path, txt, bundle_kwargs)


@pytest.mark.parametrize(
    ("over", "error", "pattern"),
    [
        ({"version": "1.0"}, ManifestError, "version.*semver"),
        ({"name": "Digits!"}, ManifestError, "name"),
        ({"preprocess": [{"op": "scale", "factor": "lots"}]}, PreprocessError, r"step 0 \(scale\): factor"),
        (
            {"preprocess": [{"op": "normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}]},
            PreprocessError,
            "3 channels",
        ),
        ({"inputs_raw": np.zeros((0, 64), np.float32)}, InputError, "golden set is empty"),
        ({"preprocess": [{"op": "reshape", "shape": [8, 8]}]}, Exception, "failed on the inputs"),
        ({"inputs_raw": np.full((4, 64), np.nan, np.float32)}, Exception, "NaN"),
        ({"postprocess": Postprocess(output="nope")}, InputError, "'nope' is not a model output"),
        ({"postprocess": Postprocess(labels=["a", "b"])}, InputError, "2 labels for 10 classes"),
        ({"extra_files": {"../x": __file__}}, InputError, "not allowed"),
        ({"extra_files": {"model.onnx": __file__}}, InputError, "reserved"),
    ],
)
def test_create_refuses_bad_input(digits_mlp, bundle_kwargs, tmp_path, over, error, pattern):
    with pytest.raises(error, match=pattern) as ei:
        _create(tmp_path, digits_mlp, bundle_kwargs, **over)
    assert getattr(ei.value, "hint", None)
    assert not (tmp_path / "out" / "b.tar").exists()


def test_golden_npz_never_needs_pickle(digits_bundle):
    entries = read_entries(digits_bundle)
    z = np.load(io.BytesIO(entries["golden.npz"]), allow_pickle=False)
    assert json.loads(z["meta"].tobytes())["raw_kind"] == "array"
    assert sorted(z.files) == ["expected/label", "expected/probabilities", "input/input", "meta", "raw"]


def test_bundle_open_does_not_touch_the_archive(digits_bundle, tmp_path):
    before = digits_bundle.read_bytes()
    with Bundle.open(digits_bundle, tmp_path / "x") as b:
        b.verify()
    assert digits_bundle.read_bytes() == before
    assert set(tree(tmp_path / "x")) == {"manifest.json", "model.onnx", "golden.npz", "reference.json"}


def test_scale_contract_is_recorded(digits_bundle):
    assert [s.model_dump() for s in read_manifest(digits_bundle).preprocess] == [SCALE[0] | {"offset": 0.0}]


def test_tflite_bundle(tmp_path, rng):
    from bundletools import build_tflite_dense

    w, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    model = build_tflite_dense(w, b, tmp_path / "dense.tflite")
    x = rng.normal(size=(8, 6)).astype(np.float32)
    out = create_bundle(
        model,
        tmp_path / "t.tar",
        name="dense",
        version="0.1.0",
        variant="cpu-tflite",
        inputs_raw=x * 2,
        preprocess=[{"op": "scale", "factor": 0.5}],
        postprocess=Postprocess(softmax=True),
        created=CREATED,
    )
    m = read_manifest(out)
    assert (m.model_file, m.model_format) == ("model.tflite", "tflite")
    assert [(t.name, t.shape) for t in m.inputs] == [("x", ["batch", 6])]
    with Bundle.open(out, tmp_path / "x") as bundle:
        np.testing.assert_allclose(bundle.golden.expected["scores"], x @ w.T + b, rtol=1e-4, atol=1e-5)
        assert bundle.verify().ok
        assert 0.33 < bundle.reference["confidence"]["mean"] <= 1.0
    w2 = w.copy()
    w2[0, 0] += 1.0
    swapped = rebuild(
        out,
        tmp_path / "s.tar",
        replace={"model.tflite": build_tflite_dense(w2, b, tmp_path / "d2.tflite").read_bytes()},
    )
    with Bundle.open(swapped, tmp_path / "y") as bundle, pytest.raises(GoldenMismatchError):
        bundle.verify()


def test_verify_refuses_runtime_outside_the_manifest_range(digits_bundle, tmp_path):
    def edit(m):
        m.runtime.onnxruntime = ">=99.0"

    bad = rebuild(digits_bundle, tmp_path / "rt.tar", manifest_edit=edit)
    with (
        Bundle.open(bad, tmp_path / "x") as b,
        pytest.raises(ModelLoadError, match="needs onnxruntime >=99.0"),
    ):
        b.verify()
