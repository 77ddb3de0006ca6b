"""Retention and downsampling of stored telemetry: raw windows roll up per hour without changing any figure,
late windows merge into their hour, expired rollups go, and a failed pass changes nothing."""

from __future__ import annotations

import pytest
from fleettools import make_windows, reference_of, shared_repo, upload
from servertools import Harness, make_harness

from edgefleet.telemetry import Window

DAY = 86400.0


@pytest.fixture
def env(tmp_path, tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split):
    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    client, clock = make_harness(tmp_path, repo_dir=repo)
    with client:
        h = Harness(client, clock)
        h.register("1.0.0")
        dev = h.enroll("cpu", tags={"region": "eu"})
        ref = reference_of(repo)

        def windows(t_end, n, seed, window_s=900.0):
            return make_windows(
                digits_mlp, ref, digits_split.x_train, t_end=t_end, windows=n, window_s=window_s, seed=seed
            )

        yield h, dev, windows


def _whole(h, since, until):
    r = h.c.get("/v1/fleet/telemetry/window", params={"since": since, "until": until}, headers=h.admin)
    assert r.status_code == 200, r.text
    return Window.from_dict(r.json()["window"], check_time=False), r.json()["read"]


def _same(a: Window, b: Window) -> None:
    assert (a.requests, a.rows, a.errors, a.windows) == (b.requests, b.rows, b.errors, b.windows)
    assert a.classes == b.classes
    assert a.confidence_hist.tolist() == b.confidence_hist.tolist()
    assert a.feature_counts.tolist() == b.feature_counts.tolist()
    for q in (0.5, 0.95):
        assert a.latency_quantile(q) == pytest.approx(b.latency_quantile(q))


def _maintain(h):
    r = h.c.post("/v1/fleet/maintenance", headers=h.admin)
    assert r.status_code == 200, r.text
    return r.json()


def test_old_windows_roll_up_per_hour_and_every_figure_survives(env):
    h, dev, windows = env
    now = h.clock()
    old = windows(now - 3 * DAY, 8, seed=1)  # 2 hours of 15-minute windows, three days ago
    recent = windows(now - 10, 2, seed=2)
    upload(h, dev, old)
    upload(h, dev, recent)
    since, until = now - 4 * DAY, now
    before, read = _whole(h, since, until)
    assert read == {"raw": 10, "rolled_up": 0, "unreadable": 0, "devices": 1}

    rep = _maintain(h)
    hours = {int(w.start // 3600) for w in old}
    assert rep == {"rolled_up": 8, "rollups_written": len(hours), "rollups_deleted": 0, "unreadable": 0}
    after, read = _whole(h, since, until)
    assert read["raw"] == 2 and read["rolled_up"] == len(hours)
    _same(after, before)
    # the drift view still has its features over the downsampled range
    drift = h.c.get(
        "/v1/fleet/drift", params={"since": since, "until": now - 2 * DAY}, headers=h.admin
    ).json()
    assert drift["groups"] and drift["groups"][0]["rows"] == sum(w.rows for w in old)
    assert not any(s.startswith("features") for s in drift["groups"][0].get("skipped", []))
    assert _maintain(h)["rolled_up"] == 0  # nothing left to do

    # a window arriving late for an hour already rolled up merges into that hour
    late = windows(old[3].end + 5, 1, seed=3, window_s=1.0)
    upload(h, dev, late)
    rep = _maintain(h)
    assert (rep["rolled_up"], rep["rollups_written"]) == (1, 1)
    again, read = _whole(h, since, until)
    assert read["rolled_up"] == len(hours)
    assert again.requests == before.requests + late[0].requests
    assert again.windows == before.windows + 1

    events = h.c.get("/v1/fleet/events", params={"prefix": "telemetry."}, headers=h.admin).json()
    assert events and events[0]["details"]["rolled_up"] == 1

    # 29 days later the old hours are past the 30-day retention; the then-old recent windows roll up
    h.clock.advance(29 * DAY)
    rep = _maintain(h)
    recent_hours = {int(w.start // 3600) for w in recent}
    assert rep["rolled_up"] == 2 and rep["rollups_written"] == len(recent_hours)
    assert rep["rollups_deleted"] == len(hours)
    ov = h.c.get("/v1/fleet/overview", headers=h.admin).json()
    assert ov["telemetry"]["windows_raw"] == 0 and ov["telemetry"]["rollups"] == len(recent_hours)
    kept, read = _whole(h, now - 4 * DAY, now + 1)
    assert read["rolled_up"] == len(recent_hours) and kept.requests == sum(w.requests for w in recent)


def test_a_retention_pass_that_fails_midway_changes_nothing(env, monkeypatch):
    import edgefleet.server._retention as fv

    h, dev, windows = env
    now = h.clock()
    upload(h, dev, windows(now - 3 * DAY, 8, seed=4))
    before, read = _whole(h, now - 4 * DAY, now)
    real = fv.merge_windows
    calls = {"n": 0}

    def crash_on_second(ws, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        return real(ws, **kw)

    monkeypatch.setattr(fv, "merge_windows", crash_on_second)
    with pytest.raises(OSError):
        h.c.app.state.fleet.maintain()
    monkeypatch.setattr(fv, "merge_windows", real)
    after, read2 = _whole(h, now - 4 * DAY, now)
    assert read2 == read and read2["rolled_up"] == 0
    _same(after, before)
    assert _maintain(h)["rolled_up"] == 8  # and the next pass does the work


def test_retention_settings_come_from_the_environment(monkeypatch):
    from edgefleet.server._fleet_config import FleetConfig

    monkeypatch.setenv("EDGEFLEET_FLEET_RAW_RETENTION_S", "3600")
    monkeypatch.setenv("EDGEFLEET_FLEET_ROLLUP_S", "900")
    cfg = FleetConfig()
    assert (cfg.raw_retention_s, cfg.rollup_s, cfg.rollup_retention_s) == (3600, 900, 30 * DAY)
    monkeypatch.setenv("EDGEFLEET_FLEET_ROLLUP_S", "5")
    with pytest.raises(ValueError, match="rollup_s"):
        FleetConfig()


@pytest.mark.postgres
def test_fleet_queries_alerts_and_retention_on_postgres(
    tmp_path, tmp_path_factory, pg_url, digits_mlp, digits_mlp_v2, digits_split
):
    from fleettools import build_fleet

    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    client, clock = make_harness(tmp_path, db_url=pg_url, repo_dir=repo)
    with client:
        h = Harness(client, clock)
        assert h.ctx.db.dialect == "postgresql"
        layout = [("cpu-eu-1", "cpu", "eu", None), ("cpu-us-1", "cpu", "us", "drifted")]
        f = build_fleet(h, repo, digits_mlp, digits_split, layout=layout, second_rollout=False)
        drift = h.c.get("/v1/fleet/drift", headers=h.admin).json()
        assert [g["group"]["region"] for g in drift["groups"] if g["drifted"]] == ["us"]
        assert (
            "drift:digits@1.0.0/cpu/us"
            in h.c.post("/v1/fleet/alerts/evaluate", headers=h.admin).json()["raised"]
        )
        before, _ = _whole(h, clock() - DAY, clock())
        h.clock.advance(3 * DAY)
        rep = _maintain(h)
        assert rep["rolled_up"] == sum(len(v) for v in f.windows.values()) and rep["unreadable"] == 0
        after, read = _whole(h, clock() - 4 * DAY, clock())
        assert read["raw"] == 0 and read["rolled_up"] == rep["rollups_written"]
        _same(after, before)
        assert "edgefleet_fleet_up 1.0" in h.c.get("/metrics", headers=h.admin).text
