"""``edgefleet bundle ...`` end to end in a subprocess, as a user runs it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundletools import rebuild
from PIL import Image

from edgefleet.bundle import Bundle, read_manifest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "bundle", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    r.stderr = " ".join(r.stderr.split())  # rich wraps long messages at the terminal width
    return r


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory, digits_mlp, digits_split):
    d = tmp_path_factory.mktemp("cli")
    np.save(d / "x.npy", digits_split.x_test[:100])
    (d / "pre.yaml").write_text("- op: scale\n  factor: 0.0625\n")
    (d / "labels.txt").write_text("\n".join(f"d{i}" for i in range(10)) + "\n")
    r = _run(
        "create",
        "--model",
        digits_mlp,
        "--name",
        "digits",
        "--version",
        "1.2.3",
        "--variant",
        "cpu-fp32",
        "--golden",
        d / "x.npy",
        "--golden-count",
        "10",
        "--preprocess",
        d / "pre.yaml",
        "--labels",
        d / "labels.txt",
        "-o",
        d / "b.tar",
    )
    assert r.returncode == 0, r.stderr
    assert "created" in r.stdout
    return d, d / "b.tar"


def test_create_inspect_verify(cli_bundle):
    d, archive = cli_bundle
    m = read_manifest(archive)
    assert m.key == "digits/1.2.3/cpu-fp32" and m.golden.count == 10
    assert m.postprocess.labels == [f"d{i}" for i in range(10)]
    with Bundle.open(archive) as b:
        assert b.reference["count"] == 100  # reference stats use all of --golden
    r = _run("inspect", archive, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == "1.2.3"
    r = _run("inspect", archive)
    assert r.returncode == 0 and "digits/1.2.3/cpu-fp32" in r.stdout and "scale" in r.stdout
    r = _run("verify", archive, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


def test_verify_fails_clearly(cli_bundle, digits_mlp_v2, tmp_path):
    _, archive = cli_bundle
    bad = rebuild(archive, tmp_path / "swap.tar", replace={"model.onnx": digits_mlp_v2.read_bytes()})
    r = _run("verify", bad)
    assert r.returncode == 1
    assert "error:" in r.stderr and "golden set differ" in r.stderr and "hint:" in r.stderr
    assert "Traceback" not in r.stderr
    trunc = tmp_path / "trunc.tar"
    trunc.write_bytes(archive.read_bytes()[:5000])
    r = _run("verify", trunc)
    assert r.returncode == 1 and "truncated or corrupted" in r.stderr and "Traceback" not in r.stderr


def test_diff_and_apply(cli_bundle, digits_mlp_v2, tmp_path):
    d, old = cli_bundle
    new = tmp_path / "new.tar"
    r = _run(
        "create",
        "--model",
        digits_mlp_v2,
        "--name",
        "digits",
        "--version",
        "1.2.4",
        "--variant",
        "cpu-fp32",
        "--golden",
        d / "x.npy",
        "--golden-count",
        "10",
        "--preprocess",
        d / "pre.yaml",
        "-o",
        new,
    )
    assert r.returncode == 0, r.stderr
    r = _run("diff", old, new, "-o", tmp_path / "p.delta", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["method"] == "zstd" and 0 < info["ratio"] < 1
    r = _run(
        "apply",
        old,
        tmp_path / "p.delta",
        "-o",
        tmp_path / "rebuilt.tar",
        "--expected-sha256",
        info["target_sha256"],
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rebuilt.tar").read_bytes() == new.read_bytes()
    r = _run("apply", new, tmp_path / "p.delta", "-o", tmp_path / "wrong.tar")
    assert r.returncode == 1 and "applies to base" in r.stderr
    assert not (tmp_path / "wrong.tar").exists()


def test_create_from_image_folder(digits_mlp, digits_split, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, row in enumerate(digits_split.x_test[:12]):
        buf = io.BytesIO()
        Image.fromarray((row.reshape(8, 8) * 15).astype(np.uint8)).save(buf, format="PNG")
        (imgs / f"{i:03d}.png").write_bytes(buf.getvalue())
    (tmp_path / "pre.json").write_text(
        json.dumps(
            [
                {"op": "decode_image", "mode": "L"},
                {"op": "to_float"},
                {"op": "scale", "factor": 1 / 240},
                {"op": "reshape", "shape": [64]},
            ]
        )
    )
    r = _run(
        "create",
        "--model",
        digits_mlp,
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--golden",
        imgs,
        "--preprocess",
        tmp_path / "pre.json",
        "-o",
        tmp_path / "img.tar",
    )
    assert r.returncode == 0, r.stderr
    assert _run("verify", tmp_path / "img.tar").returncode == 0


def test_create_bad_contract_fails_clearly(digits_mlp, digits_split, tmp_path):
    np.save(tmp_path / "x.npy", digits_split.x_test[:5])
    (tmp_path / "pre.json").write_text('[{"op": "blur"}]')
    r = _run(
        "create",
        "--model",
        digits_mlp,
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--golden",
        tmp_path / "x.npy",
        "--preprocess",
        tmp_path / "pre.json",
        "-o",
        tmp_path / "b.tar",
    )
    assert r.returncode == 1 and "unknown op 'blur'" in r.stderr and "known ops" in r.stderr
    assert not (tmp_path / "b.tar").exists()


def test_committed_manifest_schema_matches_export():
    from edgefleet.cli._bundle import schema_text

    committed = ROOT / "docs" / "manifest.schema.json"
    assert committed.is_file(), (
        "docs/manifest.schema.json is missing: run `edgefleet bundle schema -o docs/manifest.schema.json`"
    )
    assert committed.read_text() == schema_text(), (
        "docs/manifest.schema.json is stale: run `edgefleet bundle schema -o docs/manifest.schema.json`"
    )
