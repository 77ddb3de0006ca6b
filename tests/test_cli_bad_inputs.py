"""A table of bad inputs to the CLI: each is one line of error (and a hint), exit 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

NO_SERVER = "http://127.0.0.1:9"  # discard port: nothing listens


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "EDGEFLEET_TOKEN": "ef_op_x" * 4},
    )


def _files(tmp_path):
    (tmp_path / "not-a-bundle.tar").write_bytes(b"this is not a tar file at all" * 10)
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "profile.yaml").write_text("cores: -3\nram_mb: lots\n")
    (tmp_path / "model.onnx").write_bytes(b"\x00garbage onnx")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")


CASES = {
    "bundle verify: not a tar": ["bundle", "verify", "not-a-bundle.tar"],
    "rollout create: a gate that is not a number": [
        "rollout",
        "create",
        "digits",
        "1.0.0",
        "--gate",
        "min_requests=lots",
        "--server",
        NO_SERVER,
    ],
    "retrain run: a gate that is not a number": [
        "retrain",
        "run",
        "--repo",
        "empty",
        "--keys",
        "empty",
        "--name",
        "digits",
        "--offline",
        "--snapshot",
        "empty",
        "--gate",
        "min_labelled=many",
    ],
    "bundle inspect: missing file": ["bundle", "inspect", "nope.tar"],
    "serve: not a model": ["serve", "model.onnx", "--port", "0"],
    "serve: off loopback in clear text": ["serve", "model.onnx", "--host", "0.0.0.0"],
    "keys init: threshold above key count": ["keys", "init", "k", "--root-keys", "2", "--threshold", "3"],
    "registry init: no keys": ["registry", "init", "repo", "--keys", "empty"],
    "publish: not a bundle": ["publish", "not-a-bundle.tar", "--repo", "empty", "--keys", "empty"],
    "certs issue: no CA": ["certs", "issue", "empty", "-o", "x"],
    "optimize: not a model": [
        "optimize",
        "model.onnx",
        "--calib",
        "bad.npz",
        "--eval",
        "bad.npz",
        "-o",
        "out",
    ],
    "optimize: bad profile": [
        "optimize",
        "model.onnx",
        "--calib",
        "bad.npz",
        "--eval",
        "bad.npz",
        "-o",
        "out",
        "--profile",
        "profile.yaml",
    ],
    "bench: bad profile": ["bench", "model.onnx", "--profile", "profile.yaml"],
    "devices list: server down": ["devices", "list", "--server", NO_SERVER],
    "devices tokens create: server down": ["devices", "tokens", "create", "--server", NO_SERVER],
    "rollout create: server down": ["rollout", "create", "digits", "1.0.0", "--server", NO_SERVER],
    "release register: bad version": ["release", "register", "digits", "not-semver", "--server", NO_SERVER],
    "agent enroll: short token, no server": [
        "agent",
        "enroll",
        "--server",
        NO_SERVER,
        "--token",
        "abc",
        "--root",
        "bad.yaml",
        "--state",
        "st",
    ],
    "agent rollback: not enrolled": ["agent", "rollback", "--state", "empty"],
}


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_bad_cli_input_is_one_clear_line(tmp_path, args):
    _files(tmp_path)
    r = _run(args, tmp_path)
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode == 1, (r.returncode, out)
    assert "error:" in r.stderr, out
