"""The two-stage trigger as a runtime stage: silero-vad served by ``edgefleet.runtime.Runtime`` with and
without ``trigger=EnergyGate(-40 dBFS, hangover 8)`` on the same audio stream.

Same audio as ``trigger_bench.py`` (``optimize._zoo.synth_speech``, 512-sample chunks with 64 samples of
context), sent one chunk per ``Runtime.predict`` call in order, the LSTM state carried across the model's runs
(as a client of ``edgefleet serve --trigger`` does). The runtime is silero-vad's shipped ONNX file with no
batching and no warm-up (its scalar ``sr`` input cannot be batched; its STFT cannot run on the warm-up's
1-sample zeros). Reported per run: CPU time of the whole stream (process time; ``--reps`` interleaved
repetitions, median and spread of the ratio), model runs and gated requests from ``Runtime.status()``, the
median latency of a gated answer and of a model answer, and agreement of the speech decisions (p > 0.5; a
gated chunk counts as not speech) with the ungated run.

Run:  .venv/bin/python benchmarks/trigger_runtime_bench.py [--seconds 60] [--reps 5]
Writes benchmarks/results/trigger_runtime_bench.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def stream(rt, frames: np.ndarray) -> tuple[np.ndarray, list[float], list[float], float]:
    """(speech probability per chunk, latencies of gated answers, of model answers, CPU seconds)."""
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    probs, gated_ms, model_ms = np.zeros(len(frames)), [], []
    t0 = time.process_time()
    for i, f in enumerate(frames):
        r = rt.predict({"input": f[None], "state": state, "sr": sr})
        if r.triggered is False:
            gated_ms.append(r.latency_ms)
            continue
        state = r.outputs["stateN"]
        probs[i] = float(r.outputs["output"][0, 0])
        model_ms.append(r.latency_ms)
    return probs, gated_ms, model_ms, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import silero_vad

    from edgefleet.optimize._zoo import synth_speech, vad_frames
    from edgefleet.power import EnergyGate
    from edgefleet.runtime import Runtime, RuntimeConfig
    from edgefleet.runtime._config import BatcherConfig, EngineConfig

    model = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    cfg = RuntimeConfig(engine=EngineConfig(warmup_runs=0), batcher=BatcherConfig(enabled=False))
    frames = vad_frames(synth_speech(args.seconds, seed=0))
    cpu: dict[str, list[float]] = {"no trigger": [], "trigger": []}
    lat: dict[str, list[float]] = {"gated": [], "model (gated run)": [], "model (no trigger)": []}
    stats, agreement = {}, []
    for rep in range(args.reps):
        with Runtime.from_bundle(model, cfg) as rt:
            base, _, m_ms, t = stream(rt, frames)
        cpu["no trigger"].append(t)
        lat["model (no trigger)"] += m_ms
        with Runtime.from_bundle(model, cfg, trigger=EnergyGate(-40.0, 8)) as rt:
            probs, g_ms, m_ms, t = stream(rt, frames)
            stats = rt.status()["trigger"]
        cpu["trigger"].append(t)
        lat["gated"] += g_ms
        lat["model (gated run)"] += m_ms
        agreement.append(float(np.mean((probs > 0.5) == (base > 0.5))))
        print(f"repetition {rep + 1}/{args.reps}", flush=True)
    ratios = [t / b for t, b in zip(cpu["trigger"], cpu["no trigger"], strict=True)]
    out = {
        "seconds": args.seconds,
        "reps": args.reps,
        "chunks": len(frames),
        "cpu_ms_no_trigger": statistics.median(cpu["no trigger"]) * 1000,
        "cpu_ms_trigger": statistics.median(cpu["trigger"]) * 1000,
        "cpu_saved": 1 - statistics.median(ratios),
        "cpu_ratio_min": min(ratios),
        "cpu_ratio_max": max(ratios),
        "model_runs": stats["model_runs"],
        "gated": stats["gated"],
        "share_to_model": stats["share_to_model"],
        "agreement_min": min(agreement),
        "latency_p50_ms": {k: statistics.median(v) for k, v in lat.items() if v},
    }
    print(
        f"{len(frames)} chunks: model ran {stats['model_runs']} ({stats['share_to_model']:.1%}), "
        f"gated {stats['gated']}; CPU {out['cpu_ms_no_trigger']:.0f} -> {out['cpu_ms_trigger']:.0f} ms "
        f"(saved {out['cpu_saved']:.1%}, ratio {min(ratios):.2f}..{max(ratios):.2f}); agreement >= "
        f"{out['agreement_min']:.1%}; p50 latency "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in out["latency_p50_ms"].items())
    )
    path = ROOT / "benchmarks" / "results" / "trigger_runtime_bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
