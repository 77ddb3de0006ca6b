"""A model nobody here wrote: silero-vad's shipped ONNX (stateful, control flow, scalar input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.optimize import optimize


def _silero(name: str) -> Path:
    silero = pytest.importorskip("silero_vad")
    p = Path(silero.__file__).parent / "data" / name
    if not p.is_file():
        pytest.skip(f"{name} is not shipped with this silero-vad")
    return p


def test_silero_vad_stateful_model(tmp_path, fast, one_core):
    from edgefleet.optimize._zoo import vad_dataset

    model = _silero("silero_vad.onnx")
    data = vad_dataset(model, seconds=6)
    calib = {k: v[::4] for k, v in data.items()}
    ev = {k: v[1::2] for k, v in data.items()}
    rep = optimize(
        model,
        calib=calib,
        eval=ev,
        profile=one_core,
        objective="size",
        max_drop=1.0,
        variants=["fp32", "dynamic-int8", "static-int8-pt-entropy"],
        out_dir=tmp_path / "o",
        settings=fast,
    )
    # the first output (speech probability) is scored by cosine similarity; the state output is a side result
    assert rep.task == "regression" and rep.score_output == "output" and rep.metric == "cosine"
    assert any(w["code"] == "subgraphs" for w in rep.warnings)
    qdq = rep.variant("static-int8-pt-entropy")
    assert qdq.status == "failed" and "control-flow subgraphs" in qdq.error
    dyn = [v for v in rep.variants if v.name.startswith("dynamic-int8") and v.status == "ok"]
    assert dyn and all(v.size_ratio > 2.5 for v in dyn)  # the layers inside If branches are quantized
    # one call per sample: fixed state axis means no stacking, and batch throughput says so
    fp32 = rep.variant("fp32")
    assert any(t.note == "model has a fixed batch size" for t in fp32.bench.throughput)
    assert rep.chosen is not None
    speech = data["input"].shape[0]
    assert rep.eval_samples == len(range(1, speech, 2)) and np.isfinite(fp32.quality.score)
