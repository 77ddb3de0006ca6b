"""Measure one ONNX model on one execution provider, in whatever Python runs this file.

It needs only numpy and onnxruntime, so it runs under another environment's interpreter too: the one
where ``onnxruntime-openvino`` replaces the ``onnxruntime`` module, for instance. Usage::

    python _ep_probe.py MODEL PROVIDER INPUTS.npz OUT.npz RUNS

``INPUTS.npz`` holds samples as ``<i>/<input name>`` arrays; sample 0 is timed. ``OUT.npz`` receives the
outputs of every sample (``<i>/<output name>``) and a JSON ``figures`` string: the providers the session
really used, onnxruntime's version, session init, p50/p95 latency in ms.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime as ort

    model, provider, inputs, out, runs = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    if provider not in ort.get_available_providers():
        print(json.dumps({"error": f"{provider} is not available in onnxruntime {ort.__version__}"}))
        return 3
    data = np.load(inputs)
    samples: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        i, name = key.split("/", 1)
        samples.setdefault(int(i), {})[name] = data[key]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=[provider, "CPUExecutionProvider"])
    init_ms = 1000 * (time.perf_counter() - t0)
    names = [o.name for o in sess.get_outputs()]
    outs = {}
    for i in sorted(samples):
        for name, arr in zip(names, sess.run(names, samples[i]), strict=True):
            outs[f"{i}/{name}"] = np.asarray(arr)
    feed = samples[0]
    for _ in range(max(2, runs // 10)):
        sess.run(names, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(names, feed)
        times.append(time.perf_counter() - t)
    ms = 1000 * np.asarray(times)
    figures = {
        "providers": sess.get_providers(),
        "onnxruntime": ort.__version__,
        "init_ms": init_ms,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "runs": runs,
    }
    np.savez(out, figures=np.asarray(json.dumps(figures)), **outs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
