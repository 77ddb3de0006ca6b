"""A scripted battery-and-heat trace through the device policy: switches at the configured points, back
only after the hysteresis, never more often than the dwell allows. Plus the trace and policy readers."""

from __future__ import annotations

import math

import pytest
import yaml

from edgefleet.errors import ConfigError
from edgefleet.power._policy import Policy, PolicyEngine
from edgefleet.power._state import DeviceState, ScriptedSource, TraceRow

POLICY = {
    "min_dwell_s": 120,
    "rules": [
        {
            "name": "low-battery",
            "when": {"battery_below": 30, "power_source": "battery"},
            "actions": {"variant": "smaller", "rate_limit_rps": 2},
        },
        {
            "name": "critical-battery",
            "when": {"battery_below": 15, "power_source": "battery"},
            "actions": {"defer": ["download", "train"], "duty_cycle": 0.25},
        },
        {
            "name": "hot",
            "when": {"headroom_below": 8},
            "hysteresis": {"temp_c": 4},
            "actions": {"variant": "smaller", "pause_escalation": True},
        },
    ],
}


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drain_and_heat_trace() -> list[TraceRow]:
    """100 % -> 10 % over 90 min on battery while heating from 50 to 83 °C (trip 85), with sensor noise
    around every threshold; then plugged in, charging back to 60 % and cooling down."""
    rows = []
    for i in range(0, 5400 + 1, 30):
        noise = 1.5 * math.sin(i / 7.0)  # +-1.5 % and +-1.5 °C of jitter: thresholds are crossed many times
        rows.append(
            TraceRow(
                t=i,
                battery_percent=max(0.0, min(100.0, 100 - 90 * i / 5400 + noise)),
                power_source="battery",
                temp_c=50 + 33 * i / 5400 + noise,
                trip_c=85.0,
            )
        )
    for j in range(30, 3600 + 1, 30):
        noise = 1.5 * math.sin(j / 7.0)
        rows.append(
            TraceRow(
                t=5400 + j,
                battery_percent=min(100.0, 10 + 50 * j / 3600 + noise),
                power_source="ac",
                temp_c=83 - 35 * j / 3600 + noise,
            )
        )
    return rows


def test_drain_and_heat_trace():
    clock = FakeClock()
    source = ScriptedSource(drain_and_heat_trace(), clock=clock)
    engine = PolicyEngine(Policy.from_data(POLICY), clock=clock)
    timeline = []  # (t, state, decision)
    while clock.t <= source.duration_s:
        s = source.read()
        d = engine.evaluate(s)
        timeline.append((clock.t, s, d.to_dict()))
        clock.t += 5

    def first(pred):
        return next(t for t, s, d in timeline if pred(s, d))

    # switches at the configured points
    t_small = first(lambda s, d: d["variant"] == "smaller")
    s_small = next(s for t, s, _ in timeline if t == t_small)
    assert s_small.battery_percent < 30 or s_small.headroom_c < 8
    t_rate = first(lambda s, d: d["rate_limit_rps"] == 2)
    assert next(s for t, s, _ in timeline if t == t_rate).battery_percent < 30
    t_defer = first(lambda s, d: "download" in d["deferred"])
    s_defer = next(s for t, s, _ in timeline if t == t_defer)
    assert s_defer.battery_percent < 15 and t_defer > t_rate
    t_hot = first(lambda s, d: "hot" in d["active"])
    assert next(s for t, s, _ in timeline if t == t_hot).headroom_c < 8
    hot_state = next(d for t, s, d in timeline if t == t_hot)
    assert "escalate" in hot_state["deferred"]
    # before any threshold nothing is on
    assert all(not d["active"] for t, s, d in timeline if s.battery_percent > 31.5 and s.headroom_c > 9.5)

    # back only after the hysteresis: low-battery is released at >= 35 % or on mains; hot at >= 12 °C headroom
    offs = [sw for sw in engine.switches if not sw.on]
    for sw in offs:
        st = sw.state
        if sw.rule == "hot":
            assert st["headroom_c"] >= 12
        elif sw.rule == "low-battery":
            assert st["battery_percent"] >= 35 or st["power_source"] != "battery"
    assert {sw.rule for sw in offs} == {"low-battery", "critical-battery", "hot"}
    final = timeline[-1][2]
    assert final["active"] == [] and final["variant"] is None and final["deferred"] == []

    # never flaps: with noise crossing every threshold many times, each rule turns on once and off once,
    # and no two changes of one rule are closer than the dwell
    per_rule: dict[str, list] = {}
    for sw in engine.switches:
        per_rule.setdefault(sw.rule, []).append(sw)
    assert {r: [s.on for s in sws] for r, sws in per_rule.items()} == {
        r: [True, False] for r in ("low-battery", "critical-battery", "hot")
    }
    assert engine.switch_count == 6


