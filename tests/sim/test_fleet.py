"""Simulated fleets against a real server: a bad release is contained, a good one reaches everyone."""

from __future__ import annotations

import asyncio

import pytest

from edgefleet.client import Client
from edgefleet.sim import Fleet, ReleaseBehavior, Scenario

POLL = 0.5


def _api(srv) -> Client:
    return Client(srv.url, token=srv.admin_token, timeout=10)


def _on(api: Client, version: str) -> dict:
    """The ActiveModel of a registered release (what a device running it reports)."""
    v = api.register_release("digits", version)["variants"][0]
    return {"name": "digits", "version": version, **{k: v[k] for k in ("variant", "target_path", "sha256")}}


def _every_device_reported(fleet: Fleet, beats: int = 3) -> bool:
    """Run the fleet until every device has reported ``beats`` times (its running version with it), with a
    deadline generous for a busy machine; not a fixed run time, which a loaded machine can cut short."""
    return asyncio.run(fleet.run(until=lambda f: all(d.beats >= beats for d in f.devices), timeout=120))


def test_bad_release_is_contained_and_rolled_back(sim_server):
    api = _api(sim_server)
    scenario = Scenario(
        poll_interval_s=POLL,
        install_delay_s=0.1,
        behaviors={"2.0.0": ReleaseBehavior(error_rate=0.25, mean_confidence=0.5)},
    )
    fleet = Fleet(sim_server.url, scenario, size=60, admin_token=sim_server.admin_token, seed=1)
    asyncio.run(fleet.enroll())
    fleet.preinstall(_on(api, "1.0.0"))
    _on(api, "2.0.0")
    assert _every_device_reported(fleet)  # the control group reports on 1.0.0
    r = api.create_rollout("digits", "2.0.0", soak_s=30, gates={"min_devices": 3, "min_requests": 100})
    rid, first_wave = r["id"], r["members"]["admitted"]

    def contained(f: Fleet) -> bool:
        return api.rollout(rid)["state"] == "rolled_back" and f.count_on("1.0.0") == 60

    assert asyncio.run(fleet.run(until=contained, timeout=60, check_every=0.2))
    shown = api.rollout(rid)
    assert {"error_rate", "confidence_ratio"} <= set(shown["evaluation"]["failed_gates"])
    assert len(fleet.ran("2.0.0")) <= first_wave + 3  # never beyond the first wave (plus the gate minimum)
    assert fleet.status_counts.get("500", 0) == 0


def test_good_release_reaches_every_device_through_the_default_waves(sim_server):
    api = _api(sim_server)
    fleet = Fleet(
        sim_server.url,
        Scenario(poll_interval_s=POLL, install_delay_s=0.1),
        size=30,
        admin_token=sim_server.admin_token,
        seed=2,
    )
    asyncio.run(fleet.enroll())
    fleet.preinstall(_on(api, "1.0.0"))
    _on(api, "1.1.0")
    assert _every_device_reported(fleet)
    rid = api.create_rollout("digits", "1.1.0", soak_s=1.0, gates={"min_devices": 3, "min_requests": 100})[
        "id"
    ]
    done = asyncio.run(
        fleet.run(
            until=lambda f: api.rollout(rid)["state"] == "completed",
            timeout=90,
            check_every=0.3,
        )
    )
    ev = api.rollout(rid)["evaluation"]
    assert done, (ev["failed_gates"], ev["waiting_for"], ev["gates"])
    # returns as soon as it holds; the deadline is generous for a busy machine
    asyncio.run(fleet.run(until=lambda f: f.count_on("1.1.0") == 30, timeout=60))
    assert fleet.count_on("1.1.0") == 30
    waves = [a["details"] for a in api.rollout_audit(rid) if a["action"] == "rollout.wave_opened"]
    assert [w["percent"] for w in waves] == [1, 5, 25, 100]
    assert [w["wave_size"] for w in waves] == [3, 3, 8, 30]


@pytest.mark.parametrize("size", [0])
def test_empty_fleet_runs_and_stops(sim_server, size):
    fleet = Fleet(
        sim_server.url, Scenario(poll_interval_s=POLL), size=size, admin_token=sim_server.admin_token
    )
    asyncio.run(fleet.enroll())
    assert asyncio.run(fleet.run(timeout=0.3)) is True and fleet.heartbeats == 0
