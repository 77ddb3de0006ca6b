"""Facts about an ONNX graph that steer the optimizer: opsets, where the weights live, which ops a
runtime lacks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "GraphFacts",
    "analyze",
    "iter_nodes",
    "default_opset",
    "missing_kernels",
    "target_runtime_issues",
    "ORT_MAX_OPSET",
]

# Highest ai.onnx opset each onnxruntime release implements (onnxruntime "compatibility" docs table).
ORT_MAX_OPSET: dict[tuple[int, int], int] = {
    (1, 10): 15,
    (1, 11): 16,
    (1, 12): 17,
    (1, 13): 17,
    (1, 14): 18,
    (1, 15): 19,
    (1, 16): 19,
    (1, 17): 20,
    (1, 18): 21,
    (1, 19): 21,
    (1, 20): 21,
}

# Contrib ops the optimizer may emit, with the first onnxruntime release that runs them on CPU.
CONTRIB_MIN_ORT: dict[str, tuple[int, int]] = {
    "MatMulNBits": (1, 17),
    "DynamicQuantizeMatMul": (1, 6),
    "QGemm": (1, 11),
    "FusedMatMul": (1, 4),
    "FusedConv": (1, 4),
    "FusedGemm": (1, 4),
    "QLinearConv": (1, 4),
}


# Ops whose constant inputs (beyond input 0) are learned weights.
_WEIGHT_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Attention", "MatMulNBits"}


def iter_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph, including nodes inside If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from iter_nodes(attr.g)
            for g in attr.graphs:
                yield from iter_nodes(g)


def _iter_graphs(graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from _iter_graphs(attr.g)
            for g in attr.graphs:
                yield from _iter_graphs(g)


def default_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


@dataclass
class GraphFacts:
    opset: int
    op_counts: dict[str, int]
    params: int  # float weights (initializers and Constant nodes)
    params_by_op: dict[str, int] = field(default_factory=dict)  # multiply-adds at batch 1 (see analyze)
    has_subgraphs: bool = False
    float_params_bytes: int = 0

    def share(self, *ops: str) -> float:
        total = sum(self.params_by_op.values())
        return sum(self.params_by_op.get(o, 0) for o in ops) / total if total else 0.0

    @property
    def matmul_share(self) -> float:
        return self.share("MatMul")

    @property
    def conv_share(self) -> float:
        return self.share("Conv", "ConvTranspose")


def _constant_arrays(graph: Any) -> dict[str, tuple[int, ...]]:
    from onnx import numpy_helper

    shapes: dict[str, tuple[int, ...]] = {}
    for g in _iter_graphs(graph):
        for init in g.initializer:
            if init.data_type in (1, 10, 11, 16):  # float, float16, double, bfloat16
                shapes[init.name] = tuple(init.dims)
        for node in g.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type in (1, 10, 11, 16):
                        shapes[node.output[0]] = tuple(numpy_helper.to_array(attr.t).shape)
    return shapes


def _known_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Static shapes from shape inference (symbolic dims count as 1: batch-1 cost)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes only refine the cost estimate
        inferred = model
    out = {}
    g = inferred.graph
    for vi in [*g.value_info, *g.output, *g.input]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim)
    return out


def analyze(model: Any) -> GraphFacts:
    """Op counts, and where the float weights and the multiply-adds are (by op type).

    ``params_by_op`` counts multiply-accumulates at batch 1 where shapes are known (a Conv weight is
    used once per output position), else weights: what decides whether a model is conv- or MatMul-heavy.
    """
    consts = _constant_arrays(model.graph)
    shapes = _known_shapes(model)
    counts = Counter(n.op_type for n in iter_nodes(model.graph))
    by_op: Counter[str] = Counter()
    seen: set[str] = set()
    for node in iter_nodes(model.graph):
        if node.op_type not in _WEIGHT_OPS:
            continue
        for i, name in enumerate(node.input):
            if name in consts and name not in seen and i > 0:
                seen.add(name)
                w = int(np.prod(consts[name])) if consts[name] else 1
                reuse = 1
                out_shape = shapes.get(node.output[0]) if node.output else None
                if i == 1 and out_shape:
                    if node.op_type in ("Conv", "ConvTranspose") and len(out_shape) >= 3:
                        reuse = int(np.prod(out_shape[2:]))
                    elif node.op_type == "MatMul" and len(out_shape) >= 2:
                        reuse = int(np.prod(out_shape[:-1]))
                by_op[node.op_type] += w * reuse
    total = sum(int(np.prod(s)) if s else 1 for s in consts.values())
    has_sub = any(a.g and a.g.node for n in model.graph.node for a in n.attribute) or any(
        a.graphs for n in model.graph.node for a in n.attribute
    )
    return GraphFacts(
        opset=default_opset(model),
        op_counts=dict(counts),
        params=total,
        params_by_op=dict(by_op),
        has_subgraphs=bool(has_sub),
        float_params_bytes=total * 4,
    )


def missing_kernels(model: Any) -> list[str]:
    """Nodes whose op (at the model's opset) has no CPU kernel in the installed onnxruntime."""
    import onnx

    try:
        import onnxruntime.capi._pybind_state as C

        kernels = C.get_all_opkernel_def()
    except Exception:  # noqa: BLE001 - the session load will report the problem instead
        return []
    avail: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in kernels:
        if k.provider == "CPUExecutionProvider":
            avail.setdefault((k.domain or "", k.op_name), []).append(tuple(k.version_range))
    opsets = {("" if i.domain == "ai.onnx" else i.domain): i.version for i in model.opset_import}
    missing = []
    local_functions = {(f.domain, f.name) for f in model.functions}
    for node in iter_nodes(model.graph):
        dom = "" if node.domain in ("", "ai.onnx") else node.domain
        if (node.domain, node.op_type) in local_functions:
            continue
        ranges = avail.get((dom, node.op_type))
        if ranges is None:
            # Function ops (e.g. some ai.onnx ops) are expanded by onnxruntime; only flag unknown schemas.
            try:
                onnx.defs.get_schema(node.op_type, opsets.get(dom, 1), dom)
                schema_known = True
            except Exception:  # noqa: BLE001
                schema_known = False
            if not schema_known or dom not in ("",):
                missing.append(f"{dom + '.' if dom else ''}{node.op_type}")
            continue
        if dom == "":
            try:
                since = onnx.defs.get_schema(node.op_type, opsets.get("", 1), "").since_version
            except Exception:  # noqa: BLE001
                continue
            if not any(lo <= since <= hi for lo, hi in ranges):
                missing.append(f"{node.op_type}(opset {since})")
    return sorted(set(missing))


def _ver(v: str) -> tuple[int, int]:
    parts = v.split(".")
    return int(parts[0]), int(parts[1])


def target_runtime_issues(model: Any, ort_version: str) -> list[str]:
    """What an older onnxruntime on the device would not run: too-new opset, too-new contrib ops."""
    want = _ver(ort_version)
    issues = []
    op = default_opset(model)
    max_op = ORT_MAX_OPSET.get(want)
    if max_op is None and want < min(ORT_MAX_OPSET):
        max_op = 14
    if max_op is not None and op > max_op:
        issues.append(f"opset {op} needs onnxruntime newer than {ort_version} (which runs opset <= {max_op})")
    for node in iter_nodes(model.graph):
        need = CONTRIB_MIN_ORT.get(node.op_type) if node.domain == "com.microsoft" else None
        if need and want < need:
            issues.append(f"{node.op_type} needs onnxruntime >= {need[0]}.{need[1]}")
    return sorted(set(issues))
