"""Registry settings: metadata lifetimes, delta policy and safety limits."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RegistryConfig"]


class RegistryConfig(BaseSettings):
    """How the image repository signs and what it accepts (env prefix ``EDGEFLEET_REGISTRY_``).

    The lifetimes decide how quickly a device notices a frozen or stale server: the timestamp is
    re-signed by the server's online key (``refresh_timestamp``) and expires first; snapshot and
    targets live longer; root lives longest and is signed offline.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_REGISTRY_", extra="ignore")

    timestamp_expiry: timedelta = Field(
        timedelta(days=1), description="lifetime of timestamp.json; the server must refresh it sooner"
    )
    snapshot_expiry: timedelta = Field(timedelta(days=7), description="lifetime of snapshot metadata")
    targets_expiry: timedelta = Field(
        timedelta(days=90), description="lifetime of targets metadata (re-signed at every publish)"
    )
    root_expiry: timedelta = Field(timedelta(days=365), description="lifetime of root metadata")
    expiry_warning: timedelta = Field(
        timedelta(days=14), description="log a warning when targets or root expire sooner than this"
    )
    delta: bool = Field(True, description="publish a delta from earlier versions of the same name+variant")
    delta_bases: int = Field(
        1, ge=0, le=10, description="how many earlier versions get a delta to the new one"
    )
    delta_method: str = Field("auto", description="passed to edgefleet.bundle.make_delta")
    delta_max_ratio: float = Field(
        0.9, gt=0, le=1, description="skip a delta whose size is above this fraction of the full bundle"
    )
    verify_on_publish: Literal["hashes", "golden", "none"] = Field(
        "hashes",
        description="check before signing: every file hash (hashes), also rerun the golden set (golden), or "
        "read the manifest only (none)",
    )
    max_bundle_bytes: int = Field(4 << 30, gt=0, description="largest bundle archive publish accepts")
    lock_timeout: float = Field(60.0, gt=0, description="seconds to wait for another writer's lock")
