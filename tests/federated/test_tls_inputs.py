"""Flower transport-security settings: clear errors before any process starts, node keys Flower accepts."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edgefleet.errors import InputError
from edgefleet.federated._security import check_node_public_key, node_key, superlink_hosts


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "fl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )


def test_clear_text_and_half_given_tls_are_refused_before_anything_starts(tmp_path):
    from typer.testing import CliRunner

    from edgefleet.cli import app
    from edgefleet.errors import EdgefleetError

    np.savez(tmp_path / "base.npz", W=np.zeros((4, 2), np.float32), b=np.zeros(2, np.float32))
    (tmp_path / "not-a-key.pub").write_text("ssh-ed25519 hello\n")
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "d.npz", x=np.ones((2, 4), np.float32), y=np.array([0, 1]))
    start = ["start", str(tmp_path / "job"), "--job-id", "a", "--base-head", str(tmp_path / "base.npz")]
    # as a user sees it: one error line and a hint
    done = _cli(*start, "--host", "0.0.0.0")
    assert done.returncode == 1 and "would listen on 0.0.0.0 in clear text" in done.stderr, done.stderr[-800:]
    assert "hint: give --tls-ca-dir" in done.stderr and "Traceback" not in done.stderr
    cases = [
        (start + ["--ssl-certfile", str(tmp_path / "base.npz")], "go together"),
        (start + ["--node-key", str(tmp_path / "not-a-key.pub")], "is not an OpenSSH public key"),
        (start + ["--server", "https://cp.example:8443"], "the job's SuperLink must too"),
        (start + ["--tls-ca-dir", str(tmp_path / "no-ca")], "no CA in"),
        (
            ["join", "127.0.0.1:9092", "--data-dir", str(tmp_path / "data")],
            "accepts registered SuperNodes only",
        ),
    ]
    for argv, words in cases:
        result = CliRunner().invoke(app, ["fl", *argv])
        assert isinstance(result.exception, EdgefleetError), (argv, result.output, result.exception)
        assert words in result.exception.message and result.exception.hint, (argv, result.exception.message)
    assert not (tmp_path / "job").exists()


def test_node_keys_are_private_stable_and_on_a_nist_curve(tmp_path):
    public = node_key(tmp_path / "k" / "node.key")
    assert public.startswith("ecdsa-sha2-nistp256 ")
    assert (tmp_path / "k" / "node.key").stat().st_mode & 0o077 == 0
    assert node_key(tmp_path / "k" / "node.key") == public  # kept, not remade
    assert check_node_public_key(public + " comment") == public
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH)
    )
    with pytest.raises(InputError, match="NIST"):
        check_node_public_key(other.decode())
    with pytest.raises(InputError):
        check_node_public_key("ecdsa-sha2-nistp256 AAAA\nssh-rsa x")
    assert superlink_hosts("0.0.0.0", "fl.example.org:9092") == ["fl.example.org", "127.0.0.1", "localhost"]
    assert superlink_hosts("10.0.0.5") == ["10.0.0.5", "127.0.0.1", "localhost"]
