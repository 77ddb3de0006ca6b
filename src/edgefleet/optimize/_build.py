"""Build one variant file from the prepared model: fp32, fp16, dynamic/static int8, int4, pruned."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import OptimizeError
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._data import Dataset
from edgefleet.optimize._graph import GraphFacts
from edgefleet.optimize._prepare import Prepared, quiet_ort_logs
from edgefleet.optimize._spec import DeviceProfile, Variant

__all__ = ["Built", "Builder", "STATIC_OP_TYPES", "weight_nodes"]

log = logging.getLogger(__name__)

# Ops quantized in static mode. Softmax/Sigmoid/ArgMax and graph-output producers stay float: their
# outputs are probabilities, where 8 bits cost resolution and save nothing measurable.
STATIC_OP_TYPES = [
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Relu",
    "Clip",
    "LeakyRelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Add",
    "Mul",
    "Concat",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "Split",
    "Pad",
    "Slice",
]

_PRUNE_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}


@dataclass
class Built:
    path: Path
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """A CalibrationDataReader over dataset feeds (a fresh one per quantizer call)."""

    def __init__(self, samples: list[dict[str, np.ndarray]]):
        self._samples = samples
        self._it = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __iter__(self):
        return iter(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def rewind(self) -> None:
        self._it = iter(self._samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._samples[start_index:end_index])


def _nodes_touching(model_path: Path, tensors: set[str]) -> list[str]:
    """Names of the nodes that read or write any of ``tensors``."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.name and tensors & {*n.input, *n.output}]


class _FiniteOutputs:
    """The calibrator's session, with non-finite values clipped to each tensor's finite range (and the
    tensor's name remembered) so histograms can be built."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._names = [o.name for o in session.get_outputs()]
        self.nonfinite: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, names: Any, feed: Any, *args: Any) -> list[Any]:
        outs = self._session.run(names, feed, *args)
        for i, (name, arr) in enumerate(zip(names or self._names, outs, strict=False)):
            if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not np.isfinite(arr).all():
                # minmax augments the graph with <tensor>_ReduceMin/_ReduceMax outputs; histograms with the
                # tensors themselves
                self.nonfinite.add(re.sub(r"_Reduce(Min|Max)$", "", name))
                fin = arr[np.isfinite(arr)]
                lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 0.0)
                outs[i] = np.nan_to_num(arr, nan=0.0, posinf=hi, neginf=lo)
        return outs


def weight_initializers(model: Any) -> dict[str, Any]:
    """Float initializers of the graph and of its control-flow subgraphs, by name."""
    from edgefleet.optimize._graph import _iter_graphs

    return {i.name: i for g in _iter_graphs(model.graph) for i in g.initializer if i.data_type == 1}


def weight_nodes(model: Any) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Nodes (subgraphs included) that consume float weight matrices: node name -> [(initializer, array)]."""
    from onnx import numpy_helper

    from edgefleet.optimize._graph import iter_nodes

    inits = weight_initializers(model)
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for node in iter_nodes(model.graph):
        idx = _PRUNE_OPS.get(node.op_type)
        if idx is None or len(node.input) <= idx:
            continue
        name = node.input[idx]
        if name in inits and len(inits[name].dims) >= 2:
            out.setdefault(node.name, []).append((name, numpy_helper.to_array(inits[name])))
    return out


