"""Ground truth: feedback fuzzed (bad ids, wrong label types, oversized payloads: 4xx, nothing stored), labels
in batches with undo (audited), devices limited to their own samples, and the ``edgefleet samples`` commands
against a real server (list, label, Label Studio export and import, policies, accuracy, erasure)."""

from __future__ import annotations

import base64
import json

import pytest
from fleettools import LiveClient
from servertools import Clock, Harness, make_harness
from test_samples_store import png, sample, upload

from clirun import run_cli


@pytest.fixture
def h(tmp_path):
    client, clock = make_harness(tmp_path)
    with client:
        yield Harness(client, clock)


def _labels(h) -> dict[str, str | None]:
    return {s["request_id"]: s["label"] for s in h.c.get("/v1/samples", headers=h.admin).json()}


BAD_FEEDBACK = [
    {"request_id": "req-unknown-1", "label": "cat"},  # no such sample: 404
    {"request_id": "../../etc/passwd", "label": "cat"},
    {"request_id": "req-fb-0001", "label": 3},  # a number is not a class name
    {"request_id": "req-fb-0001", "label": ["cat"]},
    {"request_id": "req-fb-0001", "label": {"x": 1}},
    {"request_id": "req-fb-0001", "label": True},
    {"request_id": "req-fb-0001", "label": ""},
    {"request_id": "req-fb-0001", "label": "x" * 129},
    {"request_id": "req-fb-0001", "label": "bad\nlabel"},
    {"request_id": "req-fb-0001"},  # neither label nor outcome
    {"request_id": "req-fb-0001", "label": "cat", "extra": 1},
    {"request_id": "req-fb-0001", "outcome": {"blob": "x" * 5000}},  # outcome over 4 KiB
    {"request_id": 12345678, "label": "cat"},
    {"label": "cat"},
    [],
    "cat",
]


def test_feedback_fuzz_refuses_and_stores_nothing(h):
    dev = h.enroll()
    upload(h, dev, [sample("req-fb-0001"), sample("req-fb-0002")])
    dep = h.token("deployer")
    for body in BAD_FEEDBACK:
        r = h.c.post("/v1/feedback", json=body, headers=dep)
        assert 400 <= r.status_code < 500, (body, r.status_code)
        assert r.json()["message"], body
    big = {"request_id": "req-fb-0001", "label": "cat", "pad": "x" * (300 * 1024)}
    assert h.c.post("/v1/feedback", json=big, headers=dep).status_code == 413
    r = h.c.post("/v1/feedback", content=b"{not json", headers=dep | {"content-type": "application/json"})
    assert r.status_code == 422
    assert h.c.post("/v1/feedback", json={"request_id": "req-fb-0001", "label": "cat"}).status_code == 401
    viewer = h.token("viewer")
    assert (
        h.c.post(
            "/v1/feedback", json={"request_id": "req-fb-0001", "label": "cat"}, headers=viewer
        ).status_code
        == 403
    )
    assert _labels(h) == {"req-fb-0001": None, "req-fb-0002": None}
    assert h.c.get("/v1/audit", params={"action": "samples.label"}, headers=h.admin).json() == []
    # and the good one works
    r = h.c.post(
        "/v1/feedback", json={"request_id": "req-fb-0001", "label": "cat", "outcome": 0.5}, headers=dep
    )
    assert r.status_code == 200 and r.json()["label"] == "cat" and r.json()["outcome"]["value"] == 0.5


def test_devices_give_feedback_on_their_own_samples_only(h):
    a, b = h.enroll(), h.enroll()
    upload(h, a, [sample("req-dev-a001")])
    r = h.c.post(
        f"/v1/devices/{b['device_id']}/feedback",
        json={"request_id": "req-dev-a001", "label": "7"},
        headers=b["headers"],
    )
    assert r.status_code == 404
    r = h.c.post(
        f"/v1/devices/{a['device_id']}/feedback",
        json={"request_id": "req-dev-a001", "label": "7"},
        headers=a["headers"],
    )
    assert r.status_code == 200 and r.json()["label_source"] == "device"
    (entry,) = h.c.get("/v1/audit", params={"action": "samples.label"}, headers=h.admin).json()
    assert entry["actor"] == f"device:{a['device_id']}" and entry["details"]["new"] == "7"


