"""Fleet telemetry queries over real windows: merges, filters, drift by class and region, outliers, overview,
rollout waves, access control and bad queries."""

from __future__ import annotations

import math

import pytest
from fleettools import LAYOUT, build_fleet, reference_of, shared_repo, upload
from servertools import Harness, make_harness

from edgefleet.telemetry import Reference, Window, merge_windows


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split):
    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    client, clock = make_harness(tmp_path_factory.mktemp("fleetview"), repo_dir=repo)
    with client:
        h = Harness(client, clock)
        f = build_fleet(h, repo, digits_mlp, digits_split)
        f.viewer = h.token("viewer")
        yield f


def _get(fleet, path, **params):
    r = fleet.h.c.get(path, params=params, headers=fleet.viewer)
    assert r.status_code == 200, r.text
    return r.json()


def _names(role=None, cls=None, region=None):
    return [
        n
        for n, c, r, x in LAYOUT
        if (cls is None or c == cls) and (region is None or r == region) and (role is None or x == role)
    ]


def test_telemetry_merged_per_class_and_region_adds_up_every_window(fleet):
    body = _get(fleet, "/v1/fleet/telemetry", by="device_class,region")
    groups = {(g["group"]["device_class"], g["group"]["region"]): g for g in body["groups"]}
    assert set(groups) == {("cpu", "eu"), ("cpu", "us"), ("arm", "eu"), ("arm", "us")}
    for (cls, region), g in groups.items():
        names = _names(cls=cls, region=region)
        sent = [w for n in names for w in fleet.windows[n]]
        assert g["devices"] == len(names)
        assert g["windows"] == len(sent)
        assert g["requests"] == sum(w.requests for w in sent)
        assert g["rows"] == sum(w.rows for w in sent)
        assert sum(g["classes"].values()) == g["rows"]
    assert body["read"]["raw"] == sum(len(v) for v in fleet.windows.values())
    assert body["read"]["unreadable"] == 0


def test_merged_window_is_exactly_the_library_merge_of_what_devices_sent(fleet):
    body = _get(fleet, "/v1/fleet/telemetry/window", device_class="cpu")
    got = Window.from_dict(body["window"], check_time=False)
    want = merge_windows([w for n in _names(cls="cpu") for w in fleet.windows[n]], on_mismatch="drop")
    assert (got.requests, got.rows, got.errors, got.windows) == (
        want.requests,
        want.rows,
        want.errors,
        want.windows,
    )
    assert got.classes == want.classes
    assert got.confidence_hist.tolist() == want.confidence_hist.tolist()
    for q in (0.5, 0.95, 0.99):
        assert got.latency_quantile(q) == pytest.approx(want.latency_quantile(q))
        assert got.confidence_quantile(q) == pytest.approx(want.confidence_quantile(q))
    assert got.feature_counts.tolist() == want.feature_counts.tolist()


def test_filters_by_device_release_and_time_range(fleet):
    name = "arm-us-2"
    one = _get(fleet, "/v1/fleet/telemetry", by="device_id", device_id=fleet.id(name))
    assert [g["group"]["device_id"] for g in one["groups"]] == [fleet.id(name)]
    assert one["groups"][0]["requests"] == sum(w.requests for w in fleet.windows[name])

    assert _get(fleet, "/v1/fleet/telemetry", release="digits@1.1.0")["groups"] == []
    rel = _get(fleet, "/v1/fleet/telemetry", release="digits@1.0.0", by="release")
    assert [g["group"]["release"] for g in rel["groups"]] == ["digits@1.0.0"]

    # a range that starts in the middle of the third-last window of every device
    ends = sorted(w.end for w in fleet.windows[name])
    since, until = ends[-3] - 300, ends[-1] + 1
    part = _get(fleet, "/v1/fleet/telemetry", by="region", since=since, until=until)
    want = sum(w.requests for ws in fleet.windows.values() for w in ws if w.end > since and w.start < until)
    assert sum(g["requests"] for g in part["groups"]) == want
    assert 0 < want < sum(w.requests for ws in fleet.windows.values() for w in ws)

    region = _get(fleet, "/v1/fleet/telemetry", by="device_class", region="eu")
    assert sum(g["devices"] for g in region["groups"]) == len(_names(region="eu"))


def test_drift_stands_out_for_the_region_of_the_drifted_device(fleet, digits_split):
    body = _get(fleet, "/v1/fleet/drift")
    assert body["skipped"] == []
    groups = {(g["group"]["device_class"], g["group"]["region"]): g for g in body["groups"]}
    assert set(groups) == {("cpu", "eu"), ("cpu", "us"), ("arm", "eu"), ("arm", "us")}
    bad = groups[("cpu", "us")]
    assert bad["drifted"] and bad["score"] >= body["threshold"]
    assert bad["fired"] and any(t["kind"] == "feature" and t["fired"] for t in bad["top"])
    for key, g in groups.items():
        if key != ("cpu", "us"):
            assert not g["drifted"], (key, g)
            assert g["score"] < bad["score"]
    # tested against the reference.json of the bundle the server serves
    ref = Reference.from_dict(reference_of(fleet.repo_dir))
    assert {g["reference_id"] for g in body["groups"]} == {ref.id}

    per_device = _get(fleet, "/v1/fleet/drift", by="device_id")
    drifted = {fleet.name_of(g["group"]["device_id"]) for g in per_device["groups"] if g["drifted"]}
    assert drifted == set(_names(role="drifted"))


