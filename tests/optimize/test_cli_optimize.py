"""``edgefleet optimize`` / ``edgefleet bench`` as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FAST_ENV = {
    "EDGEFLEET_OPTIMIZE_RUNS": "10",
    "EDGEFLEET_OPTIMIZE_WARMUP_RUNS": "2",
    "EDGEFLEET_OPTIMIZE_THROUGHPUT_RUNS": "2",
    "EDGEFLEET_OPTIMIZE_INTERLEAVE_ROUNDS": "3",
    "EDGEFLEET_OPTIMIZE_INTERLEAVE_RUNS": "3",
    "EDGEFLEET_OPTIMIZE_INTERLEAVE_ROUND_S": "0.002",
    "EDGEFLEET_OPTIMIZE_MAX_EVAL_SAMPLES": "200",
}


def _run(*args, cwd=None):
    env = {**os.environ, **FAST_ENV}
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


@pytest.fixture
def profile_yaml(tmp_path):
    p = tmp_path / "profile.yaml"
    p.write_text("name: cli-test\ncores: 1\n")
    return p


def test_optimize_cli_writes_outputs_and_json(tmp_path, digits_mlp, mlp_npz, profile_yaml):
    calib, ev = mlp_npz
    out = tmp_path / "out"
    r = _run(
        "optimize",
        digits_mlp,
        "--calib",
        calib,
        "--eval",
        ev,
        "--max-drop",
        "1",
        "--profile",
        profile_yaml,
        "-o",
        out,
        "--variants",
        "fp32,dynamic-int8",
        "--no-memory",
        "--json",
        "--bundle",
        "--name",
        "digits",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)  # stdout holds only the JSON (progress goes to stderr)
    assert rep["chosen"] in ("fp32", "dynamic-int8") and rep["profile"]["name"] == "cli-test"
    tar = f"digits-0.1.0-cli-test-{rep['chosen']}.tar"
    assert rep["bundle"] == tar
    assert {p.name for p in out.iterdir()} == {"model.onnx", "report.json", "report.md", "plot.png", tar}


def test_optimize_cli_budget_not_met_exits_nonzero(tmp_path, digits_mlp, mlp_npz):
    calib, ev = mlp_npz
    out = tmp_path / "out"
    r = _run(
        "optimize",
        digits_mlp,
        "--calib",
        calib,
        "--eval",
        ev,
        "-o",
        out,
        "--variants",
        "fp32",
        "--add-variant",
        "static-int8-pt-minmax-qop",
        "--min-accuracy",
        "100.5",
        "--no-memory",
    )
    assert r.returncode == 1
    err = " ".join(r.stderr.split())  # rich wraps long lines
    assert "error:" in err and "no variant meets the budget" in err and "hint:" in err
    assert "Traceback" not in err
    # the table of every variant is still printed, with the extra variant asked for by name
    assert "static-int8-pt-minmax-qop" in r.stdout and "chosen: none" in r.stdout
    assert "qoperator_on_x86" in r.stdout or os.uname().machine.startswith(("arm", "aarch"))
    assert json.loads((out / "report.json").read_text())["chosen"] is None
    assert not (out / "model.onnx").exists()


def test_optimize_cli_bad_input_leaves_nothing(tmp_path, digits_mlp, mlp_npz):
    _, ev = mlp_npz
    bad = tmp_path / "calib.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    out = tmp_path / "out"
    r = _run("optimize", digits_mlp, "--calib", bad, "--eval", ev, "-o", out)
    err = " ".join(r.stderr.split())
    assert r.returncode == 1 and "cannot be read as .npz" in err and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_optimize_cli_bad_profile(tmp_path, digits_mlp, mlp_npz):
    calib, ev = mlp_npz
    p = tmp_path / "p.yaml"
    p.write_text("cores: lots\n")
    r = _run("optimize", digits_mlp, "--calib", calib, "--eval", ev, "-o", tmp_path / "o", "--profile", p)
    err = " ".join(r.stderr.split())
    assert r.returncode == 1 and "device profile" in err and "cores" in err


def test_bench_cli(tmp_path, digits_mlp, profile_yaml):
    r = _run(
        "bench",
        digits_mlp,
        "--profile",
        profile_yaml,
        "--runs",
        "10",
        "--batch",
        "1,4",
        "--no-memory",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["threads"] == 1 and res["latency"]["runs"] == 10
    assert [t["batch"] for t in res["throughput"]] == [1, 4]
    r2 = _run("bench", digits_mlp, "--runs", "10", "--no-memory")
    assert r2.returncode == 0 and "p95 / p99" in r2.stdout
    r3 = _run("bench", digits_mlp, "--dim", "oops")
    assert r3.returncode == 1 and "name=N" in " ".join(r3.stderr.split())
