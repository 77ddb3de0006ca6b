"""Child process that measures the peak resident memory a model session adds.

Run as ``python -m edgefleet.optimize._memprobe MODEL FEED.npz THREADS PROVIDERS_JSON RUNS``; prints one
JSON line. A fresh process gives a clean number: ``ru_maxrss`` after imports and data loading is the
baseline, and the peak after session creation plus a few runs includes everything the session added.
"""

from __future__ import annotations

import json
import resource
import sys


def _maxrss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r // 1024) if sys.platform == "darwin" else int(r)  # macOS reports bytes


def main(argv: list[str]) -> int:
    model, feed_path, threads, providers_json, runs = argv[1:6]
    import numpy as np

    with np.load(feed_path, allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
    if model.endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401 - import cost is not the session's
    else:
        import onnxruntime  # noqa: F401

    from edgefleet.optimize._runner import open_runner

    base = _maxrss_kb()
    runner = open_runner(model, threads=int(threads), providers=json.loads(providers_json))
    for _ in range(int(runs)):
        runner.run(feed)
    peak = _maxrss_kb()
    print(json.dumps({"base_kb": base, "peak_kb": peak, "added_mb": (peak - base) / 1024.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
