"""The dashboard's Retraining page and live accuracy card in headless chromium against a real server.

Jobs are recorded through /v1/retrain/jobs with the same client calls ``edgefleet retrain run`` makes (create,
one call per step, the rollout proposal); the page shows each step with its time and figures, and an
operator approves the proposal from the page: a real rollout starts, linked from the job. The accuracy card
shows per-release accuracy, ECE and per-class precision/recall, for all regions or one picked in a selector.
"""

from __future__ import annotations

import time

import pytest
from fleettools import LiveClient, shared_repo
from pagewait import until, until_js
from servertools import Clock, Harness

pytestmark = pytest.mark.browser

JOB, FAILED, REJECT = "a1b2c3d4e5f60718", "0f1e2d3c4b5a6978", "1122334455667788"
# (region, version, predicted, label, confidence)
LABELLED = [
    ("eu", "1.0.0", "3", "3", 0.9),
    ("eu", "1.0.0", "3", "8", 0.8),
    ("eu", "1.0.0", "8", "8", 0.7),
    ("eu", "1.0.0", "8", "3", 0.6),
    ("us", "1.0.0", "3", "3", 0.9),
    ("us", "1.0.0", "8", "8", 0.9),
    ("us", "1.1.0", "3", "3", 0.95),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split):
    from edgefleet.client import Client
    from edgefleet.server import ServerConfig, start_server

    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    base = tmp_path_factory.mktemp("retrain-dashboard")
    cfg = ServerConfig(
        data_dir=base / "server", repo_dir=repo, keys_dir=base / "no-keys", engine_enabled=False
    )
    with start_server(cfg, clock=Clock()) as srv, LiveClient(srv.url, srv.app) as client:
        h = Harness(client, Clock())
        h.url = srv.url
        h.deployer = h.token("deployer")["Authorization"].split()[1]
        # labelled samples from two regions on two releases
        devs = {r: h.enroll(tags={"region": r}) for r in ("eu", "us")}
        for i, (region, version, predicted, _, conf) in enumerate(LABELLED):
            s = {
                "request_id": f"req-acc-{i:04d}",
                "t": time.time(),
                "reason": "random",
                "confidence": conf,
                "predicted": predicted,
                "privacy": "hash",
                "input_hash": "ab" * 16,
                "tags": {"model": "digits", "version": version, "variant": "cpu"},
            }
            d = devs[region]
            r = client.post(
                f"/v1/devices/{d['device_id']}/samples", json={"samples": [s]}, headers=d["headers"]
            )
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        for i, (*_, label, _c) in enumerate(LABELLED):
            r = client.post(
                "/v1/samples/labels",
                json={"request_ids": [f"req-acc-{i:04d}"], "label": label},
                headers=h.admin,
            )
            assert r.status_code == 200, r.text
        # two jobs, recorded as the retrain CLI records them
        with Client(srv.url, token=h.deployer) as c:
            for v in ("1.0.0", "1.1.0"):
                c.register_release("digits", v)
            snap = {"sha256": "cd" * 32, "rows": 120, "labels": {"3": 60, "8": 60}}
            c.create_retrain_job(
                JOB,
                name="digits",
                parent_version="1.0.0",
                version="1.1.0",
                snapshot=snap,
                trainer="head",
                request_id="req0123456789abc",
                rollout={"waves": [50, 100], "soak_s": 0},
                auto_rollout=False,
            )
            steps = [
                (
                    "started",
                    {"parent": "digits 1.0.0", "snapshot_sha256": "cd" * 32, "labels": snap["labels"]},
                ),
                (
                    "trained",
                    {
                        "train_rows": 1240,
                        "sample_rows": 96,
                        "holdout_rows": 24,
                        "parent_holdout_accuracy": 0.61,
                        "new_holdout_accuracy": 0.93,
                    },
                ),
                (
                    "optimized",
                    {
                        "runs": [
                            {
                                "variant": "cpu",
                                "chosen": "dynamic-int8",
                                "accuracy": 0.92,
                                "size_bytes": 20480,
                            }
                        ]
                    },
                ),
                (
                    "published",
                    {"version": "1.1.0", "targets": [{"target": "digits/1.1.0/cpu.tar", "bytes": 30720}]},
                ),
                ("registered", {"release": "digits 1.1.0", "variants": ["cpu"]}),
            ]
            for step, details in steps:
                c.retrain_job_step(JOB, step, details)
            assert c.propose_retrain_rollout(JOB, {"waves": [50, 100], "soak_s": 0})["status"] == "proposed"
            c.create_retrain_job(
                REJECT, name="digits", parent_version="1.0.0", version="1.0.2", trainer="head"
            )
            c.propose_retrain_rollout(REJECT, {"selector": "region=eu"})
            c.create_retrain_job(
                FAILED, name="digits", parent_version="1.0.0", version="1.0.1", trainer="head"
            )
            c.retrain_job_step(FAILED, "started", {"parent": "digits 1.0.0"})
            c.retrain_job_step(
                FAILED,
                "failed",
                {
                    "error": "the retrained model scores 60.0% on 24 held-out samples",
                    "hint": "label more samples",
                },
            )
        yield h


