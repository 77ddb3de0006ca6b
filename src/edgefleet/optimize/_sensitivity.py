"""Rank nodes by the quantization error they add, so the worst can stay in float.

Static QDQ models: onnxruntime's ``qdq_loss_debug`` gives, per activation, the SQNR between the float
model and the QDQ model; a node's *added* error is the SQNR it loses between its inputs and its output.
Weight-only schemes (dynamic int8, int4): the SQNR of each node's quantized weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.optimize._build import _Reader, weight_nodes
from edgefleet.optimize._prepare import quiet_ort_logs

__all__ = ["rank_static", "rank_weights", "sqnr_db", "channel_sqnr_db"]

log = logging.getLogger(__name__)

_CAP_DB = 120.0


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    got = np.asarray(got, dtype=np.float64).ravel()
    eps = np.finfo(np.float64).eps
    s = max(float(np.linalg.norm(ref)), eps)
    n = max(float(np.linalg.norm(ref - got)), eps)
    return min(_CAP_DB, 20.0 * math.log10(s / n))


def channel_sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Median SQNR over output channels (columns of a [K, N] MatMul weight, axis 0 of a Conv weight).

    A single outlier dominates a whole-tensor SQNR while rounding every other weight of its tensor to
    zero; the per-channel median exposes that.
    """
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.ndim < 2:
        return sqnr_db(ref, got)
    if ref.ndim == 2:
        ref, got = ref.T, got.T
    per = [
        sqnr_db(r, g)
        for r, g in zip(ref.reshape(ref.shape[0], -1), got.reshape(got.shape[0], -1), strict=True)
    ]
    return float(np.median(per))


def _groups(model: Any, present: set[str]) -> list[list[Any]]:
    """Float-model nodes grouped where the quantizer fused them (an intermediate tensor is gone)."""
    nodes = list(model.graph.node)
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    for j, n in enumerate(nodes):
        for t in n.input:
            i = producer.get(t)
            if i is not None and t not in present:
                parent[find(j)] = find(i)
    groups: dict[int, list[Any]] = {}
    for i, n in enumerate(nodes):
        groups.setdefault(find(i), []).append(n)
    return list(groups.values())


def rank_static(
    float_model: Path, qdq_model: Path, samples: list[dict[str, np.ndarray]], work: Path
) -> list[tuple[list[str], float]]:
    """Node groups of ``float_model`` ordered by the SQNR (dB) they lose in ``qdq_model``, worst first.

    A group is one node, or nodes the quantizer fused (e.g. MatMul + Relu); excluding a group keeps all
    of its nodes in float.
    """
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    aug_f = work / f"{float_model.stem}-debug-float.onnx"
    aug_q = work / f"{qdq_model.stem}-debug-qdq.onnx"
    with quiet_ort_logs():
        modify_model_output_intermediate_tensors(str(float_model), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_model), str(aug_q))
        f_act = collect_activations(str(aug_f), _Reader(samples))
        q_act = collect_activations(str(aug_q), _Reader(samples))
        act_err = compute_activation_error(create_activation_matching(q_act, f_act))
        try:
            w_match = create_weight_matching(str(float_model), str(qdq_model))
            w_err = {k: channel_sqnr_db(v["float"], v["dequantized"]) for k, v in w_match.items()}
        except Exception as e:  # noqa: BLE001 - weight matching is a refinement, not essential
            log.info("weight matching failed: %s", e)
            w_err = {}
    for p in (aug_f, aug_q):
        p.unlink(missing_ok=True)
    xmodel = {k: min(_CAP_DB, v["xmodel_err"]) for k, v in act_err.items() if "xmodel_err" in v}
    model = onnx.load(str(float_model))
    qdq = onnx.load(str(qdq_model))
    present = {t for n in qdq.graph.node for t in (*n.input, *n.output)} | {i.name for i in qdq.graph.input}
    ranked = []
    for group in _groups(model, present):
        made = {o for n in group for o in n.output}
        ext_in = [t for n in group for t in n.input if t not in made]
        ext_out = [o for o in made if o in xmodel]
        weights = [min(_CAP_DB, w_err[t]) for t in ext_in if t in w_err]
        if not ext_out and not weights:
            continue
        ins = [xmodel[t] for t in ext_in if t in xmodel]
        in_db = min(ins) if ins else _CAP_DB
        out_db = min(xmodel[o] for o in ext_out) if ext_out else in_db
        lost = max(0.0, in_db - out_db)
        # A badly quantized weight is a source of error even where the activations hide it.
        w_pen = max(0.0, 30.0 - min(weights)) if weights else 0.0
        names = [n.name for n in group if n.name]
        if names:
            ranked.append((names, lost + w_pen, out_db))
    ranked.sort(key=lambda t: (-t[1], t[2]))
    return [(n, sc) for n, sc, _ in ranked]


def rank_weights(float_model: Path, bits: int = 8, block: int | None = None) -> list[tuple[list[str], float]]:
    """Nodes ordered by how badly their weights survive ``bits``-bit symmetric quantization, worst first."""
    import onnx

    model = onnx.load(str(float_model))
    ranked = []
    for node, weights in weight_nodes(model).items():
        worst = _CAP_DB
        for _name, w in weights:
            worst = min(worst, channel_sqnr_db(w, _fake_quant(w, bits, block)))
        ranked.append(([node], _CAP_DB - worst))
    ranked.sort(key=lambda t: -t[1])
    return ranked


def _fake_quant(w: np.ndarray, bits: int, block: int | None) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    if block and w.ndim == 2 and w.shape[0] % block == 0:
        # MatMul weights [K, N]: blocks of `block` rows per column (as MatMulNBits does)
        k, n = w.shape
        b = w.reshape(k // block, block, n)
        scale = np.maximum(np.abs(b).max(axis=1, keepdims=True), 1e-12) / qmax
        return (np.clip(np.round(b / scale), -qmax - 1, qmax) * scale).reshape(k, n)
    scale = max(float(np.abs(w).max()), 1e-12) / qmax
    return np.clip(np.round(w / scale), -qmax - 1, qmax) * scale
