"""README's step-by-step tour, run as written from README.md's own text (ports moved to free ones)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tour_block() -> str:
    text = (ROOT / "README.md").read_text()
    at = text.index("Step by step, by hand")
    return text[at:].split("```bash", 1)[1].split("```", 1)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tour_block_is_the_documented_one():
    block = tour_block()
    for must in (
        "python -m edgefleet.examples",
        "edgefleet certs init",
        "--tls-cert",
        "agent enroll",
        "--ca",
    ):
        assert must in block


def test_readme_tour_runs_as_written(tmp_path):
    script = tour_block()
    for port in ("8700", "8080", "8081"):  # the only change: ports nobody else here is using
        script = re.sub(rf"\b{port}\b", str(_free_port()), script)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{venv_bin}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "tour.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the tour's background servers share this group: killed below
        )
        try:
            rc = proc.wait(timeout=600)
            assert rc == 0, log.read_text()[-6000:]
            # the enrolled agent installs the release the tour rolled out
            deadline = time.monotonic() + 300
            status: dict = {}
            while time.monotonic() < deadline:
                r = subprocess.run(
                    ["edgefleet", "agent", "status", "--state", "st/", "--json"],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                if r.returncode == 0:
                    status = json.loads(r.stdout)
                    if (status.get("active") or {}).get("version") == "1.0.0":
                        break
                time.sleep(1)
            assert (status.get("active") or {}).get("version") == "1.0.0", (status, log.read_text()[-4000:])
            assert (tmp_path / "st" / "device.pem").is_file()  # enrolled with its own key: mutual TLS
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
