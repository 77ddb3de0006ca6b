"""optimize() end to end on real models, and every bad input it must refuse without leaving files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.errors import BudgetNotMetError, ConfigError, InputError, ModelLoadError
from edgefleet.optimize import DeviceProfile, optimize

from .conftest import list_dir, make_linear_onnx, make_outlier_mlp, outlier_data

FEW = ["fp32", "dynamic-int8", "static-int8-pt-minmax"]


def test_mlp_end_to_end(tmp_path, digits_mlp, mlp_npz, fast, one_core, digits_split):
    calib, ev = mlp_npz
    out = tmp_path / "out"
    rep = optimize(
        digits_mlp,
        calib=calib,
        eval=ev,
        max_drop=1.0,
        profile=one_core,
        variants=[*FEW, "fp16", "pruned-50"],
        out_dir=out,
        keep_variants=True,
        settings=fast,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx",
        "plot.png",
        "report.json",
        "report.md",
        "variants",
    ]
    assert rep.chosen and rep.metric == "accuracy" and rep.score_output == "probabilities"
    # The written model is the chosen variant and runs.
    chosen_bytes = (out / "variants" / f"{rep.chosen}.onnx").read_bytes()
    assert (out / "model.onnx").read_bytes() == chosen_bytes
    sess = ort.InferenceSession(str(out / "model.onnx"))
    n = rep.eval_samples  # the settings cap evaluation at the first N samples
    assert n == fast.max_eval_samples
    probs = sess.run(["probabilities"], {"input": (digits_split.x_test[:n] / 16).astype(np.float32)})[0]
    acc = float((probs.argmax(1) == digits_split.y_test[:n]).mean()) * 100
    assert acc == pytest.approx(rep.chosen_result.quality.score, abs=1e-6)
    # int8 shrinks the file; fp16 halves it; pruning reports real sparsity and no size change.
    size = {v.name: v.size_bytes for v in rep.variants}
    # (a 5k-parameter model: names, scales and graph structure weigh as much as the int8 weights)
    assert size["static-int8-pt-minmax"] < size["fp32"] / 2 and size["dynamic-int8"] < size["fp32"] / 2
    assert size["fp16"] < size["fp32"] * 0.6
    pruned = rep.variant("pruned-50")
    assert pruned.sparsity == pytest.approx(0.5, abs=0.02)
    assert any("no speed-up" in n for n in pruned.notes)
    assert abs(size["pruned-50"] - size["fp32"]) < size["fp32"] * 0.05
    assert pruned.bench.compressed_bytes < rep.variant("fp32").bench.compressed_bytes
    # Every variant has a verdict and a reason; the report files agree with the object.
    for v in rep.variants:
        assert v.outcome in ("chosen", "lost", "rejected", "failed") and v.reason
    md = (out / "report.md").read_text()
    for v in rep.variants:
        assert f"| {v.name} | {v.outcome} |" in md
    data = json.loads((out / "report.json").read_text())
    assert data["chosen"] == rep.chosen and len(data["variants"]) == len(rep.variants)
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert [s.name for s in rep.preparation] == [
        "opset upgrade",
        "quant_pre_process",
        "ORT offline optimization",
    ]
    # Never slower than the baseline beyond noise for the balanced objective.
    if rep.chosen != "fp32":
        assert rep.chosen_result.interleaved is not None and rep.chosen_result.interleaved.verdict != "slower"


def test_size_objective_picks_a_small_int8(tmp_path, digits_mlp, mlp_npz, fast, one_core):
    calib, ev = mlp_npz
    rep = optimize(
        digits_mlp,
        calib=calib,
        eval=ev,
        objective="size",
        profile=one_core,
        variants=FEW,
        out_dir=tmp_path / "o",
        settings=fast,
    )
    assert rep.chosen in ("dynamic-int8", "static-int8-pt-minmax")
    assert rep.chosen_result.size_ratio > 2


def test_agreement_is_the_metric_without_labels(tmp_path, digits_mlp, digits_split, fast, one_core):
    calib = {"input": (digits_split.x_train[:64] / 16).astype(np.float32)}
    ev = {"input": (digits_split.x_test / 16).astype(np.float32)}
    rep = optimize(
        digits_mlp,
        calib=calib,
        eval=ev,
        profile=one_core,
        variants=["fp32", "dynamic-int8"],
        out_dir=tmp_path / "o",
        settings=fast,
    )
    assert rep.metric == "agreement" and rep.variant("fp32").quality.score == 100.0
    assert rep.variant("dynamic-int8").quality.agreement is not None


@pytest.mark.parametrize(
    ("variant", "method"), [("static-int8-pt-minmax", "qdq_loss_debug"), ("dynamic-int8", "weight SQNR")]
)
def test_sensitive_node_exclusion_finds_the_bad_layer(tmp_path, fast, one_core, variant, method):
    """One layer that int8 ruins (a weight outlier): the variant misses the budget, the ranking names
    that layer first, and re-quantizing with it in float meets the budget."""
    model = make_outlier_mlp(tmp_path / "m.onnx")
    x = outlier_data(200)
    rep = optimize(
        model,
        calib={"x": x[:64]},
        eval={"x": x[64:]},
        max_drop=2.0,
        objective="size",
        profile=one_core,
        variants=["fp32", variant],
        out_dir=tmp_path / "o",
        settings=fast,
    )
    plain = rep.variant(variant)
    assert plain.drop > 50 and plain.outcome == "rejected"
    assert any("sensitive-node exclusion" in n for n in plain.notes)
    fixed = [v for v in rep.variants if v.name.startswith(f"{variant}-x")]
    assert len(fixed) == 1
    fixed = fixed[0]
    assert fixed.excluded_nodes[0] == "mm_outlier"  # the culprit is ranked first
    assert fixed.drop <= 2.0 and fixed.outcome in ("chosen", "lost")
    assert any(method in n for n in fixed.notes)
    # the excluded layer really stayed float: its weight is still a float initializer in the model
    kept = onnx.load(str(tmp_path / "o" / "model.onnx")) if rep.chosen == fixed.name else None
    if kept is not None:
        assert any(i.name == "W1" and i.data_type == onnx.TensorProto.FLOAT for i in kept.graph.initializer)


def test_exclusion_can_be_switched_off(tmp_path, fast, one_core):
    model = make_outlier_mlp(tmp_path / "m.onnx")
    x = outlier_data(120)
    rep = optimize(
        model,
        calib={"x": x[:64]},
        eval={"x": x[64:]},
        max_drop=2.0,
        objective="size",
        profile=one_core,
        variants=["dynamic-int8"],
        exclusion=False,
        out_dir=tmp_path / "o",
        settings=fast,
    )
    assert [v.name for v in rep.variants] == ["fp32", "dynamic-int8"]  # the baseline is always built
    assert rep.chosen == "fp32" and rep.variant("dynamic-int8").outcome == "rejected"


def test_budget_nothing_meets_writes_the_report_and_raises(tmp_path, digits_mlp, mlp_npz, fast, one_core):
    calib, ev = mlp_npz
    out = tmp_path / "out"
    with pytest.raises(BudgetNotMetError) as e:
        optimize(
            digits_mlp,
            calib=calib,
            eval=ev,
            min_quality=100.5,
            profile=one_core,
            variants=FEW,
            out_dir=out,
            settings=fast,
        )
    rep = e.value.report
    assert rep.chosen is None and "no variant meets the budget" in rep.reason
    assert all(v.outcome == "rejected" and "< required 100.5" in v.reason for v in rep.variants)
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "report.json", "report.md"]  # no model
    assert json.loads((out / "report.json").read_text())["chosen"] is None
    assert "## Chosen: none" in (out / "report.md").read_text()
    assert e.value.hint


def test_device_profile_no_variant_fits(tmp_path, digits_mlp, mlp_npz, fast):
    calib, ev = mlp_npz
    prof = DeviceProfile(name="tiny", cores=1, latency_budget_ms=1e-6, size_budget_mb=0.001)
    with pytest.raises(BudgetNotMetError) as e:
        optimize(
            digits_mlp,
            calib=calib,
            eval=ev,
            profile=prof,
            variants=FEW,
            out_dir=tmp_path / "o",
            settings=fast,
        )
    for v in e.value.report.variants:
        assert "p95" in v.reason and "size" in v.reason


def test_old_device_runtime_rejects_new_opsets(tmp_path, fast):
    calib = {"x": np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)}
    model = make_linear_onnx(tmp_path / "lin.onnx", opset=17)
    prof = DeviceProfile(name="old", cores=1, onnxruntime="1.11")  # runs opsets <= 16
    with pytest.raises(BudgetNotMetError) as e:
        optimize(
            model,
            calib=calib,
            eval=calib,
            profile=prof,
            variants=["fp32", "dynamic-int8"],
            out_dir=tmp_path / "o",
            settings=fast,
        )
    rep = e.value.report
    assert any(w["code"] == "target_runtime" for w in rep.warnings)
    assert all("device runtime: opset 17 needs onnxruntime newer than 1.11" in v.reason for v in rep.variants)


def test_old_opset_is_upgraded_with_parity_checked(tmp_path, fast, one_core):
    model = make_linear_onnx(tmp_path / "old.onnx", opset=11)
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    rep = optimize(
        model,
        calib={"x": x},
        eval={"x": x},
        profile=one_core,
        objective="size",
        variants=["fp32", "static-int8-pc-minmax"],
        out_dir=tmp_path / "o",
        settings=fast,
    )
    step = rep.preparation[0]
    assert step.name == "opset upgrade" and step.applied and "11 -> 17" in step.note
    assert step.max_abs_err is not None and step.max_abs_err < 1e-5
    assert any(w["code"] == "old_opset" for w in rep.warnings)
    assert onnx.load(str(tmp_path / "o" / "model.onnx")).opset_import[0].version >= 13
    assert rep.metric == "agreement"


# --- bad inputs: a clear error, and nothing left behind -----------------------------------------


def _no_leftovers(parent, out):
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")], list_dir(parent)


def test_truncated_model(tmp_path, digits_mlp, mlp_npz, fast, one_core):
    calib, ev = mlp_npz
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(digits_mlp.read_bytes()[: digits_mlp.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(ModelLoadError) as e:
        optimize(bad, calib=calib, eval=ev, profile=one_core, out_dir=out, settings=fast)
    assert "truncated or corrupted" in e.value.message or "not a valid ONNX" in e.value.message
    _no_leftovers(tmp_path, out)


def test_garbage_and_empty_model_files(tmp_path, mlp_npz, fast, one_core):
    calib, ev = mlp_npz
    for name, data in [("garbage.onnx", b"\x00\xffnot a model" * 50), ("empty.onnx", b"")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ModelLoadError) as e:
            optimize(p, calib=calib, eval=ev, profile=one_core, out_dir=tmp_path / "out", settings=fast)
        assert e.value.hint
        _no_leftovers(tmp_path, tmp_path / "out")


def test_opset_the_runtime_lacks(tmp_path, fast, one_core):
    model = make_linear_onnx(tmp_path / "future.onnx", opset=17)
    m = onnx.load(str(model))
    m.opset_import[0].version = 99
    onnx.save_model(m, str(model))
    x = {"x": np.zeros((4, 4), np.float32)}
    with pytest.raises(ModelLoadError) as e:
        optimize(model, calib=x, eval=x, profile=one_core, out_dir=tmp_path / "out", settings=fast)
    assert "opset 99" in e.value.message and "opset <=" in e.value.hint
    _no_leftovers(tmp_path, tmp_path / "out")


def test_op_without_a_kernel(tmp_path, fast, one_core):
    model = make_linear_onnx(tmp_path / "custom.onnx")
    m = onnx.load(str(model))
    m.graph.node[2].op_type = "FancySoftmax"
    m.graph.node[2].domain = "com.example"
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save_model(m, str(model))
    x = {"x": np.zeros((4, 4), np.float32)}
    with pytest.raises(ModelLoadError) as e:
        optimize(model, calib=x, eval=x, profile=one_core, out_dir=tmp_path / "out", settings=fast)
    assert "FancySoftmax" in e.value.message
    _no_leftovers(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    ("calib", "fragment"),
    [
        ({"pixels": np.zeros((4, 64), np.float32)}, "model's inputs are ['input']"),
        ({"input": np.zeros((4, 32), np.float32)}, "shape"),
        ({"input": np.zeros((4, 64), np.int64)}, "dtype int64"),
        ({"input": np.full((4, 64), np.nan, np.float32)}, "NaN"),
    ],
)
def test_bad_calibration_data(tmp_path, digits_mlp, mlp_npz, fast, one_core, calib, fragment):
    _, ev = mlp_npz
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        optimize(digits_mlp, calib=calib, eval=ev, profile=one_core, out_dir=out, settings=fast)
    assert fragment in e.value.message and e.value.hint
    _no_leftovers(tmp_path, out)


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (np.arange(10), "but 10 labels"),
        (np.full(540, 12), "has 10 classes"),
    ],
)
def test_labels_that_do_not_match_the_outputs(
    tmp_path, digits_mlp, mlp_npz, fast, one_core, digits_split, labels, fragment
):
    calib, _ = mlp_npz
    ev = {"input": (digits_split.x_test / 16).astype(np.float32)}
    assert len(digits_split.x_test) == 540
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        optimize(
            digits_mlp,
            calib=calib,
            eval=ev,
            labels=labels,
            profile=one_core,
            variants=FEW,
            out_dir=out,
            settings=fast,
        )
    assert fragment in e.value.message
    _no_leftovers(tmp_path, out)


def test_labels_for_a_model_without_class_scores(tmp_path, fast, one_core):
    import onnx

    model = make_linear_onnx(tmp_path / "lin.onnx", n_out=1)
    x = {"x": np.zeros((4, 4), np.float32)}
    with pytest.raises(InputError, match="not class scores"):
        optimize(
            model,
            calib=x,
            eval=x,
            labels=np.zeros(4, np.int64),
            profile=one_core,
            variants=["fp32"],
            out_dir=tmp_path / "out",
            settings=fast,
        )
    assert onnx  # imported for the fixture model


def test_existing_output_is_kept_until_a_run_succeeds(tmp_path, digits_mlp, mlp_npz, fast, one_core):
    calib, ev = mlp_npz
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already holds files"):
        optimize(digits_mlp, calib=calib, eval=ev, profile=one_core, variants=FEW, out_dir=out, settings=fast)
    # A failing run with overwrite=True must not touch the old output either.
    with pytest.raises(InputError):
        optimize(
            digits_mlp,
            calib={"input": np.zeros((2, 3), np.float32)},
            eval=ev,
            profile=one_core,
            variants=FEW,
            out_dir=out,
            overwrite=True,
            settings=fast,
        )
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    optimize(
        digits_mlp,
        calib=calib,
        eval=ev,
        profile=one_core,
        variants=["fp32"],
        out_dir=out,
        overwrite=True,
        settings=fast,
    )
    assert not (out / "precious.txt").exists() and (out / "model.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_bad_arguments_are_refused_up_front(tmp_path, digits_mlp, mlp_npz, fast):
    calib, ev = mlp_npz
    with pytest.raises(ConfigError, match="objective"):
        optimize(digits_mlp, calib=calib, eval=ev, objective="fastest", out_dir=tmp_path / "o", settings=fast)
    with pytest.raises(ConfigError, match="unknown variant"):
        optimize(digits_mlp, calib=calib, eval=ev, variants=["int3"], out_dir=tmp_path / "o", settings=fast)
    with pytest.raises(ConfigError, match="max_drop"):
        optimize(digits_mlp, calib=calib, eval=ev, max_drop=-1, out_dir=tmp_path / "o", settings=fast)
    with pytest.raises(InputError, match="cannot optimize"):
        optimize(object(), calib=calib, eval=ev, out_dir=tmp_path / "o", settings=fast)
    assert list(tmp_path.iterdir()) == []


def test_sklearn_estimator_is_converted_and_checked(tmp_path, digits_split, fast, one_core):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300).fit(digits_split.x_train / 16, digits_split.y_train)
    calib = {"input": (digits_split.x_train[:64] / 16).astype(np.float32)}
    ev = {"input": (digits_split.x_test / 16).astype(np.float32), "labels": digits_split.y_test}
    rep = optimize(
        clf,
        calib=calib,
        eval=ev,
        profile=one_core,
        variants=["fp32", "dynamic-int8"],
        out_dir=tmp_path / "o",
        settings=fast,
    )
    assert rep.source == "scikit-learn LogisticRegression"
    assert any("skl2onnx" in n for n in rep.source_notes)
    fp32 = rep.variant("fp32")
    n = rep.eval_samples
    assert fp32.quality.accuracy == pytest.approx(
        clf.score(digits_split.x_test[:n] / 16, digits_split.y_test[:n]), abs=0.005
    )


def test_tflite_model_is_measured_and_chosen_as_is(tmp_path, digits_split, fast, one_core):
    pytest.importorskip("ai_edge_litert")
    from sklearn.neural_network import MLPClassifier

    from ._tflite import write_dense_tflite

    clf = MLPClassifier((32,), random_state=0, max_iter=200).fit(
        digits_split.x_train / 16, digits_split.y_train
    )
    path = write_dense_tflite(tmp_path / "m.tflite", list(zip(clf.coefs_, clf.intercepts_, strict=True)), 64)
    ev = {"input": (digits_split.x_test / 16).astype(np.float32), "labels": digits_split.y_test}
    out = tmp_path / "o"
    rep = optimize(path, calib=ev, eval=ev, profile=one_core, out_dir=out, settings=fast)
    assert rep.source_format == "tflite" and rep.chosen == "fp32"
    assert (out / "model.tflite").read_bytes() == path.read_bytes()
    n = rep.eval_samples
    want = clf.score(digits_split.x_test[:n] / 16, digits_split.y_test[:n]) * 100
    assert rep.chosen_result.quality.score == pytest.approx(want, abs=0.5)
    with pytest.raises(InputError, match="has 10 classes"):
        optimize(
            path,
            calib=ev,
            eval=ev,
            labels=np.full(540, 10),
            profile=one_core,
            out_dir=tmp_path / "o2",
            settings=fast,
        )
