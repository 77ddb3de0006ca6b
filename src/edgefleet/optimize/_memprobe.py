"""Child process that measures the peak resident memory a model session adds.

Run as ``python -m edgefleet.optimize._memprobe MODEL FEED.npz THREADS PROVIDERS_JSON RUNS``; prints one
JSON line. A fresh process gives a clean number: after imports, data loading and a throw-away one-node
session (the runtime's process-wide setup), the peak-RSS mark is reset; the peak after creating the
model's session and running it a few times is what that session added.
"""

from __future__ import annotations

import json
import resource
import sys


def _maxrss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r // 1024) if sys.platform == "darwin" else int(r)  # macOS reports bytes


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _warm_ort_environment() -> None:
    """Create (and drop) a one-node session so the process-wide runtime setup is not billed to the model."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warm", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    s.run(None, {"x": np.zeros(1, np.float32)})
    del s, onnx


def main(argv: list[str]) -> int:
    model, feed_path, threads, providers_json, runs = argv[1:6]
    import numpy as np

    with np.load(feed_path, allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
    if model.endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401 - import cost is not the session's
    else:
        _warm_ort_environment()

    from edgefleet.optimize._runner import open_runner

    # Preferred: reset VmHWM to the current RSS, so imports' transient peaks do not hide the session's.
    if _reset_peak() and _status_kb("VmRSS") is not None:
        base = _status_kb("VmRSS") or 0
        how = "VmHWM"
    else:
        base = _maxrss_kb()
        how = "ru_maxrss"
    runner = open_runner(model, threads=int(threads), providers=json.loads(providers_json))
    for _ in range(int(runs)):
        runner.run(feed)
    peak = (_status_kb("VmHWM") if how == "VmHWM" else None) or _maxrss_kb()
    print(
        json.dumps({"base_kb": base, "peak_kb": peak, "added_mb": max(0, peak - base) / 1024.0, "how": how})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
