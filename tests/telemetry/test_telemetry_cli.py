"""``edgefleet telemetry`` commands on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.telemetry import Aggregator, AggregatorConfig, Outbox, OutboxConfig
from edgefleet.telemetry._shifts import inject_shift

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_predictor, digits_reference, digits_split):
    d = tmp_path_factory.mktemp("cli")
    (d / "reference.json").write_text(json.dumps(digits_reference))
    x = digits_split.x_test / 16.0
    rng = np.random.default_rng(3)

    def window(xs, region):
        agg = Aggregator(
            None,
            reference=digits_reference,
            config=AggregatorConfig(feature_window_s=0, resources=False, drift_on_close=False),
            tags={"region": region},
        )
        probs = digits_predictor.predict({"input": xs.astype(np.float32)})["probabilities"]
        agg.record({"input": xs}, {"probabilities": probs}, latency_ms=2.0)
        return agg.flush_window().to_dict()

    good = [window(x[i * 150 : (i + 1) * 150], "eu") for i in range(2)]
    bad = [window(inject_shift(x[:200], "noise", 0.3, rng=rng), "apac")]
    (d / "good.json").write_text(json.dumps(good))
    (d / "mixed.json").write_text(json.dumps({"windows": good + bad}))
    return d


def test_drift_command_json(files):
    r = runner.invoke(
        app,
        [
            "telemetry",
            "drift",
            str(files / "mixed.json"),
            "-r",
            str(files / "reference.json"),
            "--by",
            "region",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    by = {g["group"]["region"]: g for g in doc["groups"]}
    assert by["apac"]["drifted"] and not by["eu"]["drifted"]


def test_drift_command_table_and_fail_flag(files):
    r = runner.invoke(
        app, ["telemetry", "drift", str(files / "good.json"), "-r", str(files / "reference.json")]
    )
    assert r.exit_code == 0 and "no drift" in r.output
    r = runner.invoke(
        app,
        [
            "telemetry",
            "drift",
            str(files / "mixed.json"),
            "-r",
            str(files / "reference.json"),
            "--fail-on-drift",
        ],
    )
    assert r.exit_code == 2 and "DRIFTED" in r.output


def test_drift_command_rejects_bad_files(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"v": 1, "start": "yesterday"}]')
    r = runner.invoke(app, ["telemetry", "drift", str(bad), "-r", str(files / "reference.json")])
    assert r.exit_code != 0 and "window 0" in str(r.exception)
    r = runner.invoke(
        app, ["telemetry", "drift", str(tmp_path / "missing.json"), "-r", str(files / "reference.json")]
    )
    assert r.exit_code != 0


def test_merge_command(files, tmp_path):
    out = tmp_path / "merged.json"
    r = runner.invoke(app, ["telemetry", "merge", str(files / "mixed.json"), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["requests"] == 3 and json.loads(out.read_text())["windows"] == 3


def test_outbox_command(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite", OutboxConfig(max_bytes=2000)) as ob:
        for _ in range(5):
            ob.put("sample", b"x" * 500)
        ob.put("event", {"type": "rollback"})
    r = runner.invoke(app, ["telemetry", "outbox", str(tmp_path), "--json", "--peek", "2"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["problems"] == [] and doc["dropped"]["sample"]["evicted"]["items"] >= 2
    assert doc["next"][0]["kind"] == "event"
    r = runner.invoke(app, ["telemetry", "outbox", str(tmp_path)])
    assert r.exit_code == 0 and "consistent" in r.output and "sample" in r.output
    r = runner.invoke(app, ["telemetry", "outbox", str(tmp_path / "nowhere")])
    assert r.exit_code != 0
