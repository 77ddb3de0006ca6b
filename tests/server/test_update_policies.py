"""Update policies per device group (issue 15 item 7): maintenance windows, metered/charging, pin, deferral,
the forced-update override, and what rollouts report about devices that wait. A real app on SQLite with the
server's injectable clock (no sleeping until 02:00)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from servertools import GOOD, Harness, active_of, fleet_on_v1, make_harness

from edgefleet.server._update_policies import UpdatePolicy, parse_window

BERLIN = ZoneInfo("Europe/Berlin")


def at(h: Harness, hour: int, minute: int = 0) -> None:
    """Set the server clock to HH:MM Berlin time on 2026-12-07 (a Monday; no DST change near it)."""
    h.clock.t = datetime(2026, 12, 7, hour, minute, tzinfo=BERLIN).timestamp()


def beat(h: Harness, d: dict, **resources) -> dict:
    body = {
        "device_id": d["device_id"],
        "state": "idle",
        "health": GOOD,
        "active": d.get("active", d["v1"]),
        "resources": resources,
    }
    r = h.c.post(f"/v1/devices/{d['device_id']}/heartbeat", json=body, headers=d["headers"])
    assert r.status_code == 200, r.text
    return r.json()


def put(h: Harness, name: str, policy: dict, selector: str = "site=berlin", headers=None, expect=200):
    r = h.c.put(
        f"/v1/update-policies/{name}",
        json={"selector": selector, "policy": policy},
        headers=headers or h.admin,
    )
    assert r.status_code == expect, r.text
    return r.json()


def group(h: Harness, n: int = 3) -> list[dict]:
    at(h, 1, 0)
    devs = fleet_on_v1(h, n, tags={"site": "berlin"})
    h.register("2.0.0")
    return devs


def test_a_closed_window_holds_the_update_and_says_so_until_it_opens(harness):
    _window_holds_until_it_opens(harness)


def test_a_closed_window_holds_the_update_on_postgres(tmp_path, published, pg_url):
    """The same on PostgreSQL, where heartbeats go through the coalescing writer (``aheartbeat``)."""
    client, clock = make_harness(tmp_path, db_url=pg_url, repo_dir=published / "repo")
    with client:
        _window_holds_until_it_opens(Harness(client, clock))


def _window_holds_until_it_opens(h: Harness) -> None:
    devs = group(h)
    put(h, "night", {"windows": ["02:00-05:00"], "timezone": "Europe/Berlin"})
    r = h.rollout("2.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    for d in devs:
        out = beat(h, d)
        assert out["assignment"] is None
        assert "outside the maintenance window (02:00-05:00 Europe/Berlin)" in out["wait_reason"]
        assert "next opens 2026-12-07T02:00+01:00" in out["wait_reason"]
    h.tick(1)
    shown = h.show(r["id"])
    assert shown["state"] == "running", "devices that wait are not failures"
    ev = shown["evaluation"]
    assert ev["held"] == {"window": 3} and ev["counts"]["held"] == 3 and ev["counts"]["failed"] == 0
    at(h, 2, 30)  # the window opens
    for d in devs:
        out = beat(h, d)
        assert out["assignment"]["version"] == "2.0.0" and "wait_reason" not in out
        d["active"] = active_of(out["assignment"])
        assert "wait_reason" not in beat(h, d)
    h.tick(1)
    shown = h.show(r["id"])
    assert shown["state"] == "completed" and shown["evaluation"]["counts"]["held"] == 0


def test_devices_outside_the_group_are_not_held(harness):
    h = harness
    devs = group(h, 2)
    put(h, "night", {"windows": ["02:00-05:00"], "timezone": "Europe/Berlin"}, selector="site=paris")
    h.rollout("2.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    assert all(beat(h, d)["assignment"]["version"] == "2.0.0" for d in devs)


def test_a_device_moved_out_of_the_group_or_a_changed_policy_takes_effect_at_the_next_beat(harness):
    h = harness
    devs = group(h, 2)
    put(h, "night", {"windows": ["02:00-05:00"], "timezone": "Europe/Berlin"})
    h.rollout("2.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    assert all(beat(h, d)["assignment"] is None for d in devs)  # both held (and their group remembered)
    r = h.c.patch(f"/v1/devices/{devs[0]['device_id']}", json={"tags": {"site": "paris"}}, headers=h.admin)
    assert r.status_code == 200, r.text
    assert beat(h, devs[0])["assignment"]["version"] == "2.0.0"  # re-tagged: no longer in the group
    put(h, "night", {"windows": ["00:00-02:00"], "timezone": "Europe/Berlin"})  # now open at 01:00
    assert beat(h, devs[1])["assignment"]["version"] == "2.0.0"


def test_a_pinned_group_sits_rollouts_out_and_joins_when_unpinned(harness):
    _pinned_sits_out(harness)


def test_a_pinned_group_sits_rollouts_out_on_postgres(tmp_path, published, pg_url):
    client, clock = make_harness(tmp_path, db_url=pg_url, repo_dir=published / "repo")
    with client:
        _pinned_sits_out(Harness(client, clock))


def _pinned_sits_out(h: Harness) -> None:
    at(h, 1, 0)
    pinned = fleet_on_v1(h, 2, tags={"site": "berlin"})
    h.register("2.0.0")
    others = [h.enroll(tags={"site": "paris"}) for _ in range(2)]
    put(h, "stay", {"pin": "1.0.0"})
    r = h.rollout("2.0.0", waves=[50, 100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    for d in pinned:  # never admitted: it keeps its 1.0.0 assignment, nothing to wait for
        assert beat(h, d)["assignment"]["version"] == "1.0.0"
    ev = h.show(r["id"])["evaluation"]
    assert ev["held"] == {"pinned": 2} and ev["counts"]["eligible"] == 2 and ev["counts"]["admitted"] == 1
    for _ in range(2):  # the other group's waves do not wait for the pinned one
        for d in others:
            a = h.beat(d)["assignment"]
            if a is not None:
                h.beat(d, active=active_of(a), health=GOOD)
        h.tick(1)
    shown = h.show(r["id"])
    assert shown["state"] == "completed", shown["evaluation"]
    assert all(beat(h, d)["assignment"]["version"] == "1.0.0" for d in pinned)
    assert h.show(r["id"])["members"]["parked"] == 2
    h.c.delete("/v1/update-policies/stay", headers=h.admin).raise_for_status()
    h.tick(1)  # the completed rollout admits the devices whose pin ended
    assert all(beat(h, d)["assignment"]["version"] == "2.0.0" for d in pinned)
    assert h.show(r["id"])["members"] == {"admitted": 4}


def _complete(h: Harness, r: dict, devs: list[dict], version: str) -> None:
    """Every device assigned ``version`` installs it and reports well, until the rollout completes."""
    for _ in range(len(r["waves"]) + 1):
        for d in devs:
            a = h.beat(d, active=d.get("active", d.get("v1")))["assignment"]
            if a is not None and a["version"] == version:
                d["active"] = active_of(a)
                h.beat(d, active=d["active"], health=GOOD)
        h.tick(1)
    assert h.show(r["id"])["state"] == "completed", h.show(r["id"])["evaluation"]


def test_a_group_that_sat_out_a_release_never_goes_back_to_it_after_a_later_one(harness):
    h = harness
    at(h, 1, 0)
    pinned = fleet_on_v1(h, 2, tags={"site": "berlin"})
    others = [h.enroll(tags={"site": "paris"}) for _ in range(2)]
    h.register("1.1.0")
    h.register("2.0.0")
    put(h, "stay", {"pin": "2.0.0"})
    gates = {"min_devices": 1, "min_requests": 0}
    a = h.rollout("1.1.0", waves=[100], soak_s=0, gates=gates)
    assert h.show(a["id"])["members"] == {"admitted": 2, "parked": 2}
    _complete(h, a, others, "1.1.0")
    b = h.rollout("2.0.0", waves=[100], soak_s=0, gates=gates)  # the pinned version: the group takes it
    _complete(h, b, pinned + others, "2.0.0")
    h.c.delete("/v1/update-policies/stay", headers=h.admin).raise_for_status()
    h.tick(1)  # 1.1.0's completed rollout must not pull the group back from 2.0.0
    assert all(beat(h, d)["assignment"]["version"] == "2.0.0" for d in pinned)


def test_a_pin_set_after_admission_holds_the_device_and_says_so(harness):
    h = harness
    devs = group(h, 2)
    r = h.rollout("2.0.0", waves=[100], soak_s=0, gates={"min_devices": 2, "min_requests": 0})
    put(h, "stay", {"pin": "1.0.0"})
    for d in devs:
        out = beat(h, d)
        assert out["assignment"] is None and "pins this group to 1.0.0" in out["wait_reason"]
    h.tick(3600)
    shown = h.show(r["id"])
    assert shown["state"] == "running" and shown["evaluation"]["held"] == {"pinned": 2}
    assert shown["evaluation"]["counts"]["failed"] == 0


def test_a_deferred_group_joins_when_its_deferral_ends(harness):
    h = harness
    devs = group(h, 1)
    put(h, "later", {"defer_until": "2026-12-07T07:00:00", "timezone": "Europe/Berlin"})  # 6 h from now
    assert h.c.get("/v1/update-policies/later", headers=h.admin).json()["policy"]["defer_until"] == (
        "2026-12-07T07:00:00+01:00"
    )
    r = h.rollout("2.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    assert beat(h, devs[0])["assignment"]["version"] == "1.0.0"
    shown = h.show(r["id"])
    assert shown["evaluation"]["held"] == {"deferred": 1} and shown["members"] == {"parked": 1}
    h.tick(6 * 3600)  # the deferral ends at 07:00: the running rollout admits the device
    assert h.show(r["id"])["members"] == {"admitted": 1}
    assert beat(h, devs[0])["assignment"]["version"] == "2.0.0"


def test_a_deferral_set_after_admission_says_until_when(harness):
    h = harness
    devs = group(h, 1)
    h.rollout("2.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    put(h, "later", {"defer_until": "2026-12-07T07:00:00+01:00", "timezone": "Europe/Berlin"})
    out = beat(h, devs[0])
    assert out["assignment"] is None and "defers updates until 2026-12-07T07:00+01:00" in out["wait_reason"]
    h.clock.advance(6 * 3600 + 1)
    assert beat(h, devs[0])["assignment"]["version"] == "2.0.0"


def test_metered_and_battery_devices_wait_when_the_policy_says_so(harness):
    h = harness
    devs = group(h, 3)
    put(h, "link", {"download_only_unmetered": True, "download_only_charging": True})
    r = h.rollout("2.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    metered = beat(h, devs[0], metered=True, power_source="ac")
    assert metered["assignment"] is None and "only on unmetered links" in metered["wait_reason"]
    battery = beat(h, devs[1], metered=False, power_source="battery", battery_percent=60.0)
    assert battery["assignment"] is None and "only while charging" in battery["wait_reason"]
    ok = beat(h, devs[2], metered=False, power_source="ac")
    assert ok["assignment"]["version"] == "2.0.0" and "wait_reason" not in ok
    h.tick(1)
    assert h.show(r["id"])["evaluation"]["held"] == {"metered": 1, "not_charging": 1}
    # the same devices on an unmetered link and plugged in get the release
    assert beat(h, devs[0], metered=False, power_source="ac")["assignment"]["version"] == "2.0.0"
    assert beat(h, devs[1], metered=False, power_source="usb")["assignment"]["version"] == "2.0.0"


def test_a_forced_rollout_ignores_windows_and_pins(harness):
    h = harness
    devs = group(h, 2)
    put(h, "night", {"windows": ["02:00-05:00"], "timezone": "Europe/Berlin", "pin": "1.0.0"})
    r = h.rollout("2.0.0", waves=[100], soak_s=0, force=True, gates={"min_devices": 1, "min_requests": 0})
    assert r["force"] is True
    for d in devs:
        out = beat(h, d, metered=True)
        assert out["assignment"]["version"] == "2.0.0" and "wait_reason" not in out
    h.tick(1)
    assert h.show(r["id"])["evaluation"]["held"] == {}
    created = next(a for a in h.audit(r["id"]) if a["action"] == "rollout.created")
    assert created["details"]["force"] is True


@pytest.mark.parametrize(
    "policy, needle",
    [
        ({"windows": ["25:00-03:00"]}, "24-hour clock"),
        ({"windows": ["02:00-02:00"]}, "empty"),
        ({"windows": ["2am-5am"]}, "HH:MM-HH:MM"),
        ({"timezone": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"pin": "1.0.0", "defer_until": "2027-01-01T00:00:00Z"}, "not both"),
        ({"windows": ["02:00-05:00"], "colour": "blue"}, "colour"),
        ({"defer_until": "next tuesday"}, "defer_until"),
    ],
)
def test_bad_policies_are_refused_and_nothing_is_stored(harness, policy, needle):
    h = harness
    r = h.c.put("/v1/update-policies/bad", json={"policy": policy}, headers=h.admin)
    assert r.status_code == 422 and needle in r.text, r.text
    assert h.c.get("/v1/update-policies", headers=h.admin).json() == []


def test_bad_selector_and_name_are_refused(harness):
    h = harness
    r = h.c.put("/v1/update-policies/x", json={"selector": "=oops", "policy": {}}, headers=h.admin)
    assert 400 <= r.status_code < 500, r.text
    r = h.c.put("/v1/update-policies/Bad Name", json={"policy": {}}, headers=h.admin)
    assert r.status_code == 422
    assert h.c.get("/v1/update-policies", headers=h.admin).json() == []
    assert h.c.delete("/v1/update-policies/nope", headers=h.admin).status_code == 404


def test_writes_are_audited_and_roles_hold(harness):
    h = harness
    viewer, deployer = h.token("viewer"), h.token("deployer")
    put(h, "night", {"windows": ["22:00-01:00"]}, headers=viewer, expect=403)
    got = put(h, "night", {"windows": ["22:00-01:00"], "timezone": "Asia/Tokyo"}, headers=deployer)
    assert got["policy"]["windows"] == ["22:00-01:00"] and got["updated_by"].startswith("operator:deployer")
    assert h.c.get("/v1/update-policies/night", headers=viewer).json()["policy"]["timezone"] == "Asia/Tokyo"
    assert h.c.delete("/v1/update-policies/night", headers=viewer).status_code == 403
    h.c.delete("/v1/update-policies/night", headers=deployer).raise_for_status()
    log = h.c.get("/v1/audit", headers=h.admin).json()
    actions = [e["action"] for e in log if e["action"].startswith("update_policy.")]
    assert actions == ["update_policy.set", "update_policy.delete"]


def test_windows_crossing_midnight_and_several_windows():
    from edgefleet.server._selector import Selector
    from edgefleet.server._update_policies import _Compiled

    assert parse_window("22:30-01:00") == (22 * 60 + 30, 60)
    assert parse_window("00:00-24:00") == (0, 24 * 60)
    p = UpdatePolicy(windows=["22:30-01:00", "12:00-12:30"], timezone="Europe/Berlin")
    c = _Compiled(
        name="n",
        selector=Selector.parse("*"),
        windows=tuple(parse_window(w) for w in p.windows),
        window_text=", ".join(p.windows),
        tz=BERLIN,
        unmetered=False,
        charging=False,
        pin=None,
        defer_until=None,
    )

    def t(hh: int, mm: int) -> float:
        return datetime(2026, 12, 7, hh, mm, tzinfo=BERLIN).timestamp()

    for hh, mm, open_ in [(23, 0, True), (0, 59, True), (1, 0, False), (12, 15, True), (22, 29, False)]:
        held = c.hold(now=t(hh, mm), version="2", resources={})
        assert (held is None) == open_, (hh, mm, held)
    held = c.hold(now=t(13, 0), version="2", resources={})
    assert held is not None and "next opens 2026-12-07T22:30+01:00" in held.message
    held = c.hold(now=t(1, 30), version="2", resources={})
    assert "next opens 2026-12-07T12:00+01:00" in held.message


def test_a_stored_policy_that_no_longer_validates_is_skipped_not_an_error(caplog):
    from edgefleet.server._update_policies import UpdatePolicyRow, _compile_all

    rows = [
        UpdatePolicyRow(name="gone", selector="*", priority=1, policy={"timezone": "Atlantis/Capital"}),
        UpdatePolicyRow(name="ok", selector="*", priority=0, policy={"windows": ["01:00-02:00"]}),
    ]
    assert [c.name for c in _compile_all(rows)] == ["ok"]
    assert "update policy gone is not valid any more" in caplog.text
