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


def _serve_workers(source, *extra):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "serve",
            str(source),
            "--port",
            "0",
            "--workers",
            "2",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()  # "serving NAME on URL ...": printed once the model loaded, port chosen
    assert " on http://127.0.0.1:" in line, line + proc.stderr.read()
    url = line.split(" on ")[1].split()[0]
    return proc, url


def _listeners(proc, port):
    import psutil

    out = []
    for child in psutil.Process(proc.pid).children():
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            out.append(child)
    return out


def test_workers_share_one_port_and_stop_together(digits_bundle, digits_split):
    import psutil

    proc, url = _serve_workers(digits_bundle)
    port = int(url.rsplit(":", 1)[1])
    try:
        deadline = time.monotonic() + 90
        while len(_listeners(proc, port)) < 2:  # each worker loads its model, then listens
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "two workers never listened on the port"
            time.sleep(0.1)
        workers = _listeners(proc, port)
        x = {"inputs": digits_split.x_test[:1].tolist()}
        want = None
        for _ in range(20):  # a new connection each: the kernel spreads them over the workers
            r = httpx.post(f"{url}/v1/predict", json=x, timeout=10)
            assert r.status_code == 200
            got = r.json()["predictions"][0]["class"]
            assert want is None or got == want  # every copy of the model gives the same answer
            want = got
        # one worker dies: the supervisor stops the other and exits non-zero (systemd restarts it whole)
        workers[0].kill()
        proc.wait(30)
        assert proc.returncode == 1
        assert not workers[1].is_running() or workers[1].status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()


def test_workers_stop_cleanly_on_sigterm(digits_bundle):
    proc, url = _serve_workers(digits_bundle)
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 90
    while len(_listeners(proc, port)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    workers = _listeners(proc, port)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    assert not any(w.is_running() and w.status() != "zombie" for w in workers)


def test_workers_with_a_unix_socket_is_a_clear_error(digits_bundle, tmp_path, capsys):
    from edgefleet.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(digits_bundle), "--uds", str(tmp_path / "s.sock"), "--workers", "2"])
    assert e.value.code == 1
    assert "--workers serves a TCP port" in capsys.readouterr().err
