"""Two-stage trigger on silero-vad: how much of the audio reaches the big model, and what is saved.

The audio is synthetic speech (``optimize._zoo.synth_speech``: utterances of voiced syllables with pauses,
a faint noise floor) at 16 kHz, cut into silero-vad's 512-sample chunks. The baseline runs silero-vad's
shipped ONNX model on every chunk (carrying its LSTM state). The two-stage run puts
``edgefleet.power._trigger.EnergyGate`` (RMS above a dBFS threshold, with a hangover) in front: the model
runs only on chunks the gate passes (its state carried across the gaps), other chunks answer probability 0.
Reported: share of chunks reaching the model, CPU time of each run (both stages included; ``--reps``
interleaved repetitions, median and spread), and agreement of the speech decisions (p > 0.5) with the
baseline. Thresholds are a second row each: the default (-40 dBFS, 8 chunks of hangover) first.

Run:  .venv/bin/python benchmarks/trigger_bench.py [--seconds 60] [--reps 5]
Writes benchmarks/results/trigger_bench.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [(-40.0, 8), (-30.0, 8), (-50.0, 16)]  # (threshold dBFS, hangover chunks); default first


def run(sess, frames: np.ndarray, gate=None) -> tuple[np.ndarray, int, float]:
    """Speech probability per chunk, model calls, CPU seconds (process time: load on others not counted)."""
    from edgefleet.power._trigger import TwoStage

    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)

    def big(f: np.ndarray) -> float:
        nonlocal state
        p, state = sess.run(None, {"input": f[None], "state": state, "sr": sr})
        return float(p.reshape(-1)[0])

    stage = TwoStage(gate or (lambda _x: True), big, 0.0)
    t0 = time.process_time()
    probs = np.array([stage(f, f[64:]) for f in frames])  # the gate sees the chunk's own 512 samples
    return probs, stage.big_runs, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import onnxruntime as ort
    import silero_vad

    from edgefleet.optimize._zoo import synth_speech, vad_frames
    from edgefleet.power._trigger import EnergyGate

    model = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    frames = vad_frames(synth_speech(args.seconds, seed=0))
    base_probs, _, _ = run(sess, frames)
    base_speech = base_probs > 0.5
    cpu: dict[str, list[float]] = {"every chunk": []}
    rows = {}
    for rep in range(args.reps):  # interleaved: baseline then each setting, every repetition
        _, _, t = run(sess, frames)
        cpu["every chunk"].append(t)
        for thr, hang in SETTINGS:
            name = f"gate {thr:g} dBFS, hangover {hang}"
            probs, calls, t = run(sess, frames, EnergyGate(thr, hang))
            cpu.setdefault(name, []).append(t)
            speech = probs > 0.5
            rows[name] = {
                "threshold_db": thr,
                "hangover_chunks": hang,
                "share_to_model": calls / len(frames),
                "agreement": float(np.mean(speech == base_speech)),
                "speech_chunks_missed": int(np.sum(base_speech & ~speech)),
                "speech_chunks": int(base_speech.sum()),
            }
        print(f"repetition {rep + 1}/{args.reps}", flush=True)
    base = statistics.median(cpu["every chunk"])
    table = [
        {
            "setting": "every chunk (no trigger)",
            "share_to_model": 1.0,
            "cpu_ms": base * 1000,
            "cpu_saved": 0.0,
            "agreement": 1.0,
        }
    ]
    for name, r in rows.items():
        ratios = [t / b for t, b in zip(cpu[name], cpu["every chunk"], strict=True)]
        table.append(
            {
                "setting": name,
                **r,
                "cpu_ms": statistics.median(cpu[name]) * 1000,
                "cpu_saved": 1 - statistics.median(ratios),
                "cpu_ratio_min": min(ratios),
                "cpu_ratio_max": max(ratios),
            }
        )
    print(
        f"{len(frames)} chunks of 32 ms ({args.seconds:g} s), {int(base_speech.sum())} speech chunks by the model"
    )
    print(f"{'setting':34} {'to model':>9} {'CPU ms':>8} {'saved':>7} {'agree':>7} {'missed':>7}")
    for t in table:
        print(
            f"{t['setting']:34} {t['share_to_model']:8.1%} {t['cpu_ms']:8.1f} {t['cpu_saved']:6.1%} "
            f"{t['agreement']:6.1%} {t.get('speech_chunks_missed', 0):7d}"
        )
    out = ROOT / "benchmarks" / "results" / "trigger_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"seconds": args.seconds, "reps": args.reps, "chunks": len(frames), "rows": table}, indent=2
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
