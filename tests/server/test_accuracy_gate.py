"""Live accuracy (issue 13): Wilson and Newcombe intervals and ECE against published values, per-class
precision/recall, the report per release and region, and the live-accuracy rollout gate (a wave on a worse
release is rolled back; one that is as good passes; too few labels waits)."""

from __future__ import annotations

import pytest
from servertools import FAST, GOOD, fleet_on_v1, install
from test_samples_store import sample, upload

from edgefleet.server._accuracy import (
    accuracy_figures,
    accuracy_gate,
    expected_calibration_error,
    newcombe,
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
