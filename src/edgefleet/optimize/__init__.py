"""Optimize stage of edgefleet: build model variants, measure them on a device profile, choose one.

``optimize()`` turns an ONNX file, a torch module, a scikit-learn estimator or a .tflite file into the
variant a device should run (fp32 graph-optimized, fp16, dynamic/static int8, int4 weight-only, pruned),
with a report of every variant's size, latency, memory and quality and why it won or lost.
``benchmark()`` measures one model on a device profile.
"""

from __future__ import annotations

from edgefleet.optimize._bench import BenchResult, benchmark
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._optimize import optimize
from edgefleet.optimize._report import OptimizeReport
from edgefleet.optimize._spec import DeviceProfile, Variant

__all__ = [
    "BenchResult",
    "DeviceProfile",
    "OptimizeConfig",
    "OptimizeReport",
    "Variant",
    "benchmark",
    "optimize",
]
