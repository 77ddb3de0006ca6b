"""The latency gate against a busy machine: the wave and its control group compared over the same minutes,
a verdict over consecutive looks, and an absolute floor (issue 11, item 5), with the real engine."""

from __future__ import annotations

import pytest
from servertools import FAST, GOOD, fleet_on_v1, install

from edgefleet.server._gates import GateResult, health_gates, persist
from edgefleet.server._schemas import RolloutGates

LOOK = RolloutGates().latency_look_s
SLOW = {**GOOD, "latency_p95_ms": 15.0}  # 3x GOOD's 5 ms


def beat_all(h, devs, wave_health, others=GOOD):
    """Every device reports one more heartbeat window: ``wave_health`` on 2.0.0, ``others`` on 1.0.0."""
    for d in devs:
        on_new = "active" in d
        h.beat(d, active=d["active"] if on_new else d["v1"], health=wave_health if on_new else others)


def latency(shown):
    return {g["name"]: g for g in shown["evaluation"]["gates"]}["latency_p95_ratio"]


@pytest.fixture
def fleet(harness):
    """20 devices on 1.0.0 with a long quiet history (600 requests at 5 ms), 2.0.0 registered."""
    devs = fleet_on_v1(harness, 20)
    for _ in range(5):
        beat_all(harness, devs, GOOD)
    harness.register("2.0.0")
    return harness, devs


def test_a_fleet_three_times_slower_at_once_does_not_fail_the_wave(fleet):
    """A busy machine slows the wave and the control group alike: compared over the same minutes the
    ratio is 1, although the wave's p95 is 2.3x the control group's cumulative p95."""
    h, devs = fleet
    r = h.rollout("2.0.0", waves=[10, 100], soak_s=0, gates=FAST)
    wave = install(h, devs, SLOW, others=SLOW)
    assert len(wave) == 2
    h.tick(1)
    passed = [a for a in h.audit(r["id"]) if a["action"] == "rollout.wave_passed"]
    assert h.show(r["id"])["wave"] == 2 and len(passed) == 1
    ev = passed[0]["details"]["evaluation"]
    gate = {g["name"]: g for g in ev["gates"]}["latency_p95_ratio"]
    assert gate["status"] == "pass" and gate["value"] == pytest.approx(1.0)
    assert gate["reference"] == pytest.approx(15.0)
    # The cumulative figures (the old comparison) would have failed the wave at once: 15 / 6.43 = 2.33.
    cumulative = ev["wave_health"]["latency_p95_ms"] / ev["reference"]["latency_p95_ms"]
    assert cumulative == pytest.approx(15 / ((5 * 600 + 15 * 100) / 700))
    assert cumulative > RolloutGates().max_latency_p95_ratio
    assert ev["same_minutes"]["control"]["devices"] == 18


def test_a_wave_three_times_slower_than_its_control_fails_after_k_looks_not_before(fleet):
    h, devs = fleet
    r = h.rollout("2.0.0", waves=[10, 100], soak_s=0, gates=FAST)
    install(h, devs, SLOW)
    h.tick(1)  # look 1
    for look in (1, 2):
        shown = h.show(r["id"])
        assert shown["state"] == "running" and shown["wave"] == 1
        gate = latency(shown)
        assert gate["status"] == "wait" and gate["value"] == pytest.approx(3.0)
        assert f"over it in {look} of 3 consecutive looks" in gate["detail"]
        assert any(f"{look} of 3" in w for w in shown["evaluation"]["waiting_for"])
        h.tick(LOOK / 2)  # between looks: the same heartbeats are not a new look
        assert f"{look} of 3" in latency(h.show(r["id"]))["detail"]
        h.clock.advance(LOOK / 2)
        beat_all(h, devs, SLOW)  # fresh windows from both groups
        h.tick(1)  # look 2, then look 3
    shown = h.show(r["id"])
    assert shown["state"] == "rolled_back"
    assert shown["evaluation"]["failed_gates"] == ["latency_p95_ratio"]
    assert latency(shown)["detail"] == "over the limit in 3 consecutive looks"
    assert shown["reason"].startswith("gate failed: latency_p95_ratio=3 (limit 1.5)")


def test_a_one_look_spike_does_not_fail_the_wave(fleet):
    h, devs = fleet
    r = h.rollout("2.0.0", waves=[10, 100], soak_s=0, gates=FAST)
    install(h, devs, SLOW)
    h.tick(1)
    assert latency(h.show(r["id"]))["status"] == "wait"  # a spike: not a verdict, not a pass either
    h.clock.advance(LOOK)
    beat_all(h, devs, GOOD)
    h.tick(1)  # the next look is within the limit: the count starts again and the wave passes
    assert h.show(r["id"])["wave"] == 2
    assert not [a for a in h.audit(r["id"]) if a["action"] == "rollout.gate_failed"]


