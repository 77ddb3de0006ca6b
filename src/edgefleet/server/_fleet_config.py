"""Fleet observability settings (``EDGEFLEET_FLEET_*``): queries, alerts, retraining, retention, background loop."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["FleetConfig"]


class FleetConfig(BaseSettings):
    """Fleet observability settings (``EDGEFLEET_FLEET_*``); every limit has a documented default."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_FLEET_", extra="ignore")

    raw_retention_s: float = Field(2 * 86400.0, gt=0, description="raw windows are kept this long (2 days)")
    rollup_s: int = Field(3600, ge=60, le=86400, description="bucket of downsampled windows (1 hour)")
    rollup_retention_s: float = Field(30 * 86400.0, gt=0, description="downsampled windows kept (30 days)")
    maintain_batch: int = Field(5000, ge=1, description="raw windows rolled up per transaction")
    background: bool = Field(True, description="evaluate alerts and maintain storage in a server thread")
    alert_interval_s: float = Field(60.0, gt=0, description="seconds between alert evaluations")
    maintain_interval_s: float = Field(600.0, gt=0, description="seconds between retention passes")
    lookback_s: float = Field(3600.0, gt=0, description="default time range of queries and alert evaluation")
    max_range_s: float = Field(31 * 86400.0, gt=0, description="longest time range a query may cover")
    max_query_windows: int = Field(200_000, ge=1, description="stored windows one query may read")
    window_cache: int = Field(10_000, ge=0, description="parsed windows kept in memory between queries")
    silent_after_polls: float = Field(
        5.0, gt=0, description="a device is silent after this many poll intervals"
    )
    outlier_floor_latency_ms: float = Field(
        1.0, ge=0, description="latency spread below which no device is an outlier (scheduler jitter)"
    )
    outlier_floor_confidence: float = Field(0.01, ge=0, description="same for mean confidence")
    outlier_floor_error_rate: float = Field(0.005, ge=0, description="same for error rate")
    reference_cache: int = Field(16, ge=1, description="bundle references kept in memory")
    max_reference_archive_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="largest bundle archive opened to read its reference.json"
    )
    retrain_webhook_url: str | None = Field(None, description="POST retraining requests here (JSON)")
    retrain_command: str | None = Field(None, description="or run this command (request JSON on stdin)")
    retrain_require_approval: bool = Field(True, description="an admin approves before the hook runs")
    retrain_min_consecutive: int = Field(3, ge=1, description="drift evaluations in a row before a request")
    retrain_cooldown_s: float = Field(
        86400.0, ge=0, description="no new request for the same alert within this"
    )
    retrain_timeout_s: float = Field(10.0, gt=0, description="webhook/command timeout")

    @field_validator("retrain_webhook_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and v and not v.startswith(("http://", "https://")):
            raise ValueError("retrain_webhook_url must be an http:// or https:// URL")
        return v or None
