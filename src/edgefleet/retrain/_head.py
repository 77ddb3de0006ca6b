"""The built-in head retrainer: refit the final classification layer of an ONNX model on its own features.

A model "has a classification head" when its class scores come from ``Softmax(Gemm(f, W, b))`` or
``Softmax(Add(MatMul(f, W), b))`` with ``W`` and ``b`` constant initializers (what skl2onnx writes for an
MLP or a logistic regression, and what torch exports for a ``Linear`` before ``softmax``). The retrainer
runs the model once with ``f`` exposed as an extra output, fits a multinomial logistic regression
(scikit-learn) on ``f`` and the labels, and writes its coefficients into ``W`` and ``b``: every other
weight, the graph and the model's inputs and outputs stay as they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import InputError, ModelLoadError

__all__ = ["HeadInfo", "find_head", "retrain_head"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadInfo:
    """Where the head is: the feature tensor, the weight and bias initializers, ``W``'s layout."""

    features: str
    weight: str
    bias: str
    transposed: bool  # Gemm with transB=1: W is (classes, features)


def _producers(graph: Any) -> dict[str, Any]:
    return {o: n for n in graph.node for o in n.output}


def find_head(model: Any) -> HeadInfo:
    """Locate the classification head of an ``onnx.ModelProto``.

    Raises:
        ModelLoadError: no ``Softmax`` fed by a constant linear layer (name what was found instead).
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    prod = _producers(g)
    softmaxes = [n for n in g.node if n.op_type == "Softmax"]
    for sm in reversed(softmaxes):
        n = prod.get(sm.input[0])
        if n is None:
            continue
        if n.op_type == "Gemm" and len(n.input) == 3 and {n.input[1], n.input[2]} <= inits:
            attrs = {a.name: a.i for a in n.attribute}
            if attrs.get("transA", 0):
                continue
            return HeadInfo(n.input[0], n.input[1], n.input[2], bool(attrs.get("transB", 0)))
        if n.op_type == "Add":
            for mm_out, bias in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
                mm = prod.get(mm_out)
                if mm is not None and mm.op_type == "MatMul" and mm.input[1] in inits and bias in inits:
                    return HeadInfo(mm.input[0], mm.input[1], bias, False)
    raise ModelLoadError(
        "the model has no classification head the built-in retrainer can refit "
        f"({len(softmaxes)} Softmax node(s), none fed by a constant Gemm or MatMul+Add)",
        hint="pass a training entry point: --trainer module:function or --trainer-command CMD",
    )


def _features(model: Any, head: HeadInfo, feeds: dict[str, np.ndarray], batch: int = 512) -> np.ndarray:
    """Run the model with the head's input exposed as an output; returns (rows, features)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    if head.features not in {o.name for o in m.graph.output}:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(head.features))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rows = len(next(iter(feeds.values())))
    out = []
    for i in range(0, rows, batch):
        part = {k: v[i : i + batch] for k, v in feeds.items()}
        out.append(sess.run([head.features], part)[0])
    f = np.concatenate(out).astype(np.float64)
    return f.reshape(len(f), -1)


def retrain_head(
    parent: str | Path,
    out: str | Path,
    feeds: dict[str, np.ndarray],
    y: np.ndarray,
    *,
    max_iter: int = 500,
    c: float = 1.0,
) -> dict[str, Any]:
    """Refit the head of the ONNX model at ``parent`` on ``feeds`` (model inputs) and labels ``y``; write ``out``.

    Returns:
        ``{"features": d, "classes": k, "train_accuracy": ..., "head": {...}}``.

    Raises:
        ModelLoadError: the parent cannot be read or has no head.
        InputError: the labels name classes the head does not have, or fewer than two classes appear.
    """
    import onnx
    from onnx import numpy_helper
    from sklearn.linear_model import LogisticRegression

    try:
        model = onnx.load(str(parent))
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:  # type: ignore[attr-defined]
        raise ModelLoadError(
            f"cannot read the parent model {parent}: {e}", hint="is it an ONNX file?"
        ) from None
    head = find_head(model)
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[head.weight])
    b = numpy_helper.to_array(inits[head.bias])
    n_classes = w.shape[0] if head.transposed else w.shape[-1]
    y = np.asarray(y).astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise InputError(
            f"labels run from {y.min()} to {y.max()}, but the head has {n_classes} classes",
            hint="label samples with the model's class indices (0 .. classes-1)",
        )
    present = np.unique(y)
    if len(present) < 2:
        raise InputError("the labelled data holds one class only", hint="label samples of several classes")
    f = _features(model, head, feeds)
    clf = LogisticRegression(max_iter=max_iter, C=c)
    clf.fit(f, y)
    # Classes absent from the data keep a very low score instead of vanishing from the head.
    coef = np.zeros((n_classes, f.shape[1]))
    bias = np.full(n_classes, -1e4 if len(present) < n_classes else 0.0)
    coef[present] = clf.coef_ if len(present) > 2 else np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
    bias[present] = (
        clf.intercept_ if len(present) > 2 else np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    )
    new_w = coef if head.transposed else coef.T
    inits[head.weight].CopyFrom(numpy_helper.from_array(new_w.astype(w.dtype).reshape(w.shape), head.weight))
    inits[head.bias].CopyFrom(numpy_helper.from_array(bias.astype(b.dtype).reshape(b.shape), head.bias))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    acc = float(np.mean(clf.predict(f) == y))
    log.info("head refit: %d features, %d classes, train accuracy %.3f", f.shape[1], n_classes, acc)
    return {
        "features": int(f.shape[1]),
        "classes": int(n_classes),
        "rows": len(y),
        "train_accuracy": round(acc, 4),
        "head": {"features": head.features, "weight": head.weight, "bias": head.bias},
    }
