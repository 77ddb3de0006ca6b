"""Structured pruning of torch models with torch-pruning (DepGraph): whole channels and neurons are removed,
with every layer that depends on them resized, so the exported ONNX model really is smaller and faster.

Importance is the L2 magnitude of each channel group or its first-order Taylor score (weight x gradient
on a batch of the training data); the ratio applies per layer or globally (channels compete across
layers); ``steps > 1`` prunes iteratively, fine-tuning between steps. The classifier head's outputs are
never pruned. Attention stacks are left to the fewer-layers student (``--student``): their head splits
need per-model head counts that a generic pass cannot know.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.errors import ConfigError

__all__ = ["PruneResult", "structured_prune", "IMPORTANCES"]

IMPORTANCES = ("magnitude", "taylor")
FineTune = Callable[[Any, int], None]


@dataclass
class PruneResult:
    model: Any
    macs_before: int
    params_before: int
    macs_after: int
    params_after: int
    steps: list[dict[str, float]] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        return [
            f"structured pruning removed {1 - self.params_after / max(self.params_before, 1):.0%} of the "
            f"parameters ({self.params_before:,} -> {self.params_after:,}) and "
            f"{1 - self.macs_after / max(self.macs_before, 1):.0%} of the MACs "
            f"({self.macs_before:,} -> {self.macs_after:,})"
        ]


def _has_attention(model: Any) -> bool:
    from torch import nn

    return any(
        isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer)) or n.endswith("qkv")
        for n, m in model.named_modules()
    )


def structured_prune(
    model: Any,
    x: np.ndarray,
    ratio: float,
    *,
    y: np.ndarray | None = None,
    importance: str = "magnitude",
    global_pruning: bool = False,
    steps: int = 1,
    fine_tune: FineTune | None = None,
    copy_model: bool = True,
) -> PruneResult:
    """Remove ``ratio`` of the channels/neurons of ``model`` (a copy unless ``copy_model=False``).

    Args:
        x, y: a sample of training inputs (and labels) — the example for tracing and the batch for Taylor.
        fine_tune: ``fine_tune(model, step)`` after each step (e.g. a few epochs of distillation from the
            unpruned model).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812
    import torch_pruning as tp
    from torch import nn

    if not 0 < ratio < 1:
        raise ConfigError(f"prune ratio {ratio:g} must be between 0 and 1", hint="e.g. --prune 0.5")
    if importance not in IMPORTANCES:
        raise ConfigError(
            f"importance {importance!r} is unknown", hint=f"use one of {', '.join(IMPORTANCES)}"
        )
    if not 1 <= steps <= 100:
        raise ConfigError(f"prune steps {steps} must be 1..100", hint="e.g. --prune-steps 3")
    if _has_attention(model):
        raise ConfigError(
            "structured pruning of attention blocks is not supported here",
            hint="distill into fewer blocks instead: --student width0.5",
        )
    m = copy.deepcopy(model) if copy_model else model
    m.eval()
    xb = torch.from_numpy(np.ascontiguousarray(x[:256]))
    example = xb[:1]
    with torch.no_grad():
        ref = m(xb)
    n_out = int(ref.shape[-1])
    heads = [mod for mod in m.modules() if isinstance(mod, nn.Linear) and mod.out_features == n_out]
    macs0, params0 = tp.utils.count_ops_and_params(m, example)
    imp = (
        tp.importance.GroupMagnitudeImportance(p=2)
        if importance == "magnitude"
        else tp.importance.GroupTaylorImportance()
    )
    pruner = tp.pruner.MetaPruner(
        m,
        example,
        importance=imp,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        iterative_steps=steps,
        ignored_layers=heads[-1:],
    )
    res = PruneResult(m, int(macs0), int(params0), int(macs0), int(params0))
    for step in range(1, steps + 1):
        if importance == "taylor":
            m.zero_grad()
            out = m(xb)
            loss = (
                F.cross_entropy(out, torch.from_numpy(y[: len(xb)]))
                if y is not None
                else F.kl_div(F.log_softmax(out, 1), F.softmax(ref, 1), reduction="batchmean")
            )
            loss.backward()
        pruner.step()
        m.zero_grad()
        macs, params = tp.utils.count_ops_and_params(m.eval(), example)
        res.steps.append({"step": step, "macs": int(macs), "params": int(params)})
        if fine_tune is not None:
            fine_tune(m, step)
        m.eval()
    res.macs_after, res.params_after = res.steps[-1]["macs"], res.steps[-1]["params"]
    for p in m.parameters():
        p.grad = None
    return res