def _rows(page, selector):
    return [r.split("\t") for r in page.locator(selector).inner_text().splitlines()]


def test_retraining_page_shows_steps_approves_and_links_the_rollout(browser, live, tmp_path):
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live.url}/dashboard?token={live.deployer}#retrain")
    page.wait_for_selector("body[data-loaded='retrain']", timeout=30_000)
    assert page.locator("#nav a.active").inner_text() == "Retraining"
    job = page.locator(f".job[data-job='{JOB}']")
    assert (
        "digits 1.0.0 → 1.1.0" in job.locator("h2").inner_text()
        and "proposed" in job.locator("h2").inner_text()
    )
    rows = _rows(page, f".job[data-job='{JOB}'] table.steps tbody")
    assert [r[0] for r in rows] == [
        "created", "started", "trained", "optimized", "published", "registered", "rollout proposed",
    ]  # fmt: skip
    fig = {r[0]: r[3] for r in rows}
    assert all(r[1].count(":") == 2 and r[2].endswith(" s") for r in rows), rows  # a time and its offset
    assert "held-out accuracy 61.0% → 93.0% (+32.0 pts) on 24 rows" in fig["trained"]
    assert fig["optimized"] == "cpu: dynamic-int8, accuracy 92.0%, 20.0 KB"
    assert fig["published"] == "1.1.0 · 1 bundles, 30.0 KB"
    assert fig["registered"] == "digits 1.1.0 · variants cpu"
    assert (
        "waves 50, 100 % · all devices" in fig["rollout proposed"]
        and "waiting for an operator's approval" in fig["rollout proposed"]
    )
    failed = page.locator(f".job[data-job='{FAILED}']")
    assert "failed" in failed.locator("h2").inner_text()
    assert (
        "scores 60.0% on 24 held-out samples — label more samples"
        in failed.locator("table.steps").inner_text()
    )
    assert failed.locator("button.approve").count() == 0
    page.screenshot(path=str(tmp_path / "retrain.png"), full_page=True)

    # approve from the page: a real rollout starts, and the job links to it
    job.locator("button.approve").click()
    until(
        lambda: live.c.get(f"/v1/retrain/jobs/{JOB}", headers=live.admin).json()["status"] == "completed",
        "approval",
    )
    rollout_id = live.c.get(f"/v1/retrain/jobs/{JOB}", headers=live.admin).json()["rollout_id"]
    rollouts = live.c.get("/v1/rollouts", headers=live.admin).json()
    assert [(r["id"], r["version"]) for r in rollouts] == [(rollout_id, "1.1.0")]
    until_js(
        page,
        f"document.querySelector(\".job[data-job='{JOB}'] a.rollout-link\")?.innerText === '{rollout_id}'",
    )
    rows = _rows(page, f".job[data-job='{JOB}'] table.steps tbody")
    assert rows[-1][0] == "rollout started" and rows[-1][3].startswith(
        f"rollout {rollout_id} started by operator:"
    )
    assert page.locator(f".job[data-job='{JOB}'] button.approve").count() == 0
    audit = live.c.get("/v1/audit", params={"action": "retrain.rollout_started"}, headers=live.admin).json()
    assert audit[0]["actor"].startswith("operator:deployer") and audit[0]["rollout_id"] == rollout_id
    actions = {a["action"] for a in live.c.get("/v1/audit", params={"limit": 500}, headers=live.admin).json()}
    assert {
        "retrain.job.created",
        "retrain.job.trained",
        "retrain.job.failed",
        "retrain.rollout_proposed",
    } <= actions
    # reject another proposal from the page: nothing starts, the rejection is a step of the job and audited
    page.locator(f".job[data-job='{REJECT}'] button.reject").click()
    until(
        lambda: live.c.get(f"/v1/retrain/jobs/{REJECT}", headers=live.admin).json()["status"] == "rejected",
        "the rejection",
    )
    until_js(page, f"!document.querySelector(\".job[data-job='{REJECT}'] button.reject\")")
    rows = _rows(page, f".job[data-job='{REJECT}'] table.steps tbody")
    assert "region=eu" in rows[-2][3] and rows[-1][0] == "rollout rejected"
    assert rows[-1][3].startswith("rejected by operator:deployer")
    assert len(live.c.get("/v1/rollouts", headers=live.admin).json()) == 1
    rej = live.c.get("/v1/audit", params={"action": "retrain.rollout_rejected"}, headers=live.admin).json()
    assert [a["details"]["job_id"] for a in rej] == [REJECT]
    page.locator(f".job[data-job='{JOB}'] a.rollout-link").first.click()
    page.wait_for_selector("body[data-loaded='rollouts']", timeout=30_000)
    assert rollout_id in page.locator("#view").inner_text()
    assert errors == [], errors
    ctx.close()


