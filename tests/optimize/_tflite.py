"""Write a real .tflite flatbuffer (dense layers + softmax) from trained weights, without TensorFlow.

Uses the LiteRT flatbuffer schema shipped with ai-edge-litert, so the file is what a TFLite converter
would emit for the same layers; LiteRT then runs it like any other model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dense_tflite(path: Path, layers: list[tuple[np.ndarray, np.ndarray]], n_in: int) -> Path:
    """``layers``: (weight [in, out], bias [out]); ReLU between layers, softmax at the end."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT()
    model.version = 3
    model.description = "edgefleet test dense classifier"
    model.buffers = [s.BufferT()]  # buffer 0: the empty sentinel
    sub = s.SubGraphT()
    sub.tensors, sub.operators = [], []

    def tensor(
        name: str, shape: list[int], data: np.ndarray | None = None, dynamic_batch: bool = False
    ) -> int:
        t = s.TensorT()
        t.name = name
        t.shape = shape
        if dynamic_batch:
            t.shapeSignature = [-1, *shape[1:]]
        t.type = s.TensorType.FLOAT32
        if data is None:
            t.buffer = 0
        else:
            b = s.BufferT()
            b.data = np.ascontiguousarray(data, dtype=np.float32).tobytes()
            model.buffers.append(b)
            t.buffer = len(model.buffers) - 1
        sub.tensors.append(t)
        return len(sub.tensors) - 1

    fc, sm = s.OperatorCodeT(), s.OperatorCodeT()
    fc.builtinCode = fc.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    sm.builtinCode = sm.deprecatedBuiltinCode = s.BuiltinOperator.SOFTMAX
    fc.version = sm.version = 1
    model.operatorCodes = [fc, sm]

    x = tensor("input", [1, n_in], dynamic_batch=True)
    sub.inputs = [x]
    cur = x
    for i, (w, b) in enumerate(layers):
        wt = tensor(f"w{i}", [w.shape[1], w.shape[0]], w.T)  # TFLite FC weights are [out, in]
        bt = tensor(f"b{i}", [b.shape[0]], b)
        out = tensor(f"h{i}", [1, w.shape[1]], dynamic_batch=True)
        op = s.OperatorT()
        op.opcodeIndex = 0
        op.inputs, op.outputs = [cur, wt, bt], [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = (
            s.ActivationFunctionType.RELU if i < len(layers) - 1 else s.ActivationFunctionType.NONE
        )
        op.builtinOptions = opts
        sub.operators.append(op)
        cur = out
    probs = tensor("probabilities", [1, layers[-1][0].shape[1]], dynamic_batch=True)
    op = s.OperatorT()
    op.opcodeIndex = 1
    op.inputs, op.outputs = [cur], [probs]
    op.builtinOptionsType = s.BuiltinOptions.SoftmaxOptions
    so = s.SoftmaxOptionsT()
    so.beta = 1.0
    op.builtinOptions = so
    sub.operators.append(op)
    sub.outputs = [probs]
    sub.name = "main"
    model.subgraphs = [sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path
