"""The two-stage trigger: the energy gate passes loud chunks and a hangover after them; the big model runs
only on what the gate passes; on silero-vad's shipped model over synthetic speech it skips the pauses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.power._trigger import EnergyGate, TwoStage


def test_energy_gate_threshold_and_hangover():
    gate = EnergyGate(threshold_db=-20, hangover=2)
    loud = np.full(512, 0.2, np.float32)  # -14 dBFS
    quiet = np.full(512, 0.05, np.float32)  # -26 dBFS
    assert [gate(c) for c in (quiet, loud, quiet, quiet, quiet, loud)] == [
        False,
        True,
        True,
        True,
        False,
        True,
    ]
    assert not EnergyGate()(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="hangover"):
        EnergyGate(hangover=-1)


def test_two_stage_counts_big_model_runs():
    calls = []
    stage = TwoStage(EnergyGate(threshold_db=-20, hangover=0), lambda x: calls.append(x) or 1.0, 0.0)
    out = [stage(np.full(4, v, np.float32)) for v in (0.0, 0.5, 0.0, 0.9)]
    assert out == [0.0, 1.0, 0.0, 1.0] and stage.big_runs == len(calls) == 2 and stage.share == 0.5


def test_silero_vad_behind_the_gate_skips_pauses():
    import onnxruntime as ort
    import silero_vad

    from edgefleet.optimize._zoo import synth_speech, vad_frames

    sess = ort.InferenceSession(
        str(Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"), providers=["CPUExecutionProvider"]
    )
    frames = vad_frames(synth_speech(8.0, seed=1))
    state = np.zeros((2, 1, 128), np.float32)

    def big(f):
        nonlocal state
        p, state = sess.run(None, {"input": f[None], "state": state, "sr": np.array(16000, np.int64)})
        return float(p.reshape(-1)[0])

    stage = TwoStage(EnergyGate(), big, 0.0)
    probs = np.array([stage(f, f[64:]) for f in frames])
    assert 0.2 < stage.share < 0.95  # pauses skipped, speech kept
    assert (probs > 0.5).sum() > 10  # the model still finds the speech it is given
