"""Load a model file (ONNX via onnxruntime, TFLite via ai-edge-litert), describe its tensors and run it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import InferenceError, ModelLoadError
from edgefleet.protocol import Manifest, TensorSpec

__all__ = ["ModelRunner", "check_runtime_requirements", "model_format", "onnx_opset"]

log = logging.getLogger(__name__)

# onnxruntime type strings -> manifest dtype names; the runtime reads models with the same table.
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def model_format(path: Path) -> str:
    """``onnx`` or ``tflite`` from the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".tflite":
        return "tflite"
    raise ModelLoadError(
        f"{path}: unknown model format {suffix!r}", hint="bundles take .onnx (or .tflite) model files"
    )


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset of an ONNX file, read with ``onnx`` when it is installed (build side)."""
    try:
        import onnx
    except ImportError:  # the lean agent install has no onnx; the opset is informational
        return None
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise ModelLoadError(f"{path} is not a valid ONNX model: {e}", hint="re-export the model") from e
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _dims(shape: Any, prefix: str) -> list[int | str]:
    out: list[int | str] = []
    for i, d in enumerate(shape):
        if isinstance(d, (int, np.integer)) and d >= 0:
            out.append(int(d))
        elif isinstance(d, str) and d:
            out.append(d)
        else:
            out.append("batch" if i == 0 else f"{prefix}_d{i}")
    return out


class ModelRunner:
    """A fresh inference session on one model file.

    Args:
        path: the model file.
        fmt: ``onnx`` or ``tflite`` (default: from the suffix).
        deterministic: ask onnxruntime for deterministic kernels (golden sets must reproduce exactly).
        threads: ONNX Runtime's intra-op threads (default 1, as the serving engine's default). With ORT's
            own default (a pool of one thread per core that spins between calls) two sessions timed side
            by side disturbed each other: the watch window's paired looks of two same-speed models read
            ratios of 0.55-1.9 on a quiet 2-core machine, 1.00-1.01 with one thread each
            (docs/design-notes.md).
    """

    def __init__(
        self,
        path: Path,
        fmt: str | None = None,
        *,
        deterministic: bool = True,
        model_bytes: bytes | None = None,
        threads: int = 1,
    ) -> None:
        self.path = Path(path)
        self.threads = max(1, int(threads))
        self.format = fmt or model_format(self.path)
        self._bytes = model_bytes  # the model in memory (decrypted); ``path`` only names it
        if model_bytes is None and not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} does not exist", hint="check the path")
        if self.format == "onnx":
            self._init_onnx(deterministic)
        else:
            self._init_tflite()

    def _init_onnx(self, deterministic: bool) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is in every extra
            raise ModelLoadError("onnxruntime is not installed", hint="pip install 'edgefleet[agent]'") from e
        so = ort.SessionOptions()
        so.use_deterministic_compute = deterministic
        so.log_severity_level = 3
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        try:
            src = self._bytes if self._bytes is not None else str(self.path)
            self._sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(
                f"ONNX Runtime cannot load {self.path.name}: {str(e).strip()[:400]}",
                hint="check the model file is a valid ONNX model exported for a supported opset",
                path=str(self.path),
            ) from e
        self.inputs = [self._spec(a, "in") for a in self._sess.get_inputs()]
        self.outputs = [self._spec(a, "out") for a in self._sess.get_outputs()]

    @staticmethod
    def _spec(arg: Any, prefix: str) -> TensorSpec:
        dtype = ORT_TYPES.get(arg.type)
        if dtype is None:
            raise ModelLoadError(
                f"model tensor {arg.name!r} has type {arg.type}, which bundles do not support",
                hint="export plain tensors (e.g. skl2onnx options={'zipmap': False})",
            )
        return TensorSpec(name=arg.name, dtype=dtype, shape=_dims(arg.shape or [], prefix))

    def _init_tflite(self) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ModelLoadError(
                "TFLite models need ai-edge-litert", hint="pip install ai-edge-litert"
            ) from e
        try:
            self._interp = (
                Interpreter(model_content=self._bytes, num_threads=self.threads)
                if self._bytes is not None
                else Interpreter(model_path=str(self.path), num_threads=self.threads)
            )
            self._interp.allocate_tensors()
        except Exception as e:  # ValueError / RuntimeError from the C++ side
            raise ModelLoadError(
                f"LiteRT cannot load {self.path.name}: {str(e).strip()[:400]}",
                hint="check the file is a valid .tflite model",
            ) from e
        self._tfl_in = self._interp.get_input_details()
        self._tfl_out = self._interp.get_output_details()

        def spec(d: dict[str, Any], prefix: str) -> TensorSpec:
            sig = list(d.get("shape_signature", d["shape"]))
            return TensorSpec(name=d["name"], dtype=np.dtype(d["dtype"]).name, shape=_dims(sig, prefix))

        self.inputs = [spec(d, "in") for d in self._tfl_in]
        self.outputs = [spec(d, "out") for d in self._tfl_out]

    def _run_once(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.format == "onnx":
            names = [o.name for o in self.outputs]
            res = self._sess.run(names, feeds)
            return dict(zip(names, res, strict=True))
        for d in self._tfl_in:
            x = feeds[d["name"]]
            if list(x.shape) != list(d["shape"]):
                self._interp.resize_tensor_input(d["index"], list(x.shape))
                self._interp.allocate_tensors()
            self._interp.set_tensor(d["index"], x)
        self._interp.invoke()
        return {d["name"]: np.array(self._interp.get_tensor(d["index"])) for d in self._tfl_out}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a batch. Models whose batch dim is fixed at 1 run sample by sample, results concatenated."""
        missing = [i.name for i in self.inputs if i.name not in feeds]
        if missing:
            raise InferenceError(
                f"missing model inputs: {missing}", hint="the contract must produce every input"
            )
        feeds = {i.name: np.ascontiguousarray(feeds[i.name], dtype=i.dtype) for i in self.inputs}
        n = len(next(iter(feeds.values())))
        fixed_one = any(i.shape and i.shape[0] == 1 for i in self.inputs)
        try:
            if fixed_one and n > 1:
                parts = [self._run_once({k: v[j : j + 1] for k, v in feeds.items()}) for j in range(n)]
                return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            return self._run_once(feeds)
        except Exception as e:
            raise InferenceError(
                f"model {self.path.name} failed on the inputs: {str(e).strip()[:400]}",
                hint="check the preprocessing contract produces what the model expects "
                f"({', '.join(f'{i.name} {i.dtype}{i.shape}' for i in self.inputs)})",
            ) from e


def check_runtime_requirements(manifest: Manifest) -> None:
    """Refuse a bundle whose runtime version range excludes the runtime installed here.

    Raises:
        ModelLoadError: the installed onnxruntime is outside ``manifest.runtime.onnxruntime``.
    """
    if manifest.model_format != "onnx":
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import Version

    try:
        spec = SpecifierSet(manifest.runtime.onnxruntime)
    except InvalidSpecifier as e:
        raise ModelLoadError(
            f"bundle {manifest.key} has an invalid onnxruntime requirement {manifest.runtime.onnxruntime!r}",
            hint="rebuild the bundle with a PEP 440 specifier such as '>=1.17'",
        ) from e
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelLoadError("onnxruntime is not installed", hint="pip install 'edgefleet[agent]'") from e
    installed = Version(ort.__version__.split("+")[0])
    if installed not in spec:
        raise ModelLoadError(
            f"bundle {manifest.key} needs onnxruntime {spec}, this machine has {installed}",
            hint="upgrade onnxruntime here, or build a variant for this runtime",
        )