def test_batch_labels_undo_and_audit(h):
    dev = h.enroll()
    upload(h, dev, [sample(f"req-batch-{i:03d}") for i in range(4)])
    dep = h.token("deployer")
    ids = ["req-batch-000", "req-batch-001", "req-batch-002"]
    assert (
        h.c.post("/v1/samples/labels", json={"request_ids": ids, "label": "cat"}, headers=dep).json()[
            "labelled"
        ]
        == 3
    )
    # one unknown id: nothing changes
    r = h.c.post(
        "/v1/samples/labels",
        json={"request_ids": ["req-batch-003", "req-nope-000"], "label": "dog"},
        headers=dep,
    )
    assert r.status_code == 404 and _labels(h)["req-batch-003"] is None
    # undo: the label cleared again
    h.c.post("/v1/samples/labels", json={"request_ids": ["req-batch-002"], "label": None}, headers=dep)
    assert _labels(h) == {
        "req-batch-000": "cat",
        "req-batch-001": "cat",
        "req-batch-002": None,
        "req-batch-003": None,
    }
    trail = [
        (e["details"]["request_id"], e["details"]["old"], e["details"]["new"])
        for e in h.c.get("/v1/audit", params={"action": "samples.label"}, headers=h.admin).json()
    ]
    assert trail[-1] == ("req-batch-002", "cat", None) and len(trail) == 4


def _cli(capsys, *args):
    return run_cli(capsys, list(args))


def test_samples_commands_against_a_real_server(tmp_path, capsys):
    from edgefleet.server import ServerConfig, start_server

    cfg = ServerConfig(data_dir=tmp_path / "server", keys_dir=tmp_path / "no-keys", engine_enabled=False)
    with start_server(cfg, clock=Clock()) as srv, LiveClient(srv.url, srv.app) as client:
        h = Harness(client, Clock())
        dev = h.enroll(tags={"region": "eu"})
        img = base64.b64encode(png()).decode()
        upload(
            h,
            dev,
            [
                sample("req-cli-0001", privacy="raw", input_b64=img, predicted="3"),
                sample("req-cli-0002", predicted="5"),
            ],
        )
        base = ["--server", srv.url, "--token", h.admin_token]
        code, out, _ = _cli(capsys, "samples", "list", *base, "--json")
        assert code == 0 and [s["request_id"] for s in json.loads(out)] == ["req-cli-0002", "req-cli-0001"]
        code, out, _ = _cli(capsys, "samples", "list", *base)
        assert code == 0 and "req-cli-0001" in out
        code, out, _ = _cli(capsys, "samples", "label", "3", "req-cli-0002", *base, "--json")
        assert code == 0 and json.loads(out)["labelled"] == 1
        # Label Studio round trip: export, a reviewer labels one task there, import
        ls = tmp_path / "tasks.json"
        code, out, _ = _cli(capsys, "samples", "export", "--format", "label-studio", "-o", str(ls), *base)
        assert code == 0, out
        tasks = json.loads(ls.read_text())
        by_id = {t["data"]["request_id"]: t for t in tasks}
        assert by_id["req-cli-0001"]["data"]["image"].startswith("data:image/png;base64,")
        assert by_id["req-cli-0001"]["predictions"][0]["result"][0]["value"]["choices"] == ["3"]
        assert by_id["req-cli-0002"]["annotations"][0]["result"][0]["value"]["choices"] == ["3"]
        by_id["req-cli-0001"]["annotations"] = [
            {
                "was_cancelled": False,
                "result": [
                    {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["8"]}}
                ],
            }
        ]
        ls.write_text(json.dumps(list(by_id.values())))
        code, out, _ = _cli(capsys, "samples", "import-labels", str(ls), *base, "--json")
        assert code == 0 and json.loads(out) == {"labelled": 1, "unchanged": 1, "unlabelled": 0, "unknown": 0}
        code, out, _ = _cli(capsys, "samples", "accuracy", "--by", "release,region", *base, "--json")
        (acc,) = json.loads(out)
        assert (
            acc["region"] == "eu" and acc["labelled"] == 2 and acc["correct"] == 0
        )  # 3->8 wrong, 5->3 wrong
        # bad files: a clear error, no traceback
        (tmp_path / "bad.json").write_text("{nope")
        code, _, err = _cli(capsys, "samples", "import-labels", str(tmp_path / "bad.json"), *base)
        assert code == 1 and "cannot read" in err and "Traceback" not in err
        (tmp_path / "obj.json").write_text("{}")
        code, _, err = _cli(capsys, "samples", "import-labels", str(tmp_path / "obj.json"), *base)
        assert code == 1 and "not a list" in err
        code, out, _ = _cli(
            capsys,
            "samples",
            "policy",
            "set",
            "eu",
            "--selector",
            "region=eu",
            "--rate",
            "0.03",
            *base,
            "--json",
        )
        assert code == 0 and json.loads(out)["policy"]["rate"] == 0.03
        code, _, err = _cli(capsys, "samples", "policy", "set", "eu", "--rate", "0.5", *base)
        assert code == 1 and "rate" in err
        code, _, err = _cli(capsys, "samples", "delete-device", dev["device_id"], *base)
        assert code == 1 and "--yes" in err
        code, out, _ = _cli(capsys, "samples", "delete-device", dev["device_id"], "--yes", *base, "--json")
        assert code == 0 and json.loads(out)["samples"] == 2
        code, out, _ = _cli(capsys, "samples", "list", *base, "--json")
        assert json.loads(out) == []