def test_dwell_holds_a_rule_even_when_the_state_swings_back():
    clock = FakeClock()
    policy = Policy.from_data(
        {
            "min_dwell_s": 60,
            "rules": [{"name": "hot", "when": {"temp_above": 70}, "actions": {"variant": "smaller"}}],
        }
    )
    engine = PolicyEngine(policy, clock=clock)
    changes = []
    for step in range(200):  # a square wave 60 <-> 80 °C every 10 s: without dwell, 20 switches
        clock.t = step
        temp = 80.0 if (step // 10) % 2 == 0 else 60.0
        before = engine.decision.variant
        engine.evaluate(DeviceState(temp_c=temp))
        if engine.decision.variant != before:
            changes.append(step)
    assert changes[0] == 0
    assert all(b - a >= 60 for a, b in zip(changes, changes[1:], strict=False))
    assert 2 <= len(changes) <= 200 // 60 + 1


def test_time_of_day_and_link_rules():
    engine = PolicyEngine(
        Policy.from_data(
            {
                "min_dwell_s": 0,
                "rules": [
                    {"name": "night", "when": {"hours": [22, 6]}, "actions": {"batch_delay_ms": 25}},
                    {
                        "name": "metered",
                        "when": {"link": "metered"},
                        "actions": {"defer": ["download", "upload"]},
                    },
                ],
            }
        )
    )
    assert engine.evaluate(DeviceState(hour=23.5, link="unmetered")).batch_delay_ms == 25
    assert engine.evaluate(DeviceState(hour=3, link="unmetered")).active == ["night"]
    d = engine.evaluate(DeviceState(hour=12, link="metered"))
    assert d.active == ["metered"] and d.batch_delay_ms is None
    assert not engine.may("upload") and engine.may_train()
    assert engine.evaluate(DeviceState(hour=12, link=None)).active == []  # unknown link is not metered


def test_unknown_readings_never_trigger():
    engine = PolicyEngine(Policy.from_data(POLICY))
    assert engine.evaluate(DeviceState()).active == []


def test_trace_files(tmp_path):
    y = tmp_path / "t.yaml"
    y.write_text(
        yaml.safe_dump({"rows": [{"t": 0, "battery_percent": 90, "temp_c": 40}, {"t": 60, "temp_c": 70}]})
    )
    src = ScriptedSource.from_file(y)
    s = src.at(61)
    assert (s.battery_percent, s.temp_c, s.source) == (90, 70, "scripted")  # battery carried forward
    c = tmp_path / "t.csv"
    c.write_text("t,battery_percent,power_source,temp_c,trip_c\n0,100,battery,45,85\n120,50,,60,\n")
    s = ScriptedSource.from_file(c).at(500)
    assert (s.battery_percent, s.power_source, s.headroom_c) == (50, "battery", 25)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.yaml", "rows: [{t: 0, battery_percent: 140}]", "row 1 is invalid: battery_percent"),
        ("bad2.yaml", "[1, 2]", "row 1 is not a mapping"),
        ("bad3.yaml", "{t: [", "not valid YAML"),
        ("bad4.yaml", "rows: []", "at least one row"),
        ("bad.csv", "t,temp_c\n0,40,99\n", "more cells than the header"),
        ("bad2.csv", "t,volts\n0,5\n", "volts: Extra inputs"),
    ],
)
def test_bad_trace_files(tmp_path, name, text, needle):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        ScriptedSource.from_file(p)


def test_oversized_trace_is_refused_unread(tmp_path):
    p = tmp_path / "big.yaml"
    with open(p, "wb") as f:
        f.truncate(64 << 20)  # sparse: nothing is read
    with pytest.raises(ConfigError, match="limit"):
        ScriptedSource.from_file(p)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"rules": [{"name": "x", "when": {"battery_below": 120}, "actions": {}}]}, "battery_below"),
        ({"rules": [{"name": "x", "when": {}, "actions": {"defer": ["reboot"]}}]}, "defer"),
        ({"rules": [{"name": "x", "when": {"hours": [22, 30]}, "actions": {}}]}, "hours"),
        ({"rules": [{"name": "a", "when": {}, "actions": {}}] * 2}, "unique"),
        ({"rulez": []}, "rulez"),
        ([1], "must be a mapping"),
    ],
)
def test_bad_policies(data, needle):
    with pytest.raises(ConfigError, match=needle):
        Policy.from_data(data)
