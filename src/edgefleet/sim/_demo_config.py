"""Settings and fixed facts of ``edgefleet demo``: its three releases, device classes, regions and devices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BAD", "CLASSES", "GOOD", "MARKER", "NEW", "REGIONS", "SCALE", "DemoConfig", "DemoDevice"]


MARKER = ".edgefleet-demo"
GOOD, NEW, BAD = "1.0.0", "1.1.0", "1.2.0"
CLASSES = ("gateway", "sensor")
REGIONS = ("eu", "us")
SCALE = [{"op": "scale", "factor": 1 / 16}]


class DemoConfig(BaseSettings):
    """Settings of ``edgefleet demo`` (environment prefix ``EDGEFLEET_DEMO_``).

    Times are scaled down from production (60 s polls, 10 min soaks) so the story fits in minutes.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_DEMO_", extra="ignore")

    dir: Path = Field(Path("edgefleet-demo"), description="state directory, left behind to explore")
    devices: int = Field(8, ge=2, le=32, description="agent processes to run (two classes, two regions)")
    seed: int = Field(0, description="seed of training, traffic and the bad release's label shuffle")
    keep_running: bool = Field(False, description="keep server, agents and traffic up until Ctrl-C")
    name: str = Field("digits", description="model name of the releases")
    story: Literal["rollout", "loop", "federated", "power"] = Field(
        "rollout",
        description="rollout: three releases through gated waves, the bad one halted; loop: one region's "
        "inputs shift, samples come back, get labelled and retrain the next release; federated: the devices "
        "train the model on their own data (Flower) and the federated release goes out through gated waves; "
        "power: a scripted battery-and-heat trace drives each device's power policy (smaller model, lower "
        "rate, deferred download)",
    )
    fl_rounds: int = Field(5, ge=1, le=100, description="federated story: rounds of the job")
    loop_min_labels: int = Field(
        90, ge=10, description="loop story: labelled samples from the shifted region before retraining"
    )

    poll_interval_s: float = Field(1.0, gt=0, description="device heartbeat interval the server advises")
    engine_tick_s: float = Field(0.5, gt=0, description="seconds between rollout engine passes")
    request_rate: float = Field(8.0, gt=0, le=200, description="requests/s sent to each agent's local API")
    waves: list[float] = Field(default_factory=lambda: [25.0, 50.0, 100.0], description="wave percentages")
    soak_s: float = Field(4.0, ge=0, description="soak time per wave")
    min_devices: int = Field(2, ge=1, description="devices reporting before a wave is judged")
    min_requests: int = Field(60, ge=0, description="requests a wave (and the control group) must serve")
    max_latency_p95_ratio: float = Field(
        3.0, gt=0, description="server latency gate; generous because a shared 2-core machine is noisy"
    )
    latency_look_s: float = Field(
        3.0,
        gt=0,
        description="seconds between the latency gate's looks (a few polls: the default 60 s would hold waves)",
    )
    tls: bool = Field(
        True,
        description="HTTPS control plane with a private CA made in DIR/tls; agents get device certificates "
        "at enrollment and authenticate by mutual TLS only (false: clear text on loopback, device tokens)",
    )
    watch_window_s: float = Field(4.0, gt=0, description="device-side watch window before commit")
    device_latency_ratio: float = Field(5.0, gt=0, description="device-side watch latency limit (noise)")

    optimize_runs: int = Field(20, ge=3, description="timed runs per variant in the optimizer")
    start_timeout_s: float = Field(90.0, gt=0, description="longest wait for the server or an agent to start")
    phase_timeout_s: float = Field(150.0, gt=0, description="longest wait for one rollout to finish")
    stop_timeout_s: float = Field(10.0, gt=0, description="wait after SIGTERM before SIGKILL")


@dataclass
class DemoDevice:
    """One agent process of the demo: its name, class, region, state directory and local API port."""

    name: str
    device_class: str
    region: str
    state_dir: Path
    port: int
    device_id: str = ""
