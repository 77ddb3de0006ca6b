"""What to build and what to fit: variant specs, accuracy/device budgets, device profiles."""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydValidationError

from edgefleet.errors import ConfigError

__all__ = [
    "Budget",
    "DeviceProfile",
    "Variant",
    "VariantKind",
    "default_variant_names",
    "local_isa_flags",
]

VariantKind = Literal["fp32", "fp16", "dynamic-int8", "static-int8", "int4", "pruned", "tflite"]
Calibration = Literal["minmax", "entropy", "percentile"]

_STATIC = re.compile(r"^static-int8-(pt|pc)-(minmax|entropy|percentile)(-qop)?$")
_DYNAMIC = re.compile(r"^dynamic-int8(-pc)?$")
_INT4 = re.compile(r"^int4(?:-b(\d+))?$")
_PRUNED = re.compile(r"^pruned-(\d{1,2})$")

_MAX_PROFILE_BYTES = 64 * 1024


class Variant(BaseModel):
    """One way to build the model, named so the CLI can ask for it (``static-int8-pc-entropy``).

    Names: ``fp32`` (graph-optimized baseline), ``fp16``, ``dynamic-int8`` / ``dynamic-int8-pc``,
    ``static-int8-{pt|pc}-{minmax|entropy|percentile}`` (+ ``-qop`` for QOperator format),
    ``int4`` / ``int4-b64`` (weight-only, block size), ``pruned-50`` (magnitude pruning, % of weights).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: VariantKind
    per_channel: bool = False
    calibration: Calibration | None = None
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    sparsity: float | None = None
    block_size: int | None = None

    @classmethod
    def parse(cls, name: str) -> Variant:
        """Parse a variant name; raises ConfigError naming the known forms."""
        n = name.strip().lower()
        if n in ("fp32", "fp16", "tflite"):
            return cls(name=n, kind=n)  # type: ignore[arg-type]
        if m := _DYNAMIC.match(n):
            return cls(name=n, kind="dynamic-int8", per_channel=bool(m.group(1)))
        if m := _STATIC.match(n):
            return cls(
                name=n,
                kind="static-int8",
                per_channel=m.group(1) == "pc",
                calibration=m.group(2),  # type: ignore[arg-type]
                quant_format="qoperator" if m.group(3) else "qdq",
            )
        if m := _INT4.match(n):
            block = int(m.group(1)) if m.group(1) else None
            if block is not None and (block < 16 or block & (block - 1)):
                raise ConfigError(
                    f"variant {name!r}: int4 block size must be a power of two >= 16",
                    hint="use int4, int4-b32, int4-b64 or int4-b128",
                )
            return cls(name=n, kind="int4", block_size=block)
        if m := _PRUNED.match(n):
            pct = int(m.group(1))
            if not 0 < pct < 100:
                raise ConfigError(f"variant {name!r}: sparsity must be 1-99 %", hint="e.g. pruned-50")
            return cls(name=n, kind="pruned", sparsity=pct / 100)
        raise ConfigError(
            f"unknown variant {name!r}",
            hint=(
                "known: fp32, fp16, dynamic-int8[-pc], static-int8-{pt|pc}-{minmax|entropy|percentile}[-qop], "
                "int4[-bN], pruned-NN"
            ),
        )


def default_variant_names(*, matmul_heavy: bool, prune_pct: int = 50) -> list[str]:
    """Every sensible variant for an ONNX model (int4 only where MatMul weights dominate)."""
    names = [
        "fp32",
        "fp16",
        "dynamic-int8",
        "static-int8-pt-minmax",
        "static-int8-pc-minmax",
        "static-int8-pt-entropy",
        "static-int8-pc-entropy",
        "static-int8-pt-percentile",
        "static-int8-pc-percentile",
    ]
    if matmul_heavy:
        # transformers: per-channel weights keep most of int8's size gain at much less quality loss
        names.insert(names.index("dynamic-int8") + 1, "dynamic-int8-pc")
        names.append("int4")
    names.append(f"pruned-{prune_pct}")
    return names


class Budget(BaseModel):
    """What a chosen variant must meet.

    Args:
        max_drop: largest quality drop against the fp32 baseline, in points (accuracy %, agreement %,
            or cosine similarity x 100 when neither applies).
        min_quality: absolute floor of the quality metric, in the same points.
        latency_p95_ms: p95 latency at batch 1 on the device profile.
        ram_mb: peak resident memory a session may add.
        size_mb: largest model file.
    """

    model_config = ConfigDict(extra="forbid")

    max_drop: float = Field(1.0, ge=0.0)
    min_quality: float | None = None
    latency_p95_ms: float | None = Field(None, gt=0)
    ram_mb: float | None = Field(None, gt=0)
    size_mb: float | None = Field(None, gt=0)

    @classmethod
    def from_profile(
        cls, profile: DeviceProfile | None, *, max_drop: float = 1.0, min_quality: float | None = None
    ) -> Budget:
        """Accuracy budget plus the device profile's latency, RAM and size budgets."""
        p = profile
        return cls(
            max_drop=max_drop,
            min_quality=min_quality,
            latency_p95_ms=p.latency_budget_ms if p else None,
            ram_mb=p.ram_budget_mb if p else None,
            size_mb=p.size_budget_mb if p else None,
        )