def test_the_slow_device_is_the_strongest_latency_outlier_of_its_class(fleet):
    body = _get(fleet, "/v1/fleet/outliers")
    lat = [o for o in body["outliers"] if o["metric"] == "latency_p95_ms"]
    slow = fleet.id(_names(role="slow")[0])
    mine = [o for o in lat if o["device_id"] == slow]
    assert len(mine) == 1, body
    o = mine[0]
    assert o["group"] == {"device_class": "arm"} and o["peers"] == len(_names(cls="arm"))
    assert o["direction"] == "high" and o["value"] > 10 * o["median"]
    assert o["robust_z"] == max(x["robust_z"] for x in lat)
    # grouping by class and region leaves two arm-eu devices: too few peers to judge
    assert _get(fleet, "/v1/fleet/outliers", group_by="device_class,region")["outliers"] == []


def test_an_absolute_floor_keeps_small_latency_differences_from_being_outliers(fleet):
    view = fleet.h.c.app.state.fleet
    old = view.config
    slow = fleet.id(_names(role="slow")[0])
    # a floor above the slow device's extra latency: nobody is far enough from the class to count
    view.config = old.model_copy(update={"outlier_floor_latency_ms": 10_000.0})
    try:
        body = _get(fleet, "/v1/fleet/outliers", metrics="latency_p95_ms")
        assert body["outliers"] == []
    finally:
        view.config = old
    assert slow in [
        o["device_id"] for o in _get(fleet, "/v1/fleet/outliers", metrics="latency_p95_ms")["outliers"]
    ]


def test_timeseries_per_release(fleet):
    body = _get(fleet, "/v1/fleet/timeseries", by="release", range_s=4000, bucket_s=600)
    assert [s["group"]["release"] for s in body["series"]] == ["digits@1.0.0"]
    pts = body["series"][0]["points"]
    assert len(pts) >= 5 and all(p["t"] % 600 == 0 for p in pts)
    assert sum(p["requests"] for p in pts) == sum(w.requests for ws in fleet.windows.values() for w in ws)
    assert all(p["latency_p95_ms"] > 0 and 0 < p["mean_confidence"] <= 1 for p in pts if p["requests"])
    auto = _get(fleet, "/v1/fleet/timeseries")
    assert auto["bucket_s"] == 60  # one hour in at most 60 points


def test_overview_counts_devices_by_version_class_region_and_health(fleet):
    ov = _get(fleet, "/v1/fleet/overview")
    d = ov["devices"]
    assert d["total"] == len(LAYOUT)
    assert d["by_class"] == {"arm": len(_names(cls="arm")), "cpu": len(_names(cls="cpu"))}
    assert d["by_region"] == {"eu": len(_names(region="eu")), "us": len(_names(region="us"))}
    on_v11 = sum(1 for dev in fleet.devices.values() if dev.get("active"))
    assert 0 < on_v11 < len(_names(cls="cpu"))
    assert d["by_version"] == {"digits@1.0.0": len(LAYOUT) - on_v11, "digits@1.1.0": on_v11}
    assert d["by_status"] == {"online": len(LAYOUT)}
    assert sum(d["by_health"].values()) == len(LAYOUT)
    assert ov["telemetry"]["windows_raw"] == sum(len(v) for v in fleet.windows.values())
    assert ov["telemetry"]["batches"] == len(LAYOUT)
    assert ov["rollouts"]["by_state"] == {"completed": 1, "running": 1}


def test_rollouts_show_gate_figures_per_wave(fleet):
    rs = {r["id"]: r for r in _get(fleet, "/v1/fleet/rollouts")}
    v11 = rs[fleet.rollout_v11]
    assert (v11["version"], v11["state"], v11["wave"]) == ("1.1.0", "running", 2)
    w1, w2 = v11["waves"]
    assert (w1["percent"], w1["status"], w1["verdict"]) == (50.0, "passed", "pass")
    gates = {g["name"]: g for g in w1["gates"]}
    assert gates["error_rate"]["status"] == "pass" and isinstance(gates["error_rate"]["value"], float)
    assert gates["latency_p95_ratio"]["threshold"] == 1.5
    assert w2["status"] == "current" and any("soak" in x for x in w2["waiting_for"])
    assert w2["counts"]["admitted"] == len(_names(cls="cpu"))
    v1 = rs[fleet.rollout_v1]
    assert v1["state"] == "completed" and [w["status"] for w in v1["waves"]] == ["passed"]


