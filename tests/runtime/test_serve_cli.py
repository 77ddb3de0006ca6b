"""``edgefleet serve``: a real process serving a bundle on a Unix socket, token file, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.cli import app


def _wait_for(path, proc, timeout=60.0):
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read().decode()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("serve did not create its socket")
        time.sleep(0.05)


def test_serve_a_bundle_on_a_unix_socket_with_a_token(digits_bundle, digits_split, tmp_path):
    sock, token_file = tmp_path / "rt.sock", tmp_path / "token"
    token_file.write_text("tok-123\n")
    token_file.chmod(0o600)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "serve",
            str(digits_bundle),
            "--uds",
            str(sock),
            "--token-file",
            str(token_file),
            "--max-batch-size",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(sock, proc)
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://rt", timeout=10
        ) as c:
            deadline = time.monotonic() + 60  # the socket exists a moment before uvicorn accepts
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "serve never answered /healthz"
                time.sleep(0.05)
            x = {"inputs": digits_split.x_test[:2].tolist()}
            assert c.post("/v1/predict", json=x).status_code == 401
            r = c.post("/v1/predict", json=x, headers={"Authorization": "Bearer tok-123"})
            assert r.status_code == 200 and len(r.json()["predictions"]) == 2
            assert r.json()["model"]["version"] == "1.0.0"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert not sock.exists()


def test_token_file_readable_by_others_is_refused(digits_bundle, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok")
    token_file.chmod(0o644)
    from edgefleet.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(digits_bundle), "--token-file", str(token_file), "--port", "0"])
    assert e.value.code == 1


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    from edgefleet.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path / "nope.tar"), "--port", "0"])
    assert e.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_the_options():
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0
    for opt in ("--uds", "--token-file", "--backup", "--cloud-url", "--max-batch-size"):
        assert opt in r.output


def test_environment_is_not_required(monkeypatch):
    # no EDGEFLEET_* variables: every setting has a default
    for k in list(os.environ):
        if k.startswith("EDGEFLEET_"):
            monkeypatch.delenv(k)
    from edgefleet.runtime import RuntimeConfig

    assert RuntimeConfig().api.host == "127.0.0.1"
