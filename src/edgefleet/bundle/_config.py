"""Safety limits and defaults of the bundle stage, from ``EDGEFLEET_BUNDLE_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.protocol import MAX_MANIFEST_BYTES

__all__ = ["BundleConfig", "settings"]

_GIB = 1 << 30


class BundleConfig(BaseSettings):
    """Limits for reading untrusted archives and patches, and defaults for building them.

    Every limit is checked *before* the bytes it guards are read or written, so a hostile archive
    cannot exhaust memory or disk.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_BUNDLE_", extra="ignore")

    max_manifest_bytes: int = Field(MAX_MANIFEST_BYTES, description="largest manifest.json accepted")
    max_entries: int = Field(256, description="most entries an archive may hold")
    max_entry_bytes: int = Field(4 * _GIB, description="largest single file in an archive")
    max_total_bytes: int = Field(8 * _GIB, description="largest sum of file sizes in an archive")
    max_patch_target_bytes: int = Field(8 * _GIB, description="largest archive a delta may produce")
    max_golden_bytes: int = Field(256 << 20, description="largest golden.npz loaded into memory")
    max_reference_bytes: int = Field(64 << 20, description="largest reference.json loaded")
    delta_method: Literal["zstd", "bsdiff"] = Field(
        "zstd", description="method used by make_delta(method='auto'); see docs/benchmarks/bundle.md"
    )
    zstd_level: int = Field(
        6, ge=1, le=22, description="zstd level for patch-from deltas (size barely depends on it; time does)"
    )
    reference_sample_size: int = Field(500, description="values kept per feature in reference.json")
    reference_bins: int = Field(10, ge=2, le=20, description="histogram bins per feature")


def settings() -> BundleConfig:
    """Fresh settings (re-read from the environment on each call, so tests can override them)."""
    return BundleConfig()