def test_one_look_setting_fails_at_the_first_look(fleet):
    h, devs = fleet
    r = h.rollout("2.0.0", waves=[10, 100], soak_s=0, gates={**FAST, "latency_looks": 1})
    install(h, devs, SLOW)
    h.tick(1)
    assert h.show(r["id"])["state"] == "rolled_back"


def test_the_look_count_restarts_with_each_wave(fleet):
    """A wave that passes with one look over the limit leaves no count to the next wave."""
    h, devs = fleet
    r = h.rollout("2.0.0", waves=[10, 50, 100], soak_s=0, gates=FAST)
    install(h, devs, SLOW)
    h.tick(1)
    h.clock.advance(LOOK)
    beat_all(h, devs, GOOD)
    h.tick(1)
    assert h.show(r["id"])["wave"] == 2
    install(h, devs, SLOW)
    h.tick(1)
    shown = h.show(r["id"])
    assert shown["wave"] == 2 and "1 of 3" in latency(shown)["detail"]


# --- plain figures ---------------------------------------------------------------------------------------


class H:
    def __init__(self, p95=None, conf=None, requests=1000):
        self.requests, self.errors = requests, 0
        self.latency_p95_ms, self.mean_confidence = p95, conf
        self.error_rate = 0.0
        self.golden_pass_rate = self.shadow_agreement = self.drift_score = None


def _lat(new, ref, same=None, **g):
    gates = health_gates(new, ref, RolloutGates(**g), judged=True, same_minutes=same)
    return {x.name: x for x in gates}


def test_same_minutes_figures_replace_the_cumulative_ones_where_both_groups_have_them():
    cumulative = (H(p95=15.0, conf=0.9), H(p95=5.0, conf=0.9))
    g = _lat(*cumulative, same=(H(p95=15.0, conf=0.45), H(p95=14.0, conf=0.9)))
    assert g["latency_p95_ratio"].value == pytest.approx(15 / 14) and g["latency_p95_ratio"].reference == 14
    assert g["confidence_ratio"].value == pytest.approx(0.5) and g["confidence_ratio"].status == "fail"
    g = _lat(*cumulative, same=(H(p95=15.0), H(p95=None)))  # control sent no p95 lately: cumulative
    assert g["latency_p95_ratio"].value == pytest.approx(3.0)


def test_a_p95_within_the_floor_never_fails():
    g = _lat(H(p95=2.9), H(p95=1.0))  # 2.9x, but 1.9 ms apart: timer and scheduler noise
    assert g["latency_p95_ratio"].status == "pass" and "within 5 ms" in g["latency_p95_ratio"].detail
    assert _lat(H(p95=2.9), H(p95=1.0), latency_floor_ms=1)["latency_p95_ratio"].status == "fail"
    assert _lat(H(p95=16.0), H(p95=10.0))["latency_p95_ratio"].status == "fail"  # 6 ms apart, 1.6x


def test_persist_counts_consecutive_looks_over_the_limit():
    over, ok = GateResult("latency_p95_ratio", "fail", 3.0, 1.5), GateResult("latency_p95_ratio", "pass", 1.0)
    gate, n = persist(over, over=0, look=True, looks=3)
    assert (gate.status, n) == ("wait", 1) and "1 of 3" in gate.detail
    gate, n = persist(over, over=n, look=False, looks=3)  # no new look: the count holds
    assert (gate.status, n) == ("wait", 1)
    gate, n = persist(ok, over=n, look=False, looks=3)  # within the limit, but the count is not reset yet
    assert (gate.status, n) == ("wait", 1) and gate.detail.startswith("within the limit now")
    gate, n = persist(ok, over=n, look=True, looks=3)
    assert (gate.status, n) == ("pass", 0)
    for _ in range(2):
        gate, n = persist(over, over=n, look=True, looks=3)
    assert gate.status == "wait"
    gate, n = persist(over, over=n, look=True, looks=3)
    assert (gate.status, n) == ("fail", 3) and gate.value == 3.0
    assert persist(over, over=0, look=True, looks=1)[0].status == "fail"
    waiting = GateResult("latency_p95_ratio", "wait", detail="not enough data yet")
    assert persist(waiting, over=2, look=True, looks=3) == (waiting, 2)
