"""Energy per inference reaches the control plane in a heartbeat's resources and the dashboard's device
table; a negative figure is refused and changes nothing."""

from __future__ import annotations


def _beat(h, dev, resources, expect=200):
    body = {
        "device_id": dev["device_id"],
        "state": "idle",
        "health": {},
        "events": [],
        "resources": resources,
    }
    r = h.c.post(f"/v1/devices/{dev['device_id']}/heartbeat", json=body, headers=dev["headers"])
    assert r.status_code == expect, r.text


def _power(h, dev):
    rows = h.c.get("/v1/fleet/devices", headers=h.admin).json()
    return next(r["power"] for r in rows if r["id"] == dev["device_id"])


def test_heartbeat_energy_shows_in_the_device_table(harness):
    h = harness
    dev = h.enroll()
    _beat(h, dev, {"cpu_ms_per_inference": 0.0843, "energy_mj": 0.4213, "energy_method": "estimate"})
    assert _power(h, dev) == "0.421 mJ/inference (est.)"
    rec = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()
    assert rec["resources"]["energy_method"] == "estimate" and rec["resources"]["energy_mj"] == 0.4213
    _beat(h, dev, {"energy_mj": -1.0, "energy_method": "estimate"}, expect=422)
    _beat(h, dev, {"energy_mj": 1.0, "energy_method": "x" * 40}, expect=422)
    assert _power(h, dev) == "0.421 mJ/inference (est.)"  # the refused beats changed nothing
    _beat(h, dev, {"power_rules": ["hot"], "power_switches": 1, "energy_mj": 30.0, "energy_method": "rapl"})
    assert _power(h, dev) == "hot (1 switches); 30 mJ/inference (RAPL)"
