"""The bundle manifest: what a device needs to know to trust, run and watch one model release."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.errors import ManifestError, SchemaVersionError
from edgefleet.protocol._targets import SEMVER, SLUG

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "TensorSpec",
    "RuntimeRequirements",
    "PreprocessStep",
    "Postprocess",
    "LatencyStats",
    "Metrics",
    "Lineage",
    "Budgets",
    "GoldenSpec",
    "FileEntry",
    "manifest_json_schema",
]

MANIFEST_SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is metadata; anything larger is refused before parsing


DType = Literal["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool", "string"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class TensorSpec(_Strict):
    """One model input or output. ``shape`` dims are ints, or strings for symbolic dims (``"batch"``)."""

    name: str
    dtype: DType
    shape: list[int | str]
    value_range: tuple[float, float] | None = None
    description: str | None = None


class RuntimeRequirements(_Strict):
    """What the device must have to run the model."""

    onnxruntime: str = Field(">=1.16", description="PEP 440 version specifier for onnxruntime")
    opset: int | None = None
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    min_ram_mb: int | None = None
    isa_flags: list[str] = Field(default_factory=list, description="CPU flags the model needs, e.g. avx2")


class PreprocessStep(BaseModel):
    """One declarative preprocessing step: ``{"op": "resize", "size": [28, 28]}``.

    The manifest keeps steps generic; ``edgefleet.bundle.Preprocess`` validates each op's parameters.
    """

    model_config = ConfigDict(extra="allow")
    op: str


class Postprocess(_Strict):
    task: Literal["classification", "regression", "embedding", "detection", "other"] = "classification"
    output: str | None = Field(None, description="name of the output that carries scores; default: first")
    softmax: bool = False
    argmax: bool = True
    labels: list[str] | None = None


class LatencyStats(_Strict):
    mean_ms: float
    p50_ms: float
    p90_ms: float | None = None
    p95_ms: float
    p99_ms: float | None = None
    batch_size: int = 1


class Metrics(_Strict):
    """Figures measured at build time."""

    accuracy: float | None = None
    agreement: float | None = None
    latency: dict[str, LatencyStats] = Field(default_factory=dict, description="by device profile name")
    size_bytes: int | None = None
    extra: dict[str, float] = Field(default_factory=dict)


class Lineage(_Strict):
    parent_version: str | None = None
    dataset_sha256: str | None = None
    optimization: dict[str, Any] = Field(default_factory=dict)
    source_commit: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class Budgets(_Strict):
    """Limits the device's health gate enforces before it activates this bundle."""

    latency_p95_ms: float | None = None
    ram_mb: float | None = None


class GoldenSpec(_Strict):
    count: int
    atol: float = 1e-4
    rtol: float = 1e-3


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(_Strict):
    """``manifest.json`` of a bundle (schema-versioned)."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    version: str
    variant: str = Field(description="hardware class this build targets, e.g. cpu-int8, pi4, jetson")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_file: str = "model.onnx"
    model_format: Literal["onnx", "tflite"] = "onnx"
    runtime: RuntimeRequirements = Field(default_factory=RuntimeRequirements)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: list[PreprocessStep] = Field(default_factory=list)
    postprocess: Postprocess = Field(default_factory=Postprocess)
    metrics: Metrics = Field(default_factory=Metrics)
    budgets: Budgets = Field(default_factory=Budgets)
    golden: GoldenSpec | None = None
    lineage: Lineage = Field(default_factory=Lineage)
    files: dict[str, FileEntry] = Field(default_factory=dict, description="every other file: sha256, size")

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v > MANIFEST_SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema_version {v} is newer than this edgefleet understands "
                f"({MANIFEST_SCHEMA_VERSION}); upgrade edgefleet to read it"
            )
        if v < 1:
            raise ValueError("schema_version must be >= 1")
        return v

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not SEMVER.match(v):
            raise ValueError(f"version {v!r} is not semver (MAJOR.MINOR.PATCH, e.g. 1.4.0)")
        return v

    @field_validator("name", "variant")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(
                f"{v!r} must be 1-64 lowercase letters, digits, '.', '_' or '-', starting alphanumeric"
            )
        return v

    @property
    def key(self) -> str:
        """``name/version/variant``: the identity of a published bundle."""
        return f"{self.name}/{self.version}/{self.variant}"

    def to_json(self) -> bytes:
        """Canonical JSON bytes (sorted keys), so the same manifest always hashes the same."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse and validate manifest JSON, turning every failure into a ManifestError."""
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"manifest is {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
                hint="a manifest holds metadata only; keep data in the bundle's other files",
            )
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"manifest is not valid JSON: {e}", hint="rebuild the bundle") from e
        if not isinstance(obj, dict):
            raise ManifestError("manifest must be a JSON object", hint="rebuild the bundle")
        sv = obj.get("schema_version", MANIFEST_SCHEMA_VERSION)
        if isinstance(sv, int) and sv > MANIFEST_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"manifest schema_version {sv} is newer than this edgefleet understands "
                f"({MANIFEST_SCHEMA_VERSION})",
                hint="upgrade edgefleet on this machine to read this bundle",
            )
        from pydantic import ValidationError as PydValidationError

        try:
            return cls.model_validate(obj)
        except PydValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
            )
            raise ManifestError(
                f"manifest is invalid: {problems}", hint="fix the manifest and rebuild"
            ) from e


def manifest_json_schema() -> dict[str, Any]:
    """JSON Schema of the manifest (exported to docs/manifest.schema.json)."""
    return Manifest.model_json_schema()
