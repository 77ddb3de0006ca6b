"""A real fleet for fleet-observability tests: digits bundles in a TUF repository, devices on a server,
telemetry windows made by the telemetry library's Aggregator around a real ONNX Runtime session.

Used by tests/server/test_fleetview*.py and tests/dashboard/ (which puts this folder on sys.path).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from servertools import GOOD, Harness, active_of

SCALE = [{"op": "scale", "factor": 1 / 16}]
WINDOW_S = 600.0
WINDOWS = 5  # per device, ending at the server's "now"
REQUESTS = 8  # per window
ROWS = 5  # per request
SLOW_MS = 25.0  # the slow device's extra latency per request
SHIFT = ("noise", 0.35)  # what the drifted device's inputs suffer (edgefleet.telemetry._shifts)

# (name, device class, region, role): 6 cpu devices and 5 arm devices in two regions
LAYOUT = [
    ("cpu-eu-1", "cpu", "eu", None),
    ("cpu-eu-2", "cpu", "eu", None),
    ("cpu-eu-3", "cpu", "eu", None),
    ("cpu-us-1", "cpu", "us", "drifted"),
    ("cpu-us-2", "cpu", "us", None),
    ("cpu-us-3", "cpu", "us", None),
    ("arm-eu-1", "arm", "eu", "slow"),
    ("arm-eu-2", "arm", "eu", None),
    ("arm-us-1", "arm", "us", None),
    ("arm-us-2", "arm", "us", None),
    ("arm-us-3", "arm", "us", None),
]


class LiveClient(httpx.Client):
    """An HTTP client of a running server that also exposes its app (what the test harness expects)."""

    def __init__(self, url: str, app: Any) -> None:
        super().__init__(base_url=url, timeout=60)
        self.app = app


def build_repo(base: Path, digits_mlp: Path, digits_mlp_v2: Path, digits_split) -> Path:
    """A TUF repository with digits 1.0.0 (cpu, arm) and 1.1.0 (cpu), references on the training split."""
    from edgefleet.bundle import create_bundle
    from edgefleet.registry import Repository, init_keys

    keys = init_keys(base / "keys", root_keys=1, root_threshold=1)
    repo = Repository.init(base / "repo", keys)
    out = base / "bundles"
    out.mkdir()
    for model, version, variant in (
        (digits_mlp, "1.0.0", "cpu"),
        (digits_mlp, "1.0.0", "arm"),
        (digits_mlp_v2, "1.1.0", "cpu"),
    ):
        path = create_bundle(
            model,
            out / f"{version}-{variant}.tar",
            name="digits",
            version=version,
            variant=variant,
            inputs_raw=digits_split.x_test[:8],
            reference_raw=digits_split.x_train,
            preprocess=SCALE,
            created=datetime(2025, 1, 2, tzinfo=UTC),
        )
        repo.publish(path, delta=False)
    return base / "repo"


class OrtPredictor:
    """A real onnxruntime session on the digits MLP, optionally slowed down.

    ``delay_s`` is a named stand-in for slow device hardware (this machine has only one kind of CPU).
    """

    def __init__(self, path: Path, delay_s: float = 0.0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.delay_s = delay_s
        self.metadata = None

    def predict(self, batch: dict[str, np.ndarray], **_: Any) -> dict[str, np.ndarray]:
        if self.delay_s:
            time.sleep(self.delay_s)
        label, probs = self.session.run(None, {"input": np.asarray(batch["input"], dtype=np.float32)})
        return {"label": label, "probabilities": probs}

    def close(self) -> None:
        pass


class _Clock:
    def __init__(self, t0: float) -> None:
        self.t0, self.t = t0, 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t0 + self.t


def reference_of(repo_dir: Path, version: str = "1.0.0", variant: str = "cpu") -> dict[str, Any]:
    """``reference.json`` as a device reads it: from the published (TUF target) bundle archive."""
    from edgefleet.bundle import Bundle
    from edgefleet.registry import Repository

    repo = Repository(repo_dir)
    with Bundle.open(repo.target_file(f"digits/{version}/{variant}.tar")) as b:
        return b.reference


def make_windows(
    model: Path,
    reference: dict[str, Any],
    x: np.ndarray,
    *,
    t_end: float,
    windows: int = WINDOWS,
    window_s: float = WINDOW_S,
    requests: int = REQUESTS,
    rows: int = ROWS,
    delay_s: float = 0.0,
    shift: tuple[str, float] | None = None,
    seed: int = 0,
    version: str = "1.0.0",
) -> list:
    """Windows an on-device Aggregator produced over ``windows`` x ``window_s`` seconds ending at ``t_end``.

    Inputs are raw digits rows (0..16) drawn from ``x``, scaled by the bundle's contract (x/16), optionally
    shifted first (a real input shift, as a dirty camera or a new site would cause).
    """
    from edgefleet.telemetry import Aggregator, AggregatorConfig
    from edgefleet.telemetry._shifts import inject_shift

    rng = np.random.default_rng(seed)
    clk = _Clock(t_end - windows * window_s)
    out: list = []
    agg = Aggregator(
        OrtPredictor(model, delay_s),
        reference=reference,
        config=AggregatorConfig(
            window_s=window_s, feature_window_s=window_s, resources=False, drift_on_close=False
        ),
        tags={"model": "digits", "version": version},
        sink=out.append,
        monotonic=clk.mono,
        wall=clk.wall,
    )
    for k in range(windows):
        for i in range(requests):
            raw = x[rng.integers(0, len(x), rows)] / 16.0
            if shift is not None:
                raw = inject_shift(raw, shift[0], shift[1], rng=rng)
            agg.predict({"input": raw.astype(np.float32)})
            clk.t = k * window_s + (i + 1) * window_s / (requests + 1)
        clk.t = (k + 1) * window_s - 1e-3
        agg.flush_window()
    return out


def upload(h: Harness, dev: dict[str, Any], windows: list, *, expect: int = 200) -> dict[str, Any]:
    body = {
        "batch_id": uuid.uuid4().hex,
        "device_id": dev["device_id"],
        "windows": [w.to_dict() for w in windows],
    }
    r = h.c.post(f"/v1/devices/{dev['device_id']}/telemetry", json=body, headers=dev["headers"])
    assert r.status_code == expect, r.text
    return r.json()


@dataclass
class Fleet:
    """The fleet a test works with: its harness, devices by name and what each device uploaded."""

    h: Harness
    repo_dir: Path
    devices: dict[str, dict[str, Any]]
    windows: dict[str, list] = field(default_factory=dict)
    rollout_v1: str | None = None
    rollout_v11: str | None = None

    def id(self, name: str) -> str:
        return self.devices[name]["device_id"]

    def name_of(self, device_id: str) -> str:
        return next(n for n, d in self.devices.items() if d["device_id"] == device_id)

    def token(self, role: str) -> dict[str, str]:
        return self.h.token(role)


def build_fleet(
    h: Harness,
    repo_dir: Path,
    digits_mlp: Path,
    digits_split,
    *,
    layout: list[tuple[str, str, str, str | None]] = LAYOUT,
    second_rollout: bool = True,
) -> Fleet:
    """Enroll the layout, roll digits 1.0.0 out to everyone, upload each device's telemetry windows.

    With ``second_rollout``, digits 1.1.0 then rolls out to the cpu class in two waves; the first wave
    passes on healthy reports, the second is under way.
    """
    devices = {}
    for name, cls, region, _ in layout:
        d = h.enroll(cls, tags={"region": region})
        h.c.patch(f"/v1/devices/{d['device_id']}", json={"name": name}, headers=h.admin)
        devices[name] = d
    fleet = Fleet(h, repo_dir, devices)
    h.register("1.0.0")
    r = h.rollout("1.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    fleet.rollout_v1 = r["id"]
    for d in devices.values():
        a = h.beat(d)["assignment"]
        assert a is not None, f"no assignment for {d['device_id']}"
        d["v1"] = active_of(a)
        h.beat(d, active=d["v1"], health=GOOD)
    h.tick(1)
    assert h.show(r["id"])["state"] == "completed"

    reference = reference_of(repo_dir)
    now = h.clock()
    # traffic from the population the reference describes: only the drifted device's inputs differ
    x = digits_split.x_train
    for i, (name, _cls, _region, role) in enumerate(layout):
        ws = make_windows(
            digits_mlp,
            reference,
            x,
            t_end=now - 1,
            seed=i,
            delay_s=SLOW_MS / 1000 if role == "slow" else 0.0,
            shift=SHIFT if role == "drifted" else None,
        )
        upload(h, devices[name], ws)
        fleet.windows[name] = ws

    if second_rollout:
        h.register("1.1.0")
        r2 = h.rollout(
            "1.1.0",
            selector="class=cpu",
            waves=[50, 100],
            soak_s=[0, 3600],
            gates={"min_devices": 1, "min_requests": 50, "min_control_requests": 50},
        )
        fleet.rollout_v11 = r2["id"]
        for d in devices.values():
            a = h.beat(d, active=d["v1"], health=GOOD)["assignment"]
            if a and a["version"] == "1.1.0":
                d["active"] = active_of(a)
                h.beat(d, active=d["active"], health=GOOD)
        h.tick(1)
        # the second wave opens and soaks: its devices are assigned 1.1.0 but have not installed it yet
        for d in devices.values():
            h.beat(d, active=d.get("active", d["v1"]), health=GOOD)
        h.tick(1)
    return fleet


def viewer_headers(h: Harness) -> dict[str, str]:
    return h.token("viewer")


def random_name() -> str:
    return "t" + secrets.token_hex(3)


_REPOS: dict[str, Path] = {}


def shared_repo(tmp_path_factory, digits_mlp: Path, digits_mlp_v2: Path, digits_split) -> Path:
    """One published repository per test session (treat it as read-only)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _REPOS:
        _REPOS[key] = build_repo(
            tmp_path_factory.mktemp("fleet-published"), digits_mlp, digits_mlp_v2, digits_split
        )
    return _REPOS[key]
