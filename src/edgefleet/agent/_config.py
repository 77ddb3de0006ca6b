"""Agent configuration: every limit in one object, each with a documented default."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AgentConfig"]


class AgentConfig(BaseSettings):
    """Settings of the device agent (environment prefix ``EDGEFLEET_AGENT_``).

    Example: ``EDGEFLEET_AGENT_STATE_DIR=/var/lib/edgefleet edgefleet agent run``.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_AGENT_", extra="forbid")

    state_dir: Path = Field(Path("/var/lib/edgefleet"), description="all agent state lives here")
    server_url: str | None = Field(
        None, description="control plane base URL; taken from credentials if unset"
    )

    # Control loop.
    poll_interval_s: float = Field(60.0, gt=0, description="used until the server sends its own interval")
    min_poll_interval_s: float = Field(0.05, gt=0, description="floor on a server-sent interval")
    jitter: float = Field(0.1, ge=0, le=1, description="poll interval is multiplied by 1 +/- jitter")
    backoff_initial_s: float = Field(1.0, gt=0, description="first wait after the server was unreachable")
    backoff_max_s: float = Field(300.0, gt=0, description="longest wait while the server is unreachable")
    request_timeout_s: float = Field(10.0, gt=0, description="timeout of one control-plane request")
    mqtt_url: str | None = Field(None, description="mqtt://host:port; a nudge on it makes the agent poll now")

    # Download.
    max_rate_bytes_per_s: float | None = Field(
        None, gt=0, description="byte-rate cap for downloads (None: off)"
    )
    download_retries: int = Field(10, ge=0, description="resumed attempts per download (Mender uses 10)")
    retry_backoff_s: float = Field(0.5, gt=0, description="first wait between download retries (doubles)")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="longest wait between download retries")
    chunk_bytes: int = Field(64 * 1024, ge=1024, description="read size of a streamed download")
    max_target_bytes: int = Field(2 << 30, gt=0, description="refuse targets larger than this")
    max_metadata_bytes: int = Field(8 << 20, gt=0, description="refuse TUF metadata larger than this")
    use_delta: bool = Field(True, description="try a signed delta from the active version first")
    disk_reserve_mb: float = Field(50.0, ge=0, description="free space to leave after download and unpack")
    unpack_factor: float = Field(1.5, ge=1, description="unpacked size estimate as a multiple of the archive")

    # Health gate, watch window, crash safety.
    golden_required: bool = Field(True, description="refuse a bundle without a golden set")
    latency_runs: int = Field(30, ge=1, description="timed runs on golden inputs for the latency gate")
    keep_versions: int = Field(3, ge=2, description="verified versions kept for instant rollback")
    max_step_attempts: int = Field(
        3, ge=1, description="restarts inside one stage/health/activate step allowed"
    )
    # Latency in the watch window: paired looks, new and previous model timed side by side (agent/_paired.py).
    watch_look_pairs: int = Field(
        20, ge=1, description="calls of each model per look, interleaved ABBA on the golden inputs"
    )
    watch_look_persistence: int = Field(
        3, ge=1, description="looks in a row that must all be slow before the watch window fails on latency"
    )
    watch_look_slack_ms: float = Field(
        0.5,
        ge=0,
        description="a look is slow only when the new model's median is also this many ms above the previous "
        "one's (a 10 µs model's ratio is scheduler noise); replaces watch_latency_slack_ms, which was a p95 "
        "increase against a baseline taken before the window",
    )
    watch_look_interval_s: float = Field(
        2.0, ge=0, description="least seconds between two looks (each check of the window takes at most one)"
    )
    model_key_file: Path | None = Field(
        None,
        description="encrypt installed model files at rest (AES-256-GCM) with the key in this file, created "
        "0600 with 256 random bits if absent; keep it outside the state directory's models/ (None: off)",
    )
    watch_min_requests: int = Field(20, ge=1, description="live requests needed before comparing rates early")
    max_failed_targets: int = Field(100, ge=1, description="refused targets remembered (not retried)")

    # Local inference API.
    api_host: str = Field("127.0.0.1", description="local inference API address")
    api_port: int | None = Field(None, ge=0, le=65535, description="local API port (None: no API, 0: any)")
    api_tls_cert: str | None = Field(None, description="PEM certificate: serve the local API over HTTPS")
    api_tls_key: str | None = Field(None, description="PEM private key of api_tls_cert")
    api_insecure_http: bool = Field(
        False, description="allow the local API in clear text off loopback (behind a TLS-terminating proxy)"
    )

    # Device awareness (edgefleet.power): state source and power/thermal policy.
    device_state: str = Field(
        "sysfs",
        description="where the device state is read: sysfs (this device), sysfs:ROOT, or scripted:TRACE "
        "(a YAML/CSV battery and temperature trace standing in for hardware this machine lacks)",
    )
    device_trace_speed: float = Field(1.0, gt=0, description="trace seconds per second for scripted:TRACE")
    cpu_watts: float | None = Field(
        None,
        gt=0,
        description="the device's CPU power figure in W (a profile's device.cpu_watts): heartbeats carry "
        "energy per inference as CPU time x watts, labelled an estimate; RAPL counters win where readable",
    )
    device_policy: Path | None = Field(
        None, description="power/thermal policy YAML; None: device_policy.yaml in the active bundle, if any"
    )

    # Outbox and telemetry.
    telemetry_interval_s: float = Field(
        60.0,
        gt=0,
        description="how often queued telemetry windows are uploaded; the outbox's own "
        "upload_interval_s (EDGEFLEET_OUTBOX_UPLOAD_INTERVAL_S, 900 s) applies when it is shorter",
    )
    telemetry_window_s: float | None = Field(
        None,
        gt=0,
        description="length of one telemetry window, also the period of feature histograms (so drift is "
        "tested every window); None: AggregatorConfig (EDGEFLEET_TELEMETRY_WINDOW_S, 60 s windows, "
        "features every 600 s)",
    )
    history_events: int = Field(50, ge=1, description="events kept in the journal for `agent status`")
    metered: bool = Field(
        False,
        description="the uplink is metered: samples wait for an unmetered link unless the policy allows",
    )

    # Federated learning (edgefleet.federated): jobs the control plane names in heartbeat answers.
    fl_data_dir: Path | None = Field(
        None,
        description="the device's training data for federated jobs: a folder of .npz files with x and y "
        "arrays that the application fills (None: the device never joins a job)",
    )
    fl_min_battery_percent: float = Field(
        50.0, ge=0, le=100, description="on battery, train only above this level"
    )
    fl_max_cpu_pressure: float = Field(
        20.0, ge=0, le=100, description="train only while CPU pressure (PSI some avg10, %) is below this"
    )
    fl_allow_metered: bool = Field(False, description="train on a metered link too")
