"""Structured pruning (torch-pruning) removes whole channels; unstructured pruning is only a sparsity report."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import ConfigError

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _x(split, part="train"):
    x = split.x_train if part == "train" else split.x_test
    return (x / 16).reshape(-1, 1, 8, 8).astype(np.float32)


def test_half_the_channels_go_and_the_onnx_file_shrinks(tmp_path, digits_cnn, digits_split):
    from edgefleet.optimize._convert import load_source
    from edgefleet.optimize._distill import accuracy
    from edgefleet.optimize._prune import structured_prune

    x = _x(digits_split)
    res = structured_prune(digits_cnn, x, 0.5, y=digits_split.y_train)
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)]
    orig = [m for m in digits_cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [c.out_channels // 2 for c in orig]
    assert res.params_after < res.params_before * 0.35 and res.macs_after < res.macs_before * 0.35
    assert "structured pruning removed" in res.notes[0]
    # the original is untouched and the classifier keeps its 10 outputs
    assert [c.out_channels for c in orig] == [8, 16, 16]
    assert res.model(torch.from_numpy(x[:3])).shape == (3, 10)
    a = load_source(digits_cnn, tmp_path / "a", example_inputs=x[:1])
    b = load_source(res.model, tmp_path / "b", example_inputs=x[:1])
    assert b.path.stat().st_size < a.path.stat().st_size * 0.4
    assert 0.1 <= accuracy(res.model, _x(digits_split, "test"), digits_split.y_test) <= 1


def test_iterative_taylor_pruning_fine_tunes_between_steps(digits_cnn, digits_split):
    from edgefleet.optimize._distill import DistillConfig, accuracy, distill
    from edgefleet.optimize._prune import structured_prune

    x, y = _x(digits_split), digits_split.y_train
    xte, yte = _x(digits_split, "test"), digits_split.y_test
    bare = structured_prune(digits_cnn, x, 0.6, y=y, importance="taylor", global_pruning=True, steps=2)
    calls = []

    def fine_tune(model, step):
        calls.append(step)
        distill(digits_cnn, model, x, y, config=DistillConfig(epochs=3, val_fraction=0.1, seed=step))

    tuned = structured_prune(
        digits_cnn, x, 0.6, y=y, importance="taylor", global_pruning=True, steps=2, fine_tune=fine_tune
    )
    assert calls == [1, 2]
    assert [s["step"] for s in tuned.steps] == [1, 2]
    assert tuned.steps[0]["params"] > tuned.steps[1]["params"]
    assert accuracy(tuned.model, xte, yte) > accuracy(bare.model, xte, yte) + 0.05


def test_bad_settings_and_attention_models_are_clear_errors(digits_cnn, digits_encoder, digits_split):
    from edgefleet.optimize._prune import structured_prune

    x = _x(digits_split)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        structured_prune(digits_cnn, x, 1.5)
    with pytest.raises(ConfigError, match="importance"):
        structured_prune(digits_cnn, x, 0.5, importance="random")
    xe = (digits_split.x_train / 16).reshape(-1, 8, 8).astype(np.float32)
    with pytest.raises(ConfigError, match="attention") as e:
        structured_prune(digits_encoder, xe, 0.5)
    assert "--student" in e.value.hint


def test_unstructured_pruning_is_a_sparsity_report_not_a_choice(
    tmp_path, digits_mlp, mlp_npz, fast, one_core
):
    from edgefleet.optimize import optimize

    calib, ev = mlp_npz
    for objective in ("size", "balanced"):
        rep = optimize(
            digits_mlp,
            calib=calib,
            eval=ev,
            profile=one_core,
            objective=objective,
            variants=["fp32", "pruned-50"],
            out_dir=tmp_path / objective,
            settings=fast,
        )
        pruned = rep.variant("pruned-50")
        assert pruned.sparsity == pytest.approx(0.5, abs=0.02)
        assert pruned.outcome == "rejected" and "a sparsity report, not a variant" in pruned.reason
        assert rep.chosen == "fp32"