ENDPOINTS = [
    "/v1/fleet/overview",
    "/v1/fleet/devices",
    "/v1/fleet/telemetry",
    "/v1/fleet/telemetry/window",
    "/v1/fleet/timeseries",
    "/v1/fleet/outliers",
    "/v1/fleet/drift",
    "/v1/fleet/rollouts",
    "/v1/fleet/events",
    "/v1/fleet/alerts",
    "/v1/fleet/retrain-requests",
]


def test_access_control(fleet):
    c = fleet.h.c
    dev = next(iter(fleet.devices.values()))
    for path in ENDPOINTS:
        assert c.get(path, headers=fleet.viewer).status_code == 200, path
        r = c.get(path)
        assert r.status_code == 401 and r.json()["hint"], path
        r = c.get(path, headers=dev["headers"])
        assert r.status_code == 403 and "device token" in r.json()["message"], path
        assert c.get(path, headers={"Authorization": "Bearer efo_not-a-real-token"}).status_code == 401
    for path in (
        "/v1/fleet/alerts/evaluate",
        "/v1/fleet/maintenance",
        "/v1/fleet/retrain-requests/abc123/approve",
    ):
        r = c.post(path, headers=fleet.viewer)
        assert r.status_code == 403 and "role" in r.json()["message"], path
    deployer = fleet.h.token("deployer")
    assert c.post("/v1/fleet/maintenance", headers=deployer).status_code == 403
    assert c.post("/v1/fleet/retrain-requests/abc123/approve", headers=deployer).status_code == 403


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("/v1/fleet/telemetry", {"by": "colour"}, 400, "group"),
        ("/v1/fleet/telemetry", {"by": "region,region"}, 400, "group"),
        ("/v1/fleet/telemetry", {"since": 2000, "until": 1000}, 400, "after"),
        ("/v1/fleet/telemetry", {"since": 0, "until": 4e9}, 400, "days"),
        ("/v1/fleet/telemetry", {"since": "nan"}, 400, "finite"),
        ("/v1/fleet/telemetry", {"range_s": -5}, 422, "range_s"),
        ("/v1/fleet/outliers", {"metrics": "latency_p95_ms,colour"}, 400, "metrics"),
        ("/v1/fleet/timeseries", {"range_s": 86400, "bucket_s": 1}, 400, "points"),
        ("/v1/fleet/alerts", {"state": "sleeping"}, 422, "state"),
    ],
)
def test_bad_queries_get_clear_errors(fleet, path, params, status, words):
    r = fleet.h.c.get(path, params=params, headers=fleet.viewer)
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["message"] and body.get("hint")


def test_unknown_retraining_request_is_404_and_malformed_id_400(fleet):
    c, admin = fleet.h.c, fleet.h.admin
    r = c.post("/v1/fleet/retrain-requests/0123456789abcdef/approve", headers=admin)
    assert r.status_code == 404 and r.json()["hint"]
    r = c.post("/v1/fleet/retrain-requests/..%2F..%2Fetc/approve", headers=admin)
    assert r.status_code in (400, 404)


def test_query_larger_than_the_limit_is_refused_with_a_hint(fleet):
    view = fleet.h.c.app.state.fleet
    old = view.config
    view.config = old.model_copy(update={"max_query_windows": 10})
    try:
        r = fleet.h.c.get("/v1/fleet/telemetry", headers=fleet.viewer)
        assert r.status_code == 400 and "limit 10" in r.json()["message"] and r.json()["hint"]
        ok = fleet.h.c.get(
            "/v1/fleet/telemetry", params={"device_id": fleet.id("cpu-eu-1")}, headers=fleet.viewer
        )
        assert ok.status_code == 200
    finally:
        view.config = old


def test_windows_of_an_unregistered_release_are_reported_not_tested(
    tmp_path, fleet, digits_mlp, digits_split
):
    """A release the server does not know has no reference: drift skips it and says why."""
    from fleettools import make_windows

    client, clock = make_harness(tmp_path, repo_dir=fleet.repo_dir)
    with client:
        h = Harness(client, clock)
        dev = h.enroll("cpu", tags={"region": "eu"})
        ws = make_windows(
            digits_mlp,
            reference_of(fleet.repo_dir),
            digits_split.x_train,
            t_end=clock() - 1,
            windows=2,
            version="9.9.9",
        )
        upload(h, dev, ws)
        body = h.c.get("/v1/fleet/drift", headers=h.admin).json()
        assert body["groups"] == []
        assert body["skipped"][0]["release"] == "digits@9.9.9"
        assert "not registered" in body["skipped"][0]["reason"]
        merged = h.c.get("/v1/fleet/telemetry", headers=h.admin).json()
        assert merged["groups"][0]["requests"] == sum(w.requests for w in ws)
        assert math.isfinite(merged["groups"][0]["latency_p95_ms"])