class Builder:
    """Builds variants into ``work`` from a ``Prepared`` model and calibration data."""

    def __init__(
        self,
        prepared: Prepared,
        calib: Dataset,
        work: Path,
        facts: GraphFacts,
        profile: DeviceProfile,
        settings: OptimizeConfig,
    ) -> None:
        self.prepared = prepared
        self.calib = calib
        self.work = work
        self.facts = facts
        self.profile = profile
        self.settings = settings
        self._skipped: dict[str, list[str]] = {}  # calibration method -> tensors left unquantized
        self._float_nodes: dict[str, list[str]] = {}  # calibration method -> the nodes that touch them

    def build(self, v: Variant, exclude: list[str] | None = None, tag: str = "") -> Built:
        dst = self.work / f"{v.name}{tag}.onnx"
        exclude = list(exclude or [])
        with quiet_ort_logs():
            if v.kind == "fp32":
                shutil.copyfile(self.prepared.baseline, dst)
                return Built(dst, ["graph-optimized fp32 (the baseline)"])
            if v.kind == "fp16":
                return self._fp16(dst)
            if v.kind == "dynamic-int8":
                return self._dynamic(v, dst, exclude)
            if v.kind == "static-int8":
                return self._static(v, dst, exclude)
            if v.kind == "int4":
                return self._int4(v, dst, exclude)
            if v.kind == "pruned":
                return self._pruned(v, dst)
        raise OptimizeError(
            f"variant kind {v.kind} cannot be built for an ONNX model", hint="pick another variant"
        )

    # --- fp16 ---------------------------------------------------------------------------------
    def _fp16(self, dst: Path) -> Built:
        import onnx
        from onnxconverter_common import float16

        model = onnx.load(str(self.prepared.quant_input))
        half = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
        onnx.save_model(half, str(dst))
        notes = ["weights and activations in float16, inputs/outputs kept float32"]
        try:
            self._check_loads(dst)
        except Exception as e:  # noqa: BLE001
            if "Cast" not in str(e):
                raise
            # onnxconverter-common retypes the outputs of Cast(to=float) nodes; keeping Casts in fp32 fixes it.
            half = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, "Cast"]
            )
            onnx.save_model(half, str(dst))
            self._check_loads(dst)
            notes.append("Cast nodes kept in float32 (the converter mistyped them)")
        if not ({"f16c", "avx512_fp16", "asimdhp"} & set(self.profile.flags)):
            notes.append(
                "no native fp16 arithmetic on this CPU: onnxruntime casts back to fp32 around many ops"
            )
        return Built(dst, notes)

    # --- dynamic int8 ---------------------------------------------------------------------------
    def _dynamic(self, v: Variant, dst: Path, exclude: list[str]) -> Built:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        extra = {"MatMulConstBOnly": True, "EnableSubgraph": self.facts.has_subgraphs}
        notes = ["weights int8, activations quantized at run time (uint8)"]
        try:
            quantize_dynamic(
                str(self.prepared.quant_input),
                str(dst),
                per_channel=v.per_channel,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                extra_options=extra,
            )
            self._check_loads(dst)
        except Exception as e:  # noqa: BLE001 - ConvInteger has no int8-weight kernel in many ORT builds
            log.info("dynamic int8 with int8 weights failed (%s); retrying with uint8 weights", e)
            quantize_dynamic(
                str(self.prepared.quant_input),
                str(dst),
                per_channel=v.per_channel,
                weight_type=QuantType.QUInt8,
                nodes_to_exclude=exclude,
                extra_options=extra,
            )
            self._check_loads(dst)
            notes.append(
                f"int8 weights did not load ({str(e).strip().splitlines()[-1][:120]}); used uint8 weights"
            )
        if exclude:
            notes.append(f"{len(exclude)} sensitive nodes kept in float")
        return Built(dst, notes, {"excluded_nodes": exclude})

    # --- static int8 ----------------------------------------------------------------------------
    def _static(self, v: Variant, dst: Path, exclude: list[str]) -> Built:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[v.calibration or "minmax"]
        arm = self.profile.is_arm
        act = QuantType.QInt8 if arm else QuantType.QUInt8  # U8S8 on x86, S8S8 on ARM (ORT guidance)
        reduce_range = (not arm) and not self.profile.has_int8_dot
        extra: dict[str, Any] = {}
        if v.calibration == "percentile":
            extra["CalibPercentile"] = self.settings.percentile
        if arm:
            extra["ActivationSymmetric"] = True
        try:
            cache, skipped = self._calibration(v.calibration or "minmax", method, extra)
        except ValueError as e:
            if "Histogram has not been collected" not in str(e):
                raise
            raise OptimizeError(
                f"{v.calibration} calibration found no tensors to calibrate"
                + (
                    " outside control-flow subgraphs (static quantization skips If/Loop bodies)"
                    if self.facts.has_subgraphs
                    else ""
                ),
                hint="use dynamic-int8 for models whose layers live in If/Loop subgraphs",
            ) from e
        notes = [
            f"{'per-channel' if v.per_channel else 'per-tensor'} int8 weights, "
            f"{'int8' if arm else 'uint8'} activations, {v.calibration} calibration on {len(self.calib)} samples",
        ]
        if reduce_range:
            notes.append("7-bit weights (reduce_range) because the CPU has no VNNI")
        float_nodes = self._float_nodes.get(v.calibration or "minmax", [])
        if skipped:
            notes.append(
                f"{len(skipped)} tensors with non-finite values (e.g. -inf attention masks) and the "
                f"{len(float_nodes)} nodes that touch them left unquantized: "
                + ", ".join(skipped[:4])
                + (" ..." if len(skipped) > 4 else "")
            )
        kw = dict(
            quant_format=QuantFormat.QOperator if v.quant_format == "qoperator" else QuantFormat.QDQ,
            op_types_to_quantize=STATIC_OP_TYPES,
            per_channel=v.per_channel,
            reduce_range=reduce_range,
            activation_type=act,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[*exclude, *(n for n in float_nodes if n not in exclude)],
            calibrate_method=method,
            calibration_cache_path=str(cache),
        )
        try:
            quantize_static(
                str(self.prepared.quant_input),
                str(dst),
                _Reader(self.calib.samples),
                extra_options=extra,
                **kw,
            )
        except ValueError as e:
            # onnxruntime's int32-bias scale adjustment fails on some per-channel weights; without it
            # the bias just keeps its natural scale.
            log.info("static quantization failed (%s); retrying without the int32-bias weight adjustment", e)
            extra["QDQDisableWeightAdjustForInt32Bias"] = True
            quantize_static(
                str(self.prepared.quant_input),
                str(dst),
                _Reader(self.calib.samples),
                extra_options=extra,
                **kw,
            )
            notes.append("int32-bias weight-scale adjustment disabled (onnxruntime failed on it)")
        self._check_loads(dst)
        if exclude:
            notes.append(f"{len(exclude)} sensitive nodes kept in float")
        return Built(dst, notes, {"excluded_nodes": exclude, "calibration": v.calibration})

    def _calibration(self, name: str, method: Any, extra: dict[str, Any]) -> tuple[Path, list[str]]:
        """Activation ranges for ``method``, computed once per method and cached for every variant and
        exclusion round that uses it (``calib-<method>.json``, read back by quantize_static).

        Tensors holding -inf/NaN on the calibration data (attention masks) break entropy and percentile
        histograms and give minmax an infinite scale; they are clipped while collecting and then left out
        of the ranges, so the quantizer keeps them in float instead of the whole variant failing.
        """
        cache = self.work / f"calib-{name}.json"
        if name in self._skipped:
            return cache, self._skipped[name]
        from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data

        options = {"percentile": extra["CalibPercentile"]} if "CalibPercentile" in extra else {}
        aug = self.work / f"calib-{name}-augmented.onnx"
        calibrator = create_calibrator(
            Path(self.prepared.quant_input),
            STATIC_OP_TYPES,
            augmented_model_path=str(aug),
            calibrate_method=method,
            extra_options=options,
        )
        session = _FiniteOutputs(calibrator.infer_session)
        calibrator.infer_session = session
        try:
            calibrator.collect_data(_Reader(self.calib.samples))
            ranges = calibrator.compute_data()
        finally:
            del calibrator
            aug.unlink(missing_ok=True)
            aug.with_suffix(".onnx.data").unlink(missing_ok=True)
        skipped = sorted(session.nonfinite)
        self._float_nodes[name] = _nodes_touching(Path(self.prepared.quant_input), session.nonfinite)
        kept = TensorsData(
            ranges.calibration_method, {k: t for k, t in ranges.items() if k not in session.nonfinite}
        )
        save_tensors_data(kept, cache)
        self._skipped[name] = skipped
        return cache, skipped

    # --- int4 weight-only -----------------------------------------------------------------------
    def _int4(self, v: Variant, dst: Path, exclude: list[str]) -> Built:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        block = v.block_size or self.settings.int4_block_size
        model = onnx.load(str(self.prepared.quant_input))
        q = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=block,
            is_symmetric=True,
            accuracy_level=4,  # int8 compute inside MatMulNBits: uses VNNI / dot-product where present
            nodes_to_exclude=exclude,
        )
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
        n = sum(1 for node in q.model.model.graph.node if node.op_type == "MatMulNBits")
        if n == 0:
            raise OptimizeError(
                "int4 weight-only quantization found no MatMul with constant weights to quantize",
                hint="int4 applies to MatMul-heavy models (transformers); Gemm/Conv weights are not covered",
            )
        self._check_loads(dst)
        notes = [
            f"{n} MatMul weights in 4 bits (block {block}, symmetric), compute in int8 (accuracy_level 4)"
        ]
        if exclude:
            notes.append(f"{len(exclude)} sensitive nodes kept in float")
        return Built(dst, notes, {"excluded_nodes": exclude, "matmulnbits": n})

    # --- magnitude pruning ----------------------------------------------------------------------
    def _pruned(self, v: Variant, dst: Path) -> Built:
        import onnx
        from onnx import numpy_helper

        target = float(v.sparsity or self.settings.prune_sparsity)
        model = onnx.load(str(self.prepared.quant_input))
        inits = weight_initializers(model)
        pruned_total = pruned_zero = 0
        done: set[str] = set()
        for _node, weights in weight_nodes(model).items():
            for name, arr in weights:
                if name in done:
                    continue
                done.add(name)
                k = int(round(target * arr.size))
                if k <= 0:
                    continue
                thresh = np.partition(np.abs(arr).ravel(), k - 1)[k - 1]
                new = np.where(np.abs(arr) <= thresh, 0.0, arr).astype(arr.dtype)
                inits[name].CopyFrom(numpy_helper.from_array(new, name))
                pruned_total += new.size
                pruned_zero += int(np.count_nonzero(new == 0))
        if not pruned_total:
            raise OptimizeError(
                "no Conv/MatMul/Gemm weight matrices to prune", hint="pruning applies to dense layer weights"
            )
        all_params = all_zero = 0
        for init in weight_initializers(model).values():
            a = numpy_helper.to_array(init)
            all_params += a.size
            all_zero += int(np.count_nonzero(a == 0))
        tmp = self.work / f"{v.name}-unopt.onnx"
        onnx.save_model(model, str(tmp))
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(dst)
        so.log_severity_level = 3
        ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
        layer_sparsity = pruned_zero / pruned_total
        model_sparsity = all_zero / all_params if all_params else 0.0
        notes = [
            f"magnitude pruning: {layer_sparsity:.1%} of Conv/MatMul/Gemm weights are zero "
            f"({model_sparsity:.1%} of all float parameters)",
            "dense onnxruntime kernels multiply the zeros too: no speed-up and the same file size; "
            "only the compressed size shrinks",
        ]
        return Built(dst, notes, {"sparsity": layer_sparsity, "model_sparsity": model_sparsity})

    def _check_loads(self, path: Path) -> None:
        from edgefleet.optimize._runner import OrtRunner

        OrtRunner(path, threads=1).close()
