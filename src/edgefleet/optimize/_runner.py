"""Run a model file: ONNX Runtime sessions and LiteRT interpreters behind one small interface."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import ModelLoadError

__all__ = ["TensorInfo", "Runner", "OrtRunner", "TfliteRunner", "open_runner", "ort_dtype"]

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}


def ort_dtype(type_str: str) -> np.dtype:
    """numpy dtype of an onnxruntime type string such as ``tensor(float)``."""
    try:
        return np.dtype(_ORT_TYPES[type_str])
    except KeyError as e:
        raise ModelLoadError(
            f"model uses tensor type {type_str}, which edgefleet cannot feed",
            hint="use tensors of numeric types for model inputs and outputs",
        ) from e


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: name, numpy dtype and shape (str/None for symbolic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: rank unknown

    @property
    def batch_dynamic(self) -> bool:
        """True when axis 0 is symbolic (so samples can be stacked along it)."""
        return bool(self.shape) and not isinstance(self.shape[0], int)

    def describe(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "[" + ", ".join(str(d) if d is not None else "?" for d in self.shape) + "]"
        )
        return f"{self.name}: {self.dtype.name}{dims}"


@dataclass
class Runner:
    """A loaded model: its inputs/outputs and ``run(feed) -> {output: array}``."""

    path: Path
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    threads: int = 1
    providers: list[str] = field(default_factory=list)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Drop the underlying session so its memory can be freed."""


def _map_ort_error(path: Path, e: Exception) -> ModelLoadError:
    text = str(e)
    low = text.lower()
    if (
        "protobuf parsing failed" in low
        or "invalid_protobuf" in low
        or "failed to load model" in low
        and "parse" in low
    ):
        return ModelLoadError(
            f"{path.name} is not a valid ONNX model (truncated or corrupted file?)",
            hint="re-export the model or copy the file again; check its size against the original",
            path=str(path),
        )
    m = re.search(r"opset (\d+)", low)
    if ("under development" in low or "not supported" in low or "unsupported" in low) and (
        "opset" in low or "ir version" in low
    ):
        import onnxruntime as ort

        return ModelLoadError(
            f"onnxruntime {ort.__version__} cannot load {path.name}: {text.strip().splitlines()[-1][:300]}",
            hint=(
                f"export the model with an opset this runtime supports (<= {_max_default_opset()})"
                + (f"; the model asks for opset {m.group(1)}" if m else "")
            ),
            path=str(path),
        )
    m2 = re.search(r"could not find an implementation for (\S+)", low)
    if m2 or "not_implemented" in low:
        return ModelLoadError(
            f"onnxruntime has no kernel for an op in {path.name}: {text.strip().splitlines()[-1][:300]}",
            hint="re-export with standard ops, or use a runtime build that includes this op",
            path=str(path),
        )
    return ModelLoadError(
        f"onnxruntime cannot load {path.name}: {text.strip()[:500]}",
        hint="check the model with onnx.checker.check_model and re-export it",
        path=str(path),
    )


def _max_default_opset() -> int:
    """Highest ai.onnx opset with a CPU kernel in the installed onnxruntime."""
    try:
        import onnxruntime.capi._pybind_state as C

        return max(k.version_range[0] for k in C.get_all_opkernel_def() if k.domain == "")
    except Exception:  # noqa: BLE001 - advisory only
        import onnx

        return onnx.defs.onnx_opset_version()


class OrtRunner(Runner):
    """An onnxruntime InferenceSession with the profile's threads and execution providers."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 1,
        providers: list[str] | None = None,
        optimization: str = "all",
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        available = ort.get_available_providers()
        wanted = providers or ["CPUExecutionProvider"]
        use = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if missing:
            log.warning("execution providers %s are not available here; using %s", missing, use or ["CPU"])
        if "CPUExecutionProvider" not in use:
            use.append("CPUExecutionProvider")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        try:
            self.session = ort.InferenceSession(str(path), so, providers=use)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise _map_ort_error(path, e) from e
        ins = [TensorInfo(i.name, ort_dtype(i.type), _dims(i.shape)) for i in self.session.get_inputs()]
        outs = [TensorInfo(o.name, ort_dtype(o.type), _dims(o.shape)) for o in self.session.get_outputs()]
        super().__init__(path=path, inputs=ins, outputs=outs, threads=threads, providers=use)
        self._out_names = [o.name for o in outs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.session.run(self._out_names, feed)
        return dict(zip(self._out_names, res, strict=True))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def _dims(shape: Any) -> tuple[int | str | None, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else (d if isinstance(d, str) and d else None) for d in shape)


class TfliteRunner(Runner):
    """A LiteRT (TensorFlow Lite) interpreter; batch size changes resize the inputs."""

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:  # pragma: no cover - part of the optimize extra
            raise ModelLoadError(
                "running .tflite models needs ai-edge-litert", hint="pip install 'edgefleet[optimize]'"
            ) from e
        path = Path(path)
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(
                f"LiteRT cannot load {path.name}: {str(e).strip()[:300]}",
                hint="the file is not a valid .tflite model (truncated or corrupted?); convert it again",
                path=str(path),
            ) from e
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        ins = [TensorInfo(d["name"], np.dtype(d["dtype"]), _tfl_dims(d)) for d in self._in]
        outs = [TensorInfo(d["name"], np.dtype(d["dtype"]), _tfl_dims(d)) for d in self._out]
        super().__init__(path=path, inputs=ins, outputs=outs, threads=threads, providers=["LiteRT-CPU"])
        self._shapes = {d["name"]: tuple(int(x) for x in d["shape"]) for d in self._in}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        resized = False
        for d in self._in:
            x = feed[d["name"]]
            if tuple(x.shape) != self._shapes[d["name"]]:
                self.interp.resize_tensor_input(d["index"], list(x.shape), strict=False)
                self._shapes[d["name"]] = tuple(x.shape)
                resized = True
        if resized:
            self.interp.allocate_tensors()
            self._out = self.interp.get_output_details()
        for d in self._in:
            self.interp.set_tensor(d["index"], np.ascontiguousarray(feed[d["name"]]))
        self.interp.invoke()
        return {d["name"]: self.interp.get_tensor(d["index"]).copy() for d in self._out}

    def close(self) -> None:
        self.interp = None  # type: ignore[assignment]


def _tfl_dims(d: dict[str, Any]) -> tuple[int | str | None, ...]:
    sig = d.get("shape_signature")
    shape = sig if sig is not None and len(sig) else d["shape"]
    return tuple(
        "batch" if (i == 0 and int(s) < 0) else (int(s) if int(s) >= 0 else None) for i, s in enumerate(shape)
    )


def open_runner(
    path: str | Path, *, threads: int = 1, providers: list[str] | None = None, optimization: str = "all"
) -> Runner:
    """An ORT or LiteRT runner for ``path``, chosen by file suffix."""
    p = Path(path)
    if p.suffix.lower() == ".tflite":
        return TfliteRunner(p, threads=threads)
    return OrtRunner(p, threads=threads, providers=providers, optimization=optimization)
