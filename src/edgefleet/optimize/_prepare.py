"""Preparation before quantization: opset upgrade, ``quant_pre_process`` (with fallbacks) and
onnxruntime's offline graph optimization. Each step must keep the outputs; a step that does not is
skipped and the report says so."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._graph import default_opset
from edgefleet.optimize._runner import OrtRunner

__all__ = ["PrepStep", "Prepared", "prepare", "compare_outputs", "quiet_ort_logs"]

log = logging.getLogger(__name__)


@dataclass
class PrepStep:
    name: str
    applied: bool
    max_abs_err: float | None = None
    note: str = ""


@dataclass
class Prepared:
    """``quant_input``: what the quantizers start from; ``baseline``: the fp32 graph-optimized model."""

    quant_input: Path
    baseline: Path
    steps: list[PrepStep] = field(default_factory=list)
    opset: int = 0


@contextlib.contextmanager
def quiet_ort_logs():
    """The quantization tools log chatty warnings through the root logger and print() progress to
    stdout (which would corrupt ``--json`` output); both are silenced unless debugging."""
    import onnxruntime as ort

    root = logging.getLogger()
    old = root.level
    debug = log.isEnabledFor(logging.DEBUG)
    if not debug:
        ort.set_default_logger_severity(3)  # sessions the tools create inside log C++ warnings
    if old < logging.ERROR and not debug:
        root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()) if not debug else contextlib.nullcontext():
                yield
    finally:
        root.setLevel(old)
        if not debug:
            ort.set_default_logger_severity(2)  # onnxruntime's default


def compare_outputs(
    ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], rtol: float, atol: float
) -> tuple[bool, float, str]:
    """(all close, max abs error, first problem) over float outputs; integer outputs must agree on 99 %."""
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        for name, a in r.items():
            b = g.get(name)
            if b is None:
                return False, float("inf"), f"output {name!r} disappeared"
            if a.shape != b.shape:
                return False, float("inf"), f"output {name!r} changed shape {a.shape} -> {b.shape}"
            if a.dtype.kind in "iub":
                if a.size and np.mean(a != b) > 0.01:
                    return False, float("inf"), f"integer output {name!r} changed on {np.mean(a != b):.1%}"
                continue
            a64 = a.astype(np.float64)
            b64 = b.astype(np.float64)
            if not np.all(np.isfinite(b64) == np.isfinite(a64)):
                return False, float("inf"), f"output {name!r} became NaN/Inf"
            fin = np.isfinite(a64)
            if not fin.any():
                continue
            err = float(np.max(np.abs(a64[fin] - b64[fin])))
            worst = max(worst, err)
            if not np.allclose(b64[fin], a64[fin], rtol=rtol, atol=atol):
                return False, worst, f"output {name!r} differs by up to {err:.3g}"
    return True, worst, ""


def _outputs(
    path: Path, feeds: list[dict[str, np.ndarray]], optimization: str = "all"
) -> list[dict[str, np.ndarray]]:
    r = OrtRunner(path, threads=1, optimization=optimization)
    try:
        return [r.run(f) for f in feeds]
    finally:
        r.close()


def prepare(
    source: Path, work: Path, feeds: list[dict[str, np.ndarray]], settings: OptimizeConfig
) -> Prepared:
    """Run the preparation steps on ``source``; returns the quantizer input and the fp32 baseline."""
    import onnx

    steps: list[PrepStep] = []
    ref = _outputs(source, feeds)
    current = source
    model = onnx.load(str(source))
    opset = default_opset(model)

    # 1. opset upgrade: per-channel QDQ needs QuantizeLinear/DequantizeLinear with an axis (opset 13).
    if opset < settings.min_qdq_opset:
        dst = work / "prep-opset.onnx"
        try:
            from onnx import version_converter

            up = version_converter.convert_version(model, settings.upgrade_opset)
            onnx.save_model(up, str(dst))
            ok, err, why = compare_outputs(
                ref, _outputs(dst, feeds), settings.parity_rtol, settings.parity_atol
            )
            if ok:
                steps.append(
                    PrepStep("opset upgrade", True, err, f"opset {opset} -> {settings.upgrade_opset}")
                )
                current, opset = dst, settings.upgrade_opset
            else:
                steps.append(PrepStep("opset upgrade", False, err, f"skipped: outputs changed ({why})"))
        except Exception as e:  # noqa: BLE001 - the converter fails on many real models; keep the original
            steps.append(
                PrepStep("opset upgrade", False, None, f"skipped: {type(e).__name__}: {str(e)[:160]}")
            )
    else:
        steps.append(PrepStep("opset upgrade", False, None, f"not needed (opset {opset})"))

    # 2. quant_pre_process: symbolic shape inference + basic optimization + ONNX shape inference.
    from onnxruntime.quantization import quant_pre_process

    dst = work / "prep-quant.onnx"
    attempts = [
        ("full", {}),
        ("without symbolic shape inference", {"skip_symbolic_shape": True}),
        ("shape inference only", {"skip_symbolic_shape": True, "skip_optimization": True}),
    ]
    done = False
    failures = []
    for label, kw in attempts:
        try:
            # onnxruntime's symbolic shape inference saves "sym_shape_infer_temp.onnx" into the working
            # directory when it gives up: run it inside our work folder, never the user's.
            src_abs, dst_abs = str(Path(current).resolve()), str(dst.resolve())
            with quiet_ort_logs(), contextlib.chdir(work):
                quant_pre_process(src_abs, dst_abs, **kw)
            ok, err, why = compare_outputs(
                ref, _outputs(dst, feeds), settings.parity_rtol, settings.parity_atol
            )
        except Exception as e:  # noqa: BLE001 - symbolic shape inference fails on odd models: fall back
            failures.append(f"{label}: {type(e).__name__}: {str(e).strip()[:160]}")
            continue
        if ok:
            note = label if not failures else f"{label} (after: {'; '.join(failures)})"
            steps.append(PrepStep("quant_pre_process", True, err, note))
            current = dst
            done = True
            break
        failures.append(f"{label}: outputs changed ({why})")
    if not done:
        steps.append(PrepStep("quant_pre_process", False, None, "skipped: " + "; ".join(failures)))

    quant_input = work / "quant-input.onnx"
    shutil.copyfile(current, quant_input)

    # 3. onnxruntime offline graph optimization (extended level: portable across CPUs, unlike 'all').
    baseline = work / "baseline.onnx"
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(baseline)
        so.log_severity_level = 3
        ort.InferenceSession(str(quant_input), so, providers=["CPUExecutionProvider"])
        ok, err, why = compare_outputs(
            ref, _outputs(baseline, feeds), settings.parity_rtol, settings.parity_atol
        )
        if ok:
            steps.append(PrepStep("ORT offline optimization", True, err, "level: extended"))
        else:
            shutil.copyfile(quant_input, baseline)
            steps.append(
                PrepStep("ORT offline optimization", False, err, f"skipped: outputs changed ({why})")
            )
    except Exception as e:  # noqa: BLE001
        shutil.copyfile(quant_input, baseline)
        steps.append(PrepStep("ORT offline optimization", False, None, f"skipped: {str(e)[:160]}"))
    return Prepared(quant_input=quant_input, baseline=baseline, steps=steps, opset=opset)
