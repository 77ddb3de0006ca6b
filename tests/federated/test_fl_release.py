"""`edgefleet fl export --repo`: the federated model becomes a release of the base, optimized for each of
the base's variants with that variant's budget (the retraining job's code), bundled with the job's lineage
and signed into the repository.

The job folder is what a finished job leaves (spec, progress, final head, held-out set), written here
directly: the Flower side is tested in test_flower_job.py and end to end by the federated demo's test.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from clirun import run_cli
from edgefleet.federated import JobSpec, PrivacySettings, head_of_model

SCALE = [{"op": "scale", "factor": 1 / 16}]
BUDGETS = {"gateway": ("fp32", "size", 1.0), "sensor": ("dynamic-int8", "size", 2.0)}
FAST = {
    "RUNS": "5",
    "WARMUP_RUNS": "1",
    "THROUGHPUT_BATCHES": "[1]",
    "THROUGHPUT_RUNS": "2",
    "MEASURE_MEMORY": "false",
    "INTERLEAVE_RUNS": "3",
}


def _publish_base(root: Path, model: Path, data) -> None:
    """``digits 1.0.0`` as gateway (fp32, 1 point) and sensor (dynamic-int8, 2 points), scaled inputs."""
    from edgefleet.bundle import create_bundle
    from edgefleet.protocol import Budgets, Lineage
    from edgefleet.registry import KeyStore, Repository, init_keys

    keys = init_keys(root / "keys")
    Repository.init(root / "repository", keys)
    repo = Repository(root / "repository", KeyStore(root / "keys"))
    for variant, (opt, objective, drop) in BUDGETS.items():
        repo.publish(
            create_bundle(
                model,
                root / "bundles" / f"digits-1.0.0-{variant}.tar",
                name="digits",
                version="1.0.0",
                variant=variant,
                inputs_raw=data.x_test[:8],
                reference_raw=data.x_train,
                preprocess=SCALE,
                budgets=Budgets(latency_p95_ms=50.0),
                lineage=Lineage(
                    optimization={"variant": opt, "objective": objective, "max_drop": drop},
                    tags={"device_classes": variant},
                ),
            )
        )


def _finished_job(job_dir: Path, model: Path, data) -> None:
    """A finished DP job's folder: 3 rounds over 4 devices, ε after each, the head trained on features."""
    from edgefleet.federated._model_head import FeatureExtractor
    from edgefleet.federated._spec import EVAL_DATA, FINAL_HEAD, PROGRESS_FILE

    job_dir.mkdir(parents=True)
    spec = JobSpec(
        job_id="digits-fleet",
        rounds=3,
        clients_per_round=4,
        privacy=PrivacySettings(noise_multiplier=1.0, clipping_norm=1.0),
    )
    spec.save(job_dir)
    head, features = head_of_model(model)
    x, y = (data.x_train / 16.0).astype(np.float32), data.y_train
    final = head.train(FeatureExtractor(features)(x), y, epochs=2, lr=0.1)
    np.savez(job_dir / FINAL_HEAD, W=final.W, b=final.b)
    np.savez(job_dir / EVAL_DATA, x=(data.x_test / 16.0).astype(np.float32), y=data.y_test)
    events = [{"event": "started", "rounds": 3, "accuracy": 0.9}]
    for r, eps in enumerate((1.1, 1.7, 2.2), start=1):
        events.append(
            {"event": "round", "round": r, "selected": 4, "answered": 4, "aggregated": True, "epsilon": eps}
        )
    events.append({"event": "finished", "accuracy": 0.95, "participants": 4})
    (job_dir / PROGRESS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))


def _cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    return run_cli(capsys, argv)