def local_isa_flags() -> list[str]:
    """CPU flags of this machine that matter for int8/fp16 speed (from /proc/cpuinfo or py-cpuinfo)."""
    interesting = {
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_int8",
        "fma",
        "f16c",
        "asimd",
        "asimddp",
        "asimdhp",
        "i8mm",
        "sve",
        "neon",
    }
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        try:
            import cpuinfo  # py-cpuinfo

            flags.update(cpuinfo.get_cpu_info().get("flags", []))
        except Exception:  # noqa: BLE001 - flags are advisory
            pass
    return sorted(f.replace("avx512vnni", "avx512_vnni") for f in flags if f in interesting)


class DeviceProfile(BaseModel):
    """The device a variant must fit: cores, memory, instruction set, budgets.

    YAML example::

        name: edge-x86
        cores: 2
        ram_mb: 2048
        arch: x86_64
        isa_flags: [avx2, avx512_vnni]
        execution_providers: [CPUExecutionProvider]
        onnxruntime: "1.17"        # oldest onnxruntime the fleet runs (checked against opsets and ops)
        latency_budget_ms: 5       # p95 at batch 1
        ram_budget_mb: 200         # peak RSS a session may add
        size_budget_mb: 10
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "local"
    cores: int = Field(1, ge=1, le=1024)
    ram_mb: int | None = Field(None, ge=1)
    arch: str = Field(default_factory=lambda: platform.machine() or "x86_64")
    isa_flags: list[str] | None = Field(None, description="None: this machine's flags")
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    onnxruntime: str | None = Field(None, description="onnxruntime version the device runs, e.g. '1.17'")
    latency_budget_ms: float | None = Field(None, gt=0)
    ram_budget_mb: float | None = Field(None, gt=0)
    size_budget_mb: float | None = Field(None, gt=0)
    # Written by `edgefleet device probe` (edgefleet.power): the same file serves both commands.
    device_class: str | None = Field(None, description="hardware class (cpu, arm64, armv7, cuda)")
    compute_score: float | None = Field(
        None, gt=0, description="measured GFLOP/s (matmul + conv, 1 thread); latency is scaled by it"
    )
    device: dict[str, Any] | None = Field(
        None, description="what the probe read: cgroup limits, thermal zones, power supplies, energy"
    )

    @field_validator("onnxruntime")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^\d+\.\d+(\.\d+)?$", v):
            raise ValueError(f"onnxruntime version {v!r} must look like 1.17 or 1.17.1")
        return v

    @field_validator("execution_providers")
    @classmethod
    def _providers(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("execution_providers must name at least one provider (CPUExecutionProvider)")
        return v

    @property
    def flags(self) -> list[str]:
        """ISA flags from the profile, or this machine's when the profile does not say."""
        return list(self.isa_flags) if self.isa_flags is not None else local_isa_flags()

    @property
    def is_arm(self) -> bool:
        a = self.arch.lower()
        return a.startswith(("arm", "aarch64")) or "asimd" in self.flags

    @property
    def has_int8_dot(self) -> bool:
        """VNNI on x86, dot-product (asimddp / i8mm) on ARM: what makes int8 kernels fast."""
        f = set(self.flags)
        if self.is_arm:
            return bool(f & {"asimddp", "i8mm", "dotprod"})
        return bool(f & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @classmethod
    def local(cls, cores: int | None = None) -> DeviceProfile:
        """This machine, using all (or ``cores``) CPU cores and no budgets."""
        import os

        avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return cls(name="local", cores=max(1, int(cores or avail or 1)), isa_flags=local_isa_flags())

    @classmethod
    def from_yaml(cls, path: str | Path) -> DeviceProfile:
        """Read a profile YAML; every problem becomes a ConfigError naming the field."""
        import yaml

        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as e:
            raise ConfigError(
                f"device profile {p} cannot be read: {e.strerror}", hint="check the path"
            ) from e
        if size > _MAX_PROFILE_BYTES:
            raise ConfigError(
                f"device profile {p} is {size} bytes; a profile is a few lines of YAML",
                hint="point --profile at the device profile YAML",
            )
        try:
            data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"device profile {p} is not valid YAML: {e}", hint="fix the YAML syntax") from e
        if not isinstance(data, dict):
            raise ConfigError(
                f"device profile {p} must be a YAML mapping (name: ..., cores: ...)",
                hint="see `edgefleet optimize --help` for an example profile",
            )
        try:
            return cls.model_validate(data)
        except PydValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
            )
            raise ConfigError(
                f"device profile {p} is invalid: {problems}",
                hint="known fields: " + ", ".join(cls.model_fields),
            ) from e
