"""Bad input to `edgefleet agent ...` gives one `error:` line and a `hint:` line, exit 1, never a traceback.

Each case runs the real entry point in a subprocess (``python -m edgefleet.cli``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _standin import StandIn

DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def site(tmp_path_factory, repo_template):
    d = tmp_path_factory.mktemp("cli-errors")
    (d / "notroot.json").write_text("{}")
    (d / "afile").write_text("x")
    s = StandIn(repo_template / "repo").start()
    yield {"dir": d, "root": str(repo_template / "repo" / "metadata" / "1.root.json"), "up": s.url}
    s.stop()


def _enroll(server: str, token: str, root: str, state: str = "st", *extra: str) -> list[str]:
    return ["agent", "enroll", "--server", server, "--token", token, "--root", root, "--state", state, *extra]


CASES = {
    # --token abc against a server that is not running (the report in issue 11): pydantic said it
    "short-token-server-down": (lambda s: _enroll(DOWN, "abc", s["root"]), {}, "token"),
    "short-token-server-up": (lambda s: _enroll(s["up"], "abc", s["root"]), {}, "token"),
    "server-down": (lambda s: _enroll(DOWN, "enroll-token-xyz", s["root"]), {}, "not used"),
    "server-not-a-url": (lambda s: _enroll("not-a-url", "enroll-token-xyz", s["root"]), {}, "--server"),
    "unknown-token": (lambda s: _enroll(s["up"], "wrong-token-123", s["root"]), {}, ""),
    "root-missing": (lambda s: _enroll(DOWN, "enroll-token-xyz", "missing.json"), {}, "root.json"),
    "root-not-tuf": (lambda s: _enroll(DOWN, "enroll-token-xyz", "notroot.json"), {}, "root.json"),
    "tag-not-key-value": (
        lambda s: _enroll(DOWN, "enroll-token-xyz", s["root"], "st", "--tag", "x"),
        {},
        "=",
    ),
    "state-is-a-file": (lambda s: _enroll(DOWN, "enroll-token-xyz", s["root"], "afile"), {}, "--state"),
    "run-not-enrolled": (lambda s: ["agent", "run", "--state", "st", "--once"], {}, "enroll"),
    "run-port-out-of-range": (lambda s: ["agent", "run", "--state", "st", "--api-port", "70000"], {}, "port"),
    "status-state-is-a-file": (lambda s: ["agent", "status", "--state", "afile"], {}, "--state"),
    "status-bad-env": (
        lambda s: ["agent", "status", "--state", "st"],
        {"EDGEFLEET_AGENT_POLL_INTERVAL_S": "abc"},
        "EDGEFLEET_AGENT_",
    ),
    "rollback-not-enrolled": (lambda s: ["agent", "rollback", "--state", "st"], {}, "enroll"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_agent_cli_input_is_one_line_error_with_hint(site, case):
    args, env, hint_has = CASES[case]
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args(site)],
        cwd=site["dir"],
        env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    hints = [ln for ln in lines if ln.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, text
    assert hint_has in hints[0] + errors[0], text
    assert not (Path(site["dir"]) / "st" / "credentials.json").exists()
