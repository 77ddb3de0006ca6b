"""Quantization-aware training for torch models, exported as a QDQ ONNX model with int8 weights.

Every Conv2d/Linear gets torch.ao.quantization ``FakeQuantize`` modules: per-tensor affine uint8 on its
input activation (moving-average min/max), per-channel symmetric int8 on its weight. BatchNorm is first
folded into the convolution before it (as the deployed graph has it). The model is then fine-tuned by
distillation from the float model (``_distill.distill``), observers are frozen, and the torchscript
exporter writes each fake-quant as a QuantizeLinear/DequantizeLinear pair; finally every weight's
QuantizeLinear is folded into an int8 initializer, so the file holds int8 weights (4x smaller) and
ONNX Runtime fuses the QDQ pairs into integer kernels.

Why torch.ao.quantization and not NNCF: the FakeQuantize modules and observers ship with torch 2.13
(nothing else to install, CPU-only) and their ONNX export is the maintained torchscript symbolic; NNCF
3.x pulls its own dependency set and pins torch ranges that lag new releases.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.optimize._distill import DistillConfig, DistillResult, distill

__all__ = ["prepare_qat", "qat", "export_qdq", "QAT_OPSET"]

QAT_OPSET = 13


def _fold_batchnorm(model: Any) -> None:
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for mod in list(model.modules()):
        if not isinstance(mod, nn.Sequential):
            continue
        names = list(mod._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = mod._modules[a], mod._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                mod._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                mod._modules[b] = nn.Identity()


def _fake_quant_layer(layer: Any) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    class FakeQuantLayer(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.act_fq = FakeQuantize(
                observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8
            )
            self.w_fq = FakeQuantize(
                observer=MovingAveragePerChannelMinMaxObserver,
                quant_min=-128,
                quant_max=127,
                dtype=torch.qint8,
                qscheme=torch.per_channel_symmetric,
                ch_axis=0,
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.w_fq(self.inner.weight)
            x = self.act_fq(x)
            if isinstance(self.inner, nn.Linear):
                return F.linear(x, w, self.inner.bias)
            c = self.inner
            return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)

    return FakeQuantLayer(layer)


def prepare_qat(model: Any) -> Any:
    """A copy of ``model`` with BN folded and fake quantization on every Conv2d/Linear."""
    from torch import nn

    m = copy.deepcopy(model).eval()
    _fold_batchnorm(m)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                setattr(parent, name, _fake_quant_layer(child))
    return m


def qat(
    model: Any, x: np.ndarray, y: np.ndarray | None, *, config: DistillConfig | None = None
) -> tuple[Any, DistillResult]:
    """Fake-quant fine-tuning of ``model`` distilled from its own float version; observers frozen after."""
    import torch

    q = prepare_qat(model)
    with torch.no_grad():  # calibrate the observers before training
        q.train()
        q(torch.from_numpy(x[:256]))
    res = distill(model.eval(), q, x, y, config=config or DistillConfig(epochs=5, lr=1e-3, alpha=0.5))
    q.apply(torch.ao.quantization.disable_observer)
    return q.eval(), res


def export_qdq(qat_model: Any, example: np.ndarray, dst: Path) -> Path:
    """Export the QAT model as QDQ ONNX with int8 weight initializers (input 'input', output 'output')."""
    import onnx
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            qat_model.eval(),
            (torch.from_numpy(example),),
            str(dst),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=QAT_OPSET,
            dynamo=False,
        )
    model = onnx.load(str(dst))
    _fold_weight_quantize(model)
    onnx.save(model, str(dst))
    return dst


def _fold_weight_quantize(model: Any) -> None:
    """QuantizeLinear(float initializer) -> an int8 initializer feeding the DequantizeLinear directly."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    aliases = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}

    def value(name: str) -> np.ndarray | None:
        while name in aliases:
            name = aliases[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    for node in list(g.node):
        if node.op_type != "QuantizeLinear":
            continue
        w, s, zp = (value(n) for n in node.input[:3])
        if w is None or s is None or zp is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if s.ndim == 1 and w.ndim > 1:
            shape[axis] = -1
        q = np.round(w / s.reshape(shape)) + zp.reshape(shape).astype(np.float32)
        info = np.iinfo(zp.dtype)
        q = np.clip(q, info.min, info.max).astype(zp.dtype)
        name = node.output[0]
        g.node.remove(node)
        g.initializer.append(numpy_helper.from_array(q, name))
    graph_outputs = {o.name for o in g.output}
    while True:  # drop the Identity/Constant nodes and initializers nothing reads any more
        used = {i for n in g.node for i in n.input} | graph_outputs
        dead = [n for n in g.node if n.op_type in ("Identity", "Constant") and n.output[0] not in used]
        for node in dead:
            g.node.remove(node)
        if not dead:
            break
    for name, init in inits.items():
        if name not in used:
            g.initializer.remove(init)
