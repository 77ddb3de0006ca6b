"""Write a real .tflite model (flatbuffer, LiteRT's own schema) from the digits MLP's ONNX weights.

No converter or download is needed: the MLP is FULLY_CONNECTED(+RELU) → FULLY_CONNECTED → SOFTMAX, which
LiteRT's builtin kernels run. The result must agree with ONNX Runtime on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mlp_weights(onnx_path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W [in, out], b [out]), ...] of a scikit-learn MLP exported by skl2onnx."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    layers = []
    for node in m.graph.node:
        if node.op_type == "MatMul":
            w = init[node.input[1]]
            add = next(n for n in m.graph.node if n.op_type == "Add" and n.input[0] == node.output[0])
            layers.append((w.astype(np.float32), init[add.input[1]].reshape(-1).astype(np.float32)))
    return layers


def write_mlp_tflite(onnx_path: Path, out: Path, *, batch: int | None = None) -> Path:
    """A .tflite with input ``input`` [batch, 64] and output ``probabilities`` [batch, 10].

    ``batch=None`` declares a dynamic batch (shape_signature -1); an int fixes it.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    layers = mlp_weights(onnx_path)
    buffers = [s.BufferT()]  # buffer 0 is the conventional empty buffer
    tensors: list = []

    def add_buffer(arr: np.ndarray | None) -> int:
        b = s.BufferT()
        if arr is not None:
            b.data = np.frombuffer(np.ascontiguousarray(arr).tobytes(), dtype=np.uint8)
        buffers.append(b)
        return len(buffers) - 1

    def add_tensor(name: str, shape: list[int], data: np.ndarray | None = None, dynamic: bool = False) -> int:
        t = s.TensorT()
        t.name = name
        t.type = s.TensorType.FLOAT32
        t.shape = [1 if d < 0 else d for d in shape]
        if dynamic:
            t.shapeSignature = shape
        t.buffer = add_buffer(data)
        tensors.append(t)
        return len(tensors) - 1

    n = -1 if batch is None else batch
    dyn = batch is None
    x = add_tensor("input", [n, layers[0][0].shape[0]], dynamic=dyn)
    ops = []
    codes = []

    def opcode(builtin: int) -> int:
        if builtin not in codes:
            codes.append(builtin)
        return codes.index(builtin)

    cur = x
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        wt = add_tensor(f"w{i}", [w.shape[1], w.shape[0]], w.T.copy())  # TFLite FC weights: [out, in]
        bt = add_tensor(f"b{i}", [b.shape[0]], b)
        y = add_tensor("logits" if last else f"h{i}", [n, w.shape[1]], dynamic=dyn)
        op = s.OperatorT()
        op.opcodeIndex = opcode(s.BuiltinOperator.FULLY_CONNECTED)
        op.inputs, op.outputs = [cur, wt, bt], [y]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = (
            s.ActivationFunctionType.NONE if last else s.ActivationFunctionType.RELU
        )
        op.builtinOptions = opts
        ops.append(op)
        cur = y
    probs = add_tensor("probabilities", [n, layers[-1][0].shape[1]], dynamic=dyn)
    sm = s.OperatorT()
    sm.opcodeIndex = opcode(s.BuiltinOperator.SOFTMAX)
    sm.inputs, sm.outputs = [cur], [probs]
    sm.builtinOptionsType = s.BuiltinOptions.SoftmaxOptions
    smo = s.SoftmaxOptionsT()
    smo.beta = 1.0
    sm.builtinOptions = smo
    ops.append(sm)

    g = s.SubGraphT()
    g.tensors, g.inputs, g.outputs, g.operators, g.name = tensors, [x], [probs], ops, "main"
    model = s.ModelT()
    model.version = 3
    model.description = "edgefleet test: digits MLP"
    model.subgraphs = [g]
    model.buffers = buffers
    model.operatorCodes = []
    for c in codes:
        oc = s.OperatorCodeT()
        oc.builtinCode = c
        oc.deprecatedBuiltinCode = c if c < 127 else 127
        oc.version = 1
        model.operatorCodes.append(oc)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    Path(out).write_bytes(bytes(b.Output()))
    return Path(out)