@pytest.mark.slow
def test_the_federated_release_is_the_optimizers_choice_under_the_base_budget(
    tmp_path, digits_mlp, digits_split, monkeypatch, capsys
):
    from edgefleet.bundle import Bundle
    from edgefleet.registry import KeyStore, Repository

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _publish_base(tmp_path, digits_mlp, digits_split)
    _finished_job(tmp_path / "job", digits_mlp, digits_split)
    np.savez(tmp_path / "golden.npz", x=digits_split.x_test.astype(np.float32), y=digits_split.y_test)
    for k, v in FAST.items():  # the optimizer's short measurements
        monkeypatch.setenv(f"EDGEFLEET_OPTIMIZE_{k}", v)
    args = [
        "fl", "export", str(tmp_path / "job"), "--base-model", str(digits_mlp),
        "--out", str(tmp_path / "federated.onnx"), "--repo", str(tmp_path / "repository"),
        "--keys", str(tmp_path / "keys"), "--name", "digits", "--version", "1.1.0",
        "--golden-data", str(tmp_path / "golden.npz"), "--json",
    ]  # fmt: skip
    code, out, err = _cli(capsys, args)
    assert code == 0, err
    release = json.loads(out)["release"]
    assert (release["version"], release["parent_version"]) == ("1.1.0", "1.0.0")
    repo = Repository(tmp_path / "repository", KeyStore(tmp_path / "keys"))
    published = {b.variant: b for b in repo.list_versions("digits") if b.version == "1.1.0"}
    assert set(published) == set(BUDGETS) == {v["variant"] for v in release["variants"]}
    for v in release["variants"]:
        parent_variant, objective, max_drop = BUDGETS[v["variant"]]
        report = json.loads(Path(v["report"]).read_text())
        # the optimizer ran with the base variant's budget over the fp32 baseline and the base's choice ...
        assert report["budget"]["max_drop"] == max_drop and report["objective"] == objective
        assert sorted(c["name"] for c in report["variants"]) == sorted({"fp32", parent_variant})
        # ... and the signed release ships the variant it chose, with why the others lost
        pub = published[v["variant"]]
        assert pub.target_path == v["target"]
        with Bundle.open(repo.target_file(pub.target_path)) as b:
            m = b.manifest
            opt = m.lineage.optimization
            assert opt["variant"] == report["chosen"] == v["chosen"]
            assert (opt["objective"], opt["max_drop"], opt["parent_variant"]) == (
                objective,
                max_drop,
                parent_variant,
            )
            chosen_file = Path(v["report"]).parent / next(
                c["file"] for c in report["variants"] if c["name"] == report["chosen"]
            )
            assert b.model_path.read_bytes() == chosen_file.read_bytes()
            losers = [c for c in opt["candidates"] if c["variant"] != opt["variant"]]
            assert {c["variant"] for c in opt["candidates"]} == {"fp32", parent_variant}
            assert all(c["why"] for c in losers), losers
            # the job's lineage: job, rounds, ε, participants; the base's contracts; nothing naming a device
            tags = m.lineage.tags
            assert tags["federated_job"] == "digits-fleet" and tags["rounds"] == "3"
            assert tags["epsilon"] == "2.2" and tags["participants"] == "4"
            assert tags["parent_release"] == "digits@1.0.0" and tags["device_classes"] == v["variant"]
            assert set(tags) <= {
                "federated_job", "strategy", "rounds", "rounds_aggregated", "participants", "epsilon",
                "delta", "accuracy_base", "accuracy_final", "trained", "parent_release", "device_classes",
            }  # fmt: skip
            assert m.lineage.parent_version == "1.0.0" and m.budgets.latency_p95_ms == 50.0
            assert [s.model_dump(mode="json") for s in m.preprocess][0]["factor"] == pytest.approx(1 / 16)
    assert "sensor" in {v["variant"] for v in release["variants"] if v["chosen"] == "dynamic-int8"}


def test_fl_export_release_options_are_checked_without_a_traceback(tmp_path, capsys):
    base = [
        "fl",
        "export",
        str(tmp_path),
        "--base-model",
        str(tmp_path / "m.onnx"),
        "--out",
        str(tmp_path / "o"),
    ]
    for extra, message in (
        (["--repo", str(tmp_path), "--keys", str(tmp_path)], "--repo needs --name and --version"),
        (["--repo", str(tmp_path), "--name", "d", "--version", "1.1.0"], "--repo needs --keys"),
        (["--repo", str(tmp_path), "--bundle", str(tmp_path / "b.tar")], "not both"),
        (
            ["--repo", str(tmp_path), "--keys", str(tmp_path), "--name", "d", "--version", "1.1.0",
             "--device-classes", "gateway"],
            "come from the base release",
        ),
        (["--server", "https://127.0.0.1:1"], "--server needs --repo"),
        (
            ["--repo", str(tmp_path), "--keys", str(tmp_path), "--name", "d", "--version", "1.1.0",
             "--server", "https://127.0.0.1:1", "--policy", "later"],
            "unknown rollout policy",
        ),
        (
            ["--repo", str(tmp_path), "--keys", str(tmp_path), "--name", "d", "--version", "1.1.0",
             "--server", "https://127.0.0.1:1", "--waves", "10,lots"],
            "cannot read waves",
        ),
    ):  # fmt: skip
        code, _, err = _cli(capsys, base + extra)
        assert code == 1 and message in err and "Traceback" not in err, err
