"""Pre-flight warnings: things that make a variant slow or unrunnable on the target, said up front."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from edgefleet.optimize._graph import GraphFacts, missing_kernels, target_runtime_issues
from edgefleet.optimize._spec import DeviceProfile, Variant

__all__ = ["Warning_", "preflight"]


class Warning_(BaseModel):
    """One pre-flight finding: a stable ``code`` and a sentence."""

    code: str
    message: str


def preflight(
    model: Any, facts: GraphFacts, profile: DeviceProfile, variants: list[Variant], settings: Any
) -> list[Warning_]:
    out: list[Warning_] = []
    kinds = {v.kind for v in variants}
    int8 = bool(kinds & {"dynamic-int8", "static-int8", "int4"})
    if int8 and not profile.has_int8_dot:
        isa = "dot-product (asimddp/i8mm)" if profile.is_arm else "VNNI (avx512_vnni/avx_vnni)"
        out.append(
            Warning_(
                code="no_int8_dot",
                message=f"profile {profile.name!r} CPU has no {isa} instructions: int8 kernels gain little "
                "and may be slower than fp32; static variants use 7-bit weights (reduce_range) to avoid overflow",
            )
        )
    if "dynamic-int8" in kinds and facts.conv_share >= settings.conv_heavy_share:
        out.append(
            Warning_(
                code="dynamic_on_conv",
                message=f"{facts.conv_share:.0%} of the weights are in Conv layers: dynamic quantization turns "
                "them into ConvInteger with run-time activation scaling, usually slower than fp32 on CPU; "
                "prefer static int8 (QDQ)",
            )
        )
    if facts.opset < settings.min_qdq_opset:
        out.append(
            Warning_(
                code="old_opset",
                message=f"model opset {facts.opset} is below {settings.min_qdq_opset}: per-channel QDQ needs "
                f"opset >= 13; the optimizer upgrades it to {settings.upgrade_opset} (checked by output parity)",
            )
        )
    if any(v.quant_format == "qoperator" for v in variants) and not profile.is_arm:
        out.append(
            Warning_(
                code="qoperator_on_x86",
                message="QOperator format on x86: onnxruntime's CPU kernels are tuned for QDQ since 1.11; "
                "QOperator variants are kept for comparison only",
            )
        )
    lacking = missing_kernels(model)
    if lacking:
        out.append(
            Warning_(
                code="unsupported_ops",
                message="ops with no CPU kernel in the installed onnxruntime: " + ", ".join(lacking[:10]),
            )
        )
    if profile.onnxruntime:
        for issue in target_runtime_issues(model, profile.onnxruntime):
            out.append(
                Warning_(code="target_runtime", message=f"device onnxruntime {profile.onnxruntime}: {issue}")
            )
        if "int4" in kinds:
            parts = profile.onnxruntime.split(".")
            if (int(parts[0]), int(parts[1])) < (1, 17):
                out.append(
                    Warning_(
                        code="target_runtime",
                        message=f"device onnxruntime {profile.onnxruntime}: int4 (MatMulNBits) needs >= 1.17",
                    )
                )
    if facts.has_subgraphs and "static-int8" in kinds:
        out.append(
            Warning_(
                code="subgraphs",
                message="the model has control-flow subgraphs (If/Loop): static quantization leaves nodes "
                "inside them in float",
            )
        )
    return out