def test_accuracy_card_per_release_class_and_region(browser, live):
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live.url}/dashboard?token={live.deployer}#retrain")
    page.wait_for_selector("body[data-loaded='retrain'] table.accuracy", timeout=30_000)
    rows = {r[0]: r for r in _rows(page, "table.accuracy tbody")}
    # all regions: 1.0.0 has 4 of 6 right, 1.1.0 1 of 1
    assert rows["digits@1.0.0"][1:4] == ["all", "6", "66.7%"] and rows["digits@1.1.0"][1:4] == [
        "all",
        "1",
        "100.0%",
    ]
    cls = {r[0]: r for r in _rows(page, "details.classes[data-release='digits@1.0.0'] table.classes tbody")}
    # class 3: predicted 3 times, 2 right (precision 2/3); 3 labelled 3, 2 found (recall 2/3)
    assert cls["3"][1:4] == ["3", "3", "66.7%"] and cls["3"][5] == "66.7%"
    assert page.locator("#acc-region option").all_inner_texts() == ["all regions", "eu", "us"]
    # one region: eu's 1.0.0 is 2 of 4, its ECE (0.1 + 0.8 + 0.3 + 0.6) / 4
    page.select_option("#acc-region", "eu")
    until_js(page, "document.querySelector('table.accuracy tbody td:nth-child(2)')?.innerText === 'eu'")
    rows = {r[0]: r for r in _rows(page, "table.accuracy tbody")}
    assert list(rows) == ["digits@1.0.0"]  # eu has no labels on 1.1.0
    assert rows["digits@1.0.0"][1:4] == ["eu", "4", "50.0%"] and rows["digits@1.0.0"][5] == "0.45"
    cls = {r[0]: r for r in _rows(page, "details.classes[data-release='digits@1.0.0'] table.classes tbody")}
    assert cls["3"][1:4] == ["2", "2", "50.0%"] and cls["8"][5] == "50.0%"
    # the same card on the review page, keeping the region picked
    page.click("#nav a[data-page='review']")
    page.wait_for_selector("body[data-loaded='review'] table.accuracy", timeout=30_000)
    assert page.locator("#acc-region").input_value() == "eu"
    assert errors == [], errors
    ctx.close()
