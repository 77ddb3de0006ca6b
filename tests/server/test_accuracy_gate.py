"""Live accuracy (issue 13): Wilson and Newcombe intervals and ECE against published values, per-class
precision/recall, the report per release and region, and the live-accuracy rollout gate (a wave on a worse
release is rolled back; one that is as good passes; too few labels waits)."""

from __future__ import annotations

import pytest
from servertools import FAST, GOOD, active_of, fleet_on_v1, install
from test_samples_store import sample, upload

from edgefleet.server._accuracy import (
    accuracy_figures,
    accuracy_gate,
    expected_calibration_error,
    newcombe,
    stratified_difference,
    wilson,
)


def test_wilson_and_newcombe_match_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I and II
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert newcombe(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=5e-4)
    assert newcombe(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=5e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_ece_and_per_class_figures():
    # perfectly calibrated: 80 % confident and 80 % right
    assert expected_calibration_error([0.85] * 10, [True] * 8 + [False] * 2, bins=10) == pytest.approx(0.05)
    assert expected_calibration_error([0.95] * 4, [False] * 4) == pytest.approx(0.95)
    assert expected_calibration_error([], []) is None
    rows = [("cat", "cat", 0.9), ("cat", "dog", 0.6), ("dog", "dog", 0.8), ("dog", "dog", 0.7)]
    f = accuracy_figures(rows)
    assert (
        f["labelled"] == 4 and f["accuracy"] == 0.75 and f["accuracy_ci"] == pytest.approx(list(wilson(3, 4)))
    )
    assert f["classes"]["cat"]["precision"] == 0.5 and f["classes"]["cat"]["recall"] == 1.0
    assert f["classes"]["dog"]["precision"] == 1.0 and f["classes"]["dog"]["recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("new", "control", "status"),
    [
        ((10, 9), (200, 180), "wait"),  # too few labels on the wave
        ((400, 366), (400, 364), "pass"),  # 91.5 % vs 91 %: the interval stays above -5 points
        ((400, 280), (400, 364), "fail"),  # 70 % vs 91 %: clearly worse
        ((60, 50), (60, 54), "wait"),  # 83 % vs 90 % with 60 each: cannot tell yet
    ],
)
def test_gate_against_control(new, control, status):
    g = accuracy_gate(new, control, min_labelled=50, margin=0.05)
    assert g.name == "live_accuracy" and g.status == status, g.detail


def test_gate_floor_without_control_and_off():
    assert accuracy_gate((200, 190), (3, 3), min_labelled=50, margin=0.05, min_accuracy=0.8).status == "pass"
    assert accuracy_gate((200, 120), None, min_labelled=50, margin=0.05, min_accuracy=0.8).status == "fail"
    assert accuracy_gate((200, 120), None, min_labelled=50, margin=0.05).status == "skipped"
    assert accuracy_gate((200, 120), None, min_labelled=0, margin=0.05).status == "skipped"


def test_one_stratum_is_newcombe_and_strata_are_weighted_as_the_wave():
    _, _, lo, hi, w = stratified_difference({"eu": (70, 56)}, {"eu": (80, 48), "us": (5, 5)})
    assert (lo, hi) == pytest.approx(newcombe(56, 70, 48, 80)) and w == {"eu": 1.0}
    p_new, p_ctl, *_, w = stratified_difference(
        {"eu": (30, 15), "us": (10, 9)}, {"eu": (50, 5), "us": (50, 45)}
    )
    assert w == pytest.approx({"eu": 0.75, "us": 0.25})
    assert p_new == pytest.approx(0.75 * 0.5 + 0.25 * 0.9) and p_ctl == pytest.approx(0.75 * 0.1 + 0.25 * 0.9)
    with pytest.raises(ValueError):
        stratified_difference({"eu": (10, 5)}, {"us": (10, 5)})


def test_gate_compares_region_by_region_not_the_mix_of_regions():
    # The retrained release's wave sits mostly where the inputs moved (eu) and the control mostly where
    # they did not (us): pooled, 61.7 % vs 82.5 % reads as a clear loss; region by region the new release
    # is far better in eu and as good in us.
    new = {"eu": (100, 55), "us": (20, 19)}
    control = {"eu": (20, 4), "us": (100, 95)}
    pooled = accuracy_gate((120, 74), (120, 99), min_labelled=15, margin=0.05)
    assert pooled.status == "fail"
    g = accuracy_gate(new, control, min_labelled=15, margin=0.05)
    assert g.status == "pass", g.detail
    assert g.value == pytest.approx(74 / 120) and g.reference == pytest.approx((100 * 0.2 + 20 * 0.95) / 120)
    assert "eu 0.550 vs 0.200" in g.detail and "us 0.950 vs 0.950" in g.detail
    # and a release worse in both regions still fails, whatever the mix
    bad = accuracy_gate(
        {"eu": (100, 30), "us": (20, 12)}, {"eu": (100, 60), "us": (100, 95)}, min_labelled=15, margin=0.05
    )
    assert bad.status == "fail", bad.detail
    # a region with no control anywhere is left out of the comparison and said so
    g = accuracy_gate({"eu": (100, 55), "apac": (30, 3)}, control, min_labelled=15, margin=0.05)
    assert g.status == "pass" and "apac 0.100 (30, no control there: not compared)" in g.detail


def _labelled(h, dev, version, n, right, tag):
    """``n`` labelled samples of ``dev`` on ``version``, ``right`` of them answered correctly."""
    samples = [
        sample(f"req-{tag}-{dev['device_id'][-6:]}-{i:03d}", version=version, predicted="1") for i in range(n)
    ]
    upload(h, dev, samples)
    for i, s in enumerate(samples):
        r = h.c.post(
            "/v1/feedback",
            json={"request_id": s["request_id"], "label": "1" if i < right else "2"},
            headers=h.admin,
        )
        assert r.status_code == 200, r.text


def test_a_release_worse_on_labelled_samples_is_rolled_back(harness):
    h = harness
    devs = fleet_on_v1(h, 10, tags={"region": "eu"})
    h.register("2.0.0")
    gates = {**FAST, "min_labelled": 40, "max_accuracy_drop": 0.05}
    r = h.rollout("2.0.0", waves=[50, 100], soak_s=0, gates=gates)
    wave = install(h, devs, GOOD)
    control = [d for d in devs if d not in wave]
    h.tick(1)
    assert "live_accuracy" in " ".join(h.show(r["id"])["evaluation"]["waiting_for"])  # no labels yet: waits
    for d in control:
        _labelled(h, d, "1.0.0", 20, 19, "ctl")  # 95 % on the control group
    for d in wave:
        _labelled(h, d, "2.0.0", 20, 12, "new")  # 60 % on the new release
    h.tick(1)
    shown = h.show(r["id"])
    assert shown["state"] == "rolled_back", shown["evaluation"]
    assert shown["evaluation"]["failed_gates"] == ["live_accuracy"]
    gate = {g["name"]: g for g in shown["evaluation"]["gates"]}["live_accuracy"]
    assert gate["value"] == pytest.approx(0.6) and gate["reference"] == pytest.approx(0.95)
    # the same figures on the accuracy API, per release and region
    acc = {
        a["release"]: a
        for a in h.c.get("/v1/accuracy", params={"by": "release,region"}, headers=h.admin).json()
    }
    assert acc["digits@2.0.0"]["accuracy"] == pytest.approx(0.6) and acc["digits@2.0.0"]["region"] == "eu"
    assert acc["digits@1.0.0"]["labelled"] == 20 * len(control)


def _everyone_on_v1(h, devs):
    """1.0.0 rolled out to ``devs`` in one wave, installed and healthy everywhere."""
    h.register("1.0.0")
    r1 = h.rollout("1.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    for d in devs:
        d["v1"] = active_of(h.beat(d)["assignment"])
        h.beat(d, active=d["v1"], health=GOOD)
    h.tick(1)
    assert h.show(r1["id"])["state"] == "completed"


def test_a_wave_with_no_control_in_its_region_is_compared_with_its_own_answers_before_the_switch(harness):
    # eu's inputs moved: v1 answers 20 % there, the retrained 2.0.0 answers 60 %; us is fine on v1.
    # 2.0.0 goes to eu in one wave, so no device is left on v1 where the wave runs: the gate compares eu
    # with the wave's own v1 answers before the switch and passes, where a pooled comparison with the rest
    # of the fleet (60 % vs 95 %) would roll the better release back.
    h = harness
    eu = [h.enroll(tags={"region": "eu"}) for _ in range(2)]
    us = [h.enroll(tags={"region": "us"}) for _ in range(2)]
    _everyone_on_v1(h, eu + us)
    for d in eu:
        _labelled(h, d, "1.0.0", 20, 4, "old")
    for d in us:
        _labelled(h, d, "1.0.0", 20, 19, "ctl")
    h.register("2.0.0")
    gates = {**FAST, "min_labelled": 20, "max_accuracy_drop": 0.05}
    r = h.rollout("2.0.0", waves=[100], soak_s=0, gates=gates, selector="region=eu")
    wave = install(h, eu, GOOD)
    assert len(wave) == 2
    for d in wave:
        _labelled(h, d, "2.0.0", 20, 12, "new")
    h.tick(1)
    shown = h.show(r["id"])
    gate = {g["name"]: g for g in shown["evaluation"]["gates"]}["live_accuracy"]
    assert gate["status"] == "pass", gate
    assert gate["reference"] == pytest.approx(0.2) and "before the switch" in gate["detail"]


def test_a_fixed_control_too_few_to_decide_falls_back_to_the_floor():
    # The loop demo's CI failure: the wave held both devices of the unshifted region, so its control is their
    # 52 labels from before the switch, which never grow. 0.844 vs 0.885 straddles the 5-point margin and
    # would still with a million wave labels: the gate judged waits forever unless the floor decides.
    new, control = {"us": (295, 249)}, {"us": (52, 46)}
    live = accuracy_gate(new, control, min_labelled=15, margin=0.05, min_accuracy=0.5)
    assert live.status == "wait", live.detail  # a live control keeps growing: waiting can end
    fixed = accuracy_gate(new, control, min_labelled=15, margin=0.05, min_accuracy=0.5, historical={"us"})
    assert fixed.status == "pass" and fixed.threshold == 0.5, fixed.detail
    assert "gets no more" in fixed.detail and "judged against the floor" in fixed.detail
    # the floor still fails a wave below it, and without a floor the gate waits and says what to do
    high = accuracy_gate(new, control, min_labelled=15, margin=0.05, min_accuracy=0.9, historical={"us"})
    assert high.status == "fail", high.detail
    none = accuracy_gate(new, control, min_labelled=15, margin=0.05, historical={"us"})
    assert none.status == "wait" and "min_accuracy" in none.detail, none.detail
    # a fixed control large enough to decide keeps the comparison: more wave labels will settle it
    big = accuracy_gate(
        {"us": (60, 53)},
        {"us": (5000, 4425)},
        min_labelled=15,
        margin=0.05,
        min_accuracy=0.5,
        historical={"us"},
    )
    assert big.status == "wait" and "floor" not in big.detail, big.detail
    # and a clear loss against a fixed control still fails on the comparison, not the floor
    worse = accuracy_gate(
        {"us": (295, 150)}, control, min_labelled=15, margin=0.05, min_accuracy=0.5, historical={"us"}
    )
    assert worse.status == "fail" and "floor" not in worse.detail, worse.detail


def test_a_wave_of_a_whole_unshifted_region_is_not_held_forever_by_its_few_labels_before_the_switch(harness):
    # Through the rollout engine: both us devices go to 2.0.0 in one wave; their 26 v1 labels each are the
    # whole control there. 2.0.0 is a little below v1 (0.84 vs 0.88): too close to call against 52 labels,
    # far above the floor, so the wave passes on the floor and says why.
    h = harness
    us = [h.enroll(tags={"region": "us"}) for _ in range(2)]
    _everyone_on_v1(h, us)
    for d in us:
        _labelled(h, d, "1.0.0", 26, 23, "old")
    h.register("2.0.0")
    gates = {**FAST, "min_labelled": 20, "max_accuracy_drop": 0.05, "min_accuracy": 0.5}
    r = h.rollout("2.0.0", waves=[100], soak_s=0, gates=gates)
    wave = install(h, us, GOOD)
    assert len(wave) == 2
    for d in wave:
        _labelled(h, d, "2.0.0", 150, 126, "new")
    h.tick(1)
    gate = {g["name"]: g for g in h.show(r["id"])["evaluation"]["gates"]}["live_accuracy"]
    assert gate["status"] == "pass", gate
    assert "before the switch" in gate["detail"] and "judged against the floor" in gate["detail"], gate
