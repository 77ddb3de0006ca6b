"""``edgefleet optimize model.pt --student ... --prune ... --qat on``: the torch recipe as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

FAST_ENV = {
    "EDGEFLEET_OPTIMIZE_RUNS": "10",
    "EDGEFLEET_OPTIMIZE_WARMUP_RUNS": "2",
    "EDGEFLEET_OPTIMIZE_THROUGHPUT_RUNS": "2",
    "EDGEFLEET_OPTIMIZE_INTERLEAVE_ROUNDS": "3",
    "EDGEFLEET_OPTIMIZE_INTERLEAVE_RUNS": "3",
    "EDGEFLEET_OPTIMIZE_INTERLEAVE_ROUND_S": "0.002",
}


@pytest.fixture
def files(tmp_path, digits_cnn, digits_split):
    x = (digits_split.x_train / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    xte = (digits_split.x_test / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    torch.save(digits_cnn, tmp_path / "model.pt")
    np.savez(tmp_path / "train.npz", input=x, labels=digits_split.y_train)
    np.savez(tmp_path / "calib.npz", input=x[:64])
    np.savez(tmp_path / "eval.npz", input=xte[:200], labels=digits_split.y_test[:200])
    (tmp_path / "p.yaml").write_text("name: t\ncores: 1\n")
    return tmp_path


def _optimize(capsys, monkeypatch, *args):
    from edgefleet.cli import main

    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    try:
        main(["optimize", *map(str, args)])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_recipe_distills_prunes_quantizes_and_reports_every_stage(files, capsys, monkeypatch):
    d = files
    out = d / "out"
    code, stdout, err = _optimize(
        capsys, monkeypatch, d / "model.pt", "--student", "width0.75", "--prune", "0.5", "--prune-importance", "taylor", "--train",
        d / "train.npz", "--calib", d / "calib.npz", "--eval", d / "eval.npz", "-o", out, "--epochs", "2",
        "--variants", "fp32,dynamic-int8", "--qat", "on", "--no-memory", "--profile", d / "p.yaml",
        "--max-drop", "100",
    )  # fmt: skip
    assert code == 0, err
    assert "distill width0.75: 2/2" in err and "prune step 1 fine-tune: 2/2" in err  # plain progress lines
    rec = json.loads((out / "recipe.json").read_text())
    names = [s["stage"] for s in rec["stages"]]
    assert names == ["teacher", "student width0.75 (distilled)", "pruned 50% (taylor)", "QAT int8 (QDQ)"]
    teacher, student, pruned, qat = rec["stages"]
    assert student["params"] < teacher["params"] and pruned["params"] < student["params"] * 0.5
    assert pruned["macs"] < student["macs"] and qat["macs"] == pruned["macs"]
    for s in rec["stages"]:
        assert s["size_bytes"] > 0 and 0 < s["p50_ms"] <= s["p95_ms"] and 0 <= s["score"] <= 1
    assert "QAT loses" in rec["qat"] and (out / "model-qat.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] == rec["chosen"] and (out / "model.onnx").is_file()
    assert "torch recipe: every stage" in stdout and "variants (" in stdout
    # the optimizer worked on the pruned network: its fp32 variant is as small as the pruned stage's export
    assert abs(report["variants"][0]["size_bytes"] - pruned["size_bytes"]) < pruned["size_bytes"] * 0.2


def test_recipe_refuses_what_it_cannot_do(files, capsys, monkeypatch):
    d = files
    onnx_model = d / "m.onnx"
    onnx_model.write_bytes(b"not read: the recipe options are refused first")
    cases = [
        ([d / "model.pt"], "needs --train data"),
        ([onnx_model, "--student", "auto"], "need a torch model (.pt)"),
        ([d / "model.pt", "--train", d / "train.npz", "--student", "tiny"], "not understood"),
        ([d / "model.pt", "--train", d / "train.npz", "--qat", "sometimes"], "qat mode"),
        ([d / "model.pt", "--train", d / "train.npz", "--prune", "1.5"], "between 0 and 1"),
        ([d / "model.pt", "--train", d / "train.npz", "--prune-importance", "lottery"], "--prune-importance"),
    ]
    for args, msg in cases:
        out = d / "never"
        code, _, err = _optimize(
            capsys, monkeypatch, *args, "--calib", d / "calib.npz", "--eval", d / "eval.npz", "-o", out
        )
        assert code == 1 and msg in err and "Traceback" not in err, (args, err)
        assert not out.exists()
