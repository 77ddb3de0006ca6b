"""Distillation: real torch teacher and students on digits, and ``edgefleet distill`` as a user runs it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clirun import run_cli
from edgefleet.optimize._recipe import Candidate, pareto_front

torch = pytest.importorskip("torch")


def _x(split, part="train"):
    x = split.x_train if part == "train" else split.x_test
    return (x / 16).reshape(-1, 1, 8, 8).astype(np.float32)


def test_pareto_front_keeps_the_undominated_and_sorts_by_size():
    cands = [
        Candidate("a", params=100, macs=1, score=0.90, best_epoch=1),
        Candidate("b", params=200, macs=1, score=0.95, best_epoch=1),
        Candidate("c", params=300, macs=1, score=0.94, best_epoch=1),  # bigger and worse than b
        Candidate("d", params=100, macs=1, score=0.85, best_epoch=1),  # same size, worse than a
    ]
    front = pareto_front(cands)
    assert [c.name for c in front] == ["a", "b"]
    assert not cands[2].on_front and not cands[3].on_front


@pytest.mark.torch
@pytest.mark.slow
def test_distillation_beats_labels_alone_with_the_same_budget(digits_split, digits_cnn):
    """50 labelled samples plus ~1200 unlabeled ones the teacher scores softly, against the same student
    trained on the 50 labels for the same number of optimizer steps."""
    from edgefleet.optimize._distill import DistillConfig, accuracy, distill
    from edgefleet.optimize._students import build_student

    x, y = _x(digits_split), digits_split.y_train
    xte, yte = _x(digits_split, "test"), digits_split.y_test
    n_lab, epochs, batch = 50, 8, 64
    ex = torch.from_numpy(x[:1])
    distilled = build_student("width0.5", digits_cnn, ex)
    cfg = DistillConfig(epochs=epochs, batch=batch, lr=2e-2, temperature=2, val_fraction=0.0, patience=epochs)
    distill(digits_cnn, distilled, x[:n_lab], y[:n_lab], unlabeled=x[n_lab:], config=cfg)
    steps = epochs * math.ceil(len(x) / batch)
    alone = build_student("width0.5", digits_cnn, ex)
    base_cfg = DistillConfig(alpha=1.0, epochs=steps, batch=batch, lr=2e-2, val_fraction=0.0, patience=steps)
    distill(digits_cnn, alone, x[:n_lab], y[:n_lab], config=base_cfg)
    acc_d, acc_l = accuracy(distilled, xte, yte), accuracy(alone, xte, yte)
    assert acc_d > acc_l + 0.1, (acc_d, acc_l)  # measured: 0.83 vs 0.41


def _cli(capsys, *args):
    """``edgefleet distill ...`` in this process (stderr is not a terminal, as in a log or CI)."""
    return run_cli(capsys, ["distill", *args])


@pytest.fixture
def teacher_files(tmp_path, digits_split, digits_cnn):
    t = tmp_path / "teacher.pt"
    torch.save(digits_cnn, t)
    data = tmp_path / "train.npz"
    np.savez(data, input=_x(digits_split)[:300], labels=digits_split.y_train[:300])
    return t, data


@pytest.mark.torch
def test_cli_distill_writes_student_log_curve_and_checkpoints(tmp_path, teacher_files, capsys):
    t, data = teacher_files
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "--teacher", t, "--data", data, "-o", out, "--student", "width0.25",
                        "--epochs", "3", "--feature-weight", "0.1")  # fmt: skip
    assert code == 0, err
    # not a terminal: one plain progress line per epoch on stderr
    assert [ln for ln in err.splitlines() if ln.startswith("distill width0.25: ")][-1].startswith(
        "distill width0.25: 3/3"
    )
    summary = json.loads((out / "distill.json").read_text())
    assert summary["student"]["params"] * 10 < summary["teacher"]["params"]
    log = [json.loads(ln) for ln in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "best.pt").is_file()
    student = torch.load(out / "student.pt", weights_only=False)
    import onnxruntime as ort

    x = _x_from(data)[:5]
    got = ort.InferenceSession(str(out / "student.onnx")).run(None, {"input": x})[0]
    with torch.no_grad():
        assert np.allclose(got, student(torch.from_numpy(x)).numpy(), atol=1e-4)


def _x_from(path):
    with np.load(path) as z:
        return z["input"]


@pytest.mark.torch
def test_cli_distill_label_free_scores_agreement(tmp_path, teacher_files, capsys):
    t, data = teacher_files
    nolab = tmp_path / "nolab.npz"
    np.savez(nolab, input=_x_from(data))
    out = tmp_path / "o"
    code, stdout, err = _cli(
        capsys,
        "--teacher",
        t,
        "--data",
        nolab,
        "-o",
        out,
        "--student",
        "width0.25",
        "--epochs",
        "2",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["score"] == "agreement" and 0 < summary["student"]["agreement"] <= 1


@pytest.mark.torch
def test_cli_distill_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, teacher_files, capsys):
    t, data = teacher_files
    bad = tmp_path / "bad.pt"
    bad.write_bytes(t.read_bytes()[:200])  # truncated
    cases = [
        (["--teacher", bad, "--data", data], "cannot be loaded"),
        (["--teacher", tmp_path / "none.pt", "--data", data], "does not exist"),
        (["--teacher", data, "--data", data], "cannot be loaded"),
        (["--teacher", t, "--data", t], "which one is the input"),
        (["--teacher", t, "--data", bad], "not a readable .npz"),
        (["--teacher", t, "--data", data, "--student", "width2"], "between 0 and 1"),
        (["--teacher", t, "--data", data, "--student", "what?"], "not understood"),
        (["--teacher", t, "--data", data, "--alpha", "2"], "--alpha"),
    ]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, input=np.zeros((4, 3, 5, 5), np.float32))
    cases.append((["--teacher", t, "--data", wrong], "does not run on --data inputs"))
    for args, msg in cases:
        out = tmp_path / "never"
        code, _, err = _cli(capsys, *args, "-o", out)
        assert code == 1, (args, err)
        assert msg in err and "Traceback" not in err, err
        assert not out.exists()
