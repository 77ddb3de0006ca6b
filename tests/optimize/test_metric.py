"""Quality judged the way the model's task is judged: the task inferred from outputs and labels, said in the
report, overridable with --metric; non-finite activations (attention masks) no longer fail static calibration.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.optimize._tasks import ctc_recognizer, sentence_encoder, sentences, strips

from edgefleet.errors import ConfigError
from edgefleet.optimize import optimize
from edgefleet.optimize._quality import ctc_greedy_decode, edit_distance, infer_task, measure_quality
from edgefleet.optimize._runner import TensorInfo

pytest.importorskip("torch")


def _out(name: str = "y") -> list[TensorInfo]:
    return [TensorInfo(name, np.dtype("float32"), None)]


def test_the_task_is_inferred_from_the_outputs_and_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    emb = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    frames = rng.normal(size=(4, 30, 6))
    frames[..., 0] += 3.0  # the blank wins most frames, as in a trained CTC model
    cases = [
        (probs, False, "classification", "agreement"),
        (logits, True, "classification", "accuracy"),
        (logits, False, "classification", "agreement"),
        (emb, False, "embedding", "cosine"),
        (frames, False, "sequence", "sequence"),
        (rng.normal(size=(20, 1)) * 50, False, "regression", "relative-error"),
        (rng.uniform(size=(20, 1)), False, "regression", "cosine"),
    ]
    for arr, labels, kind, metric in cases:
        t = infer_task(_out(), {"y": [arr.astype(np.float32)]}, labels)
        assert (t.kind, t.metric) == (kind, metric), (arr.shape, t)
        assert t.why
    assert infer_task(_out(), {"y": [frames.astype(np.float32)]}, False).blank == 0
    # without a dominant blank, per-frame scores stay per-frame class agreement
    flat = rng.normal(size=(4, 30, 6)).astype(np.float32)
    assert infer_task(_out(), {"y": [flat]}, False).kind == "classification"
    # --metric overrides, and refuses what cannot apply
    t = infer_task(_out(), {"y": [emb.astype(np.float32)]}, False, metric="agreement")
    assert (t.kind, t.metric, t.why) == ("classification", "agreement", "--metric agreement")
    with pytest.raises(ConfigError, match="needs labels"):
        infer_task(_out(), {"y": [emb.astype(np.float32)]}, False, metric="accuracy")
    with pytest.raises(ConfigError, match="unknown"):
        infer_task(_out(), {"y": [emb.astype(np.float32)]}, False, metric="bleu")
    with pytest.raises(ConfigError, match=r"\[N, T, C\]"):
        infer_task(_out(), {"y": [emb.astype(np.float32)]}, False, metric="sequence")


def test_embedding_cosine_regression_error_and_ctc_figures():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 16))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    got = ref.copy()
    got[:5] = -got[:5]  # five vectors flipped: cosine -1 there
    t = infer_task(_out(), {"y": [ref.astype(np.float32)]}, False)
    q = measure_quality(t, {"y": [ref]}, {"y": [got]}, None)
    assert q.cosine == pytest.approx((45 - 5) / 50) and q.score == pytest.approx(80.0)
    assert q.cosine_p5 == pytest.approx(-1.0)
    # regression: relative L2 error, score 100 - error %
    y = rng.normal(size=(40, 1)) * 10
    t = infer_task(_out(), {"y": [y]}, False)
    q = measure_quality(t, {"y": [y]}, {"y": [y * 1.02]}, None)
    assert q.relative_error == pytest.approx(0.02) and q.score == pytest.approx(98.0)
    # CTC: best path merges repeats and drops blanks
    frames = np.full((1, 7, 4), -5.0)
    for i, c in enumerate([0, 2, 2, 0, 2, 3, 0]):
        frames[0, i, c] = 5.0
    assert ctc_greedy_decode(frames, 0) == [(2, 2, 3)]
    assert edit_distance((1, 2, 3), (1, 3)) == 1 and edit_distance((), (4, 4)) == 2
    other = frames.copy()
    other[0, 5] = frames[0, 4]  # frame 5 now repeats class 2: decodes to (2, 2)
    t = infer_task(_out(), {"y": [frames]}, False, metric="sequence")
    q = measure_quality(t, {"y": [frames, frames]}, {"y": [frames, other]}, None)
    assert q.sequence_exact == pytest.approx(0.5) and q.cer == pytest.approx(1 / 6) and q.score == 50.0


@pytest.mark.slow
def test_sentence_encoder_is_judged_by_cosine_and_entropy_survives_its_masks(tmp_path, fast, one_core):
    model = sentence_encoder(tmp_path / "enc.onnx")
    ids, mask = sentences(48, seed=3)
    calib = {"input_ids": ids[:16], "attention_mask": mask[:16]}
    ev = {"input_ids": ids[16:], "attention_mask": mask[16:]}
    # onnxruntime's own entropy calibration fails on the -inf attention scores
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    from edgefleet.optimize._build import _Reader

    reader = _Reader([{"input_ids": ids[i : i + 1], "attention_mask": mask[i : i + 1]} for i in range(8)])
    with pytest.raises(ValueError, match="finite"):
        quantize_static(
            str(model), str(tmp_path / "q.onnx"), reader, calibrate_method=CalibrationMethod.Entropy
        )

    rep = optimize(
        model,
        calib=calib,
        eval=ev,
        profile=one_core,
        objective="size",
        max_drop=2.0,
        variants=["fp32", "dynamic-int8-pc", "static-int8-pt-entropy"],
        out_dir=tmp_path / "o",
        settings=fast,
        exclusion=False,
    )
    assert (rep.task, rep.metric) == ("embedding", "cosine") and "L2-normalised 64-wide" in rep.task_reason
    md = (tmp_path / "o" / "report.md").read_text()
    assert "inferred from: rows are L2-normalised" in md and "5th percentile" in md
    ent = rep.variant("static-int8-pt-entropy")
    assert ent.status == "ok", ent.error
    assert any("non-finite values" in n for n in ent.notes)
    for v in (rep.variant("dynamic-int8-pc"), ent):
        q = v.quality
        assert q.metric == "cosine" and q.cosine_p5 <= q.cosine <= 1.0
        assert v.drop == pytest.approx(100.0 * (1.0 - q.cosine), abs=1e-6)  # budget in cosine points


@pytest.mark.slow
def test_ctc_recognizer_is_judged_by_decoded_sequences(tmp_path, fast, one_core):
    model = ctc_recognizer(tmp_path / "ctc.onnx")
    x, _ = strips(64, seed=5)
    rep = optimize(
        model,
        calib={"image": x[:16]},
        eval={"image": x[16:]},
        profile=one_core,
        objective="size",
        max_drop=100.0,
        variants=["fp32", "static-int8-pc-minmax"],
        out_dir=tmp_path / "o",
        settings=fast,
    )
    assert (rep.task, rep.metric) == ("sequence", "sequence") and "CTC blank" in rep.task_reason
    q = rep.variant("static-int8-pc-minmax").quality
    assert q.sequence_exact is not None and q.cer is not None
    assert rep.variant("fp32").quality.score == 100.0 and rep.variant("fp32").quality.cer == 0.0
    assert "CER" in (tmp_path / "o" / "report.md").read_text()
