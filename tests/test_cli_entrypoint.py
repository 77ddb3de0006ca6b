import subprocess
import sys


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_groups():
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_unknown_command_fails_nonzero():
    r = _run("no-such-command")
    assert r.returncode != 0
