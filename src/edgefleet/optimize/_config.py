"""Limits and defaults of the optimizer, from ``EDGEFLEET_OPTIMIZE_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OptimizeConfig"]

_MIB = 1 << 20


class OptimizeConfig(BaseSettings):
    """Every limit the optimizer and ``benchmark()`` apply, with its default.

    Sizes are checked before a file is read, so a huge or hostile input is refused up front.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_OPTIMIZE_", extra="ignore")

    # --- inputs ------------------------------------------------------------------------------
    max_model_bytes: int = Field(2048 * _MIB, description="largest model file accepted (protobuf limit)")
    max_data_bytes: int = Field(1024 * _MIB, description="largest .npz/.npy/image folder read")
    max_calib_samples: int = Field(256, ge=1, description="calibration samples used (first N)")
    max_eval_samples: int = Field(2000, ge=1, description="evaluation samples used (first N)")
    eval_batch: int = Field(64, ge=1, description="batch size for evaluation where the model allows it")

    # --- preparation -------------------------------------------------------------------------
    min_qdq_opset: int = Field(13, description="opset below which the model is upgraded (per-channel QDQ)")
    upgrade_opset: int = Field(17, description="opset the model is upgraded to when too old")
    parity_samples: int = Field(16, ge=1, description="samples compared after each preparation step")
    parity_rtol: float = Field(1e-3, description="relative tolerance of preparation parity checks")
    parity_atol: float = Field(1e-4, description="absolute tolerance of preparation parity checks")
    export_atol: float = Field(1e-4, description="tolerance of torch/sklearn export checks (scaled)")

    # --- variants ----------------------------------------------------------------------------
    percentile: float = Field(99.999, description="percentile used by Percentile calibration")
    int4_block_size: int = Field(32, description="block size of int4 weight-only quantization")
    matmul_heavy_share: float = Field(
        0.5, description="share of weights in MatMul nodes above which int4 weight-only is built"
    )
    conv_heavy_share: float = Field(
        0.5, description="share of weights in Conv above which a model is conv-heavy"
    )
    prune_sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="sparsity of the default pruned variant")
    max_exclusion_rounds: int = Field(
        6, ge=0, description="re-quantization rounds of sensitive-node exclusion"
    )
    debug_samples: int = Field(16, ge=1, description="samples used to rank nodes by quantization error")

    # --- measurement -------------------------------------------------------------------------
    warmup_runs: int = Field(10, ge=0, description="runs before latency is recorded")
    runs: int = Field(200, ge=3, description="timed runs at batch 1")
    throughput_batches: tuple[int, ...] = Field((1, 8, 32), description="batch sizes for throughput")
    throughput_runs: int = Field(20, ge=1, description="timed runs per throughput batch size")
    measure_memory: bool = Field(True, description="measure peak RSS added by a session (subprocess)")
    memory_timeout_s: float = Field(120.0, description="time limit of the memory probe subprocess")
    interleave_rounds: int = Field(
        7, ge=3, description="alternating rounds of the baseline-vs-candidate check"
    )
    interleave_runs: int = Field(40, ge=3, description="least timed runs per model per interleaved round")
    interleave_round_s: float = Field(
        0.05, ge=0.0, description="least duration of one model's interleaved round"
    )
    provider_runs: int = Field(50, ge=3, description="timed runs per variant on each execution provider")
    provider_samples: int = Field(
        64, ge=1, description="evaluation samples each provider's quality is judged on"
    )
    provider_pythons: dict[str, str] = Field(
        default_factory=dict,
        description="execution provider -> Python interpreter that has it, for providers this onnxruntime "
        'lacks, e.g. {"openvino": "/opt/ov-venv/bin/python"} (JSON in EDGEFLEET_OPTIMIZE_PROVIDER_PYTHONS)',
    )
    noise_floor: float = Field(
        0.05, ge=0.0, description="relative p50 difference always treated as noise (0.05 = 5 %)"
    )
