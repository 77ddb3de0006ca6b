"""Flower's processes (SuperLink, SuperNode, the ``flwr`` CLI) as managed children.

Each runs in its own session so stopping it also stops what it spawned (Flower's SuperExec and the
per-message ``flwr-serverapp`` / ``flwr-clientapp`` processes). ``FLWR_HOME`` is private to the job or the
node, so nothing lands in the user's ``~/.flwr``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgefleet.errors import ConfigError

STOP_GRACE_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_command(name: str) -> str:
    """The path of one of Flower's console scripts, beside this Python first."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ConfigError(
            f"Flower's {name} command is not installed",
            hint="pip install 'edgefleet[federated]' (Flower) on this host",
        )
    return found


def flwr_json(args: list[str], *, env: dict[str, str], timeout: float) -> tuple[dict, str]:
    """Run ``flwr ARGS --format json``; (its JSON answer, or {} when it printed none; its output for
    an error message). ``subprocess.TimeoutExpired`` past ``timeout`` seconds."""
    import json
    import subprocess

    done = subprocess.run(
        [flower_command("flwr"), *args, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        answer = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        answer = {}
    return (answer if isinstance(answer, dict) else {}), done.stdout + done.stderr


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of Flower's processes: a private ``FLWR_HOME``, and this Python's scripts first on
    ``PATH`` (the SuperLink and SuperNode start ``flower-superexec`` and ``flwr-*`` by name, so an edgefleet
    run from a virtual environment that is not activated must still find them)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if scripts not in path.split(os.pathsep):
        path = scripts + (os.pathsep + path if path else "")
    return {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home), "PYTHONUNBUFFERED": "1"}


class ManagedProcess:
    """A child process in its own session, with its output in ``log_path``."""

    def __init__(self, args: list[str], *, env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the whole session, SIGKILL after ``grace_s`` (Flower's SuperLink can take a while).
        Descendants that left the session (Flower's SuperExec starts ``flwr-serverapp`` in its own) are
        stopped too."""
        family = self._descendants()
        if self._proc.poll() is not None:
            self._kill_group(signal.SIGKILL)
            self._kill_all(family)
            return
        self._kill_group(signal.SIGTERM)
        for p in family:
            with contextlib.suppress(Exception):
                p.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(grace_s)
        self._kill_group(signal.SIGKILL)
        self._kill_all(family)
        self._proc.wait()

    def kill(self) -> None:
        """Abrupt end, like a device losing power: SIGKILL to the session and its descendants."""
        family = self._descendants()
        self._kill_group(signal.SIGKILL)
        self._kill_all(family)
        self._proc.wait()

    def _descendants(self) -> list:
        try:
            import psutil

            return psutil.Process(self._proc.pid).children(recursive=True)
        except Exception:  # noqa: BLE001 - gone already, or psutil missing: the session kill still runs
            return []

    @staticmethod
    def _kill_all(family: list) -> None:
        for p in family:
            with contextlib.suppress(Exception):
                p.kill()

    def _kill_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


def wait_for_port(host: str, port: int, *, timeout_s: float, proc: ManagedProcess) -> None:
    """Wait until ``host:port`` accepts connections; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ConfigError(
                f"{Path(proc.args[0]).name} exited while starting: {proc.log_tail(600)}",
                hint=f"see {proc.log_path}",
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise ConfigError(f"{Path(proc.args[0]).name} did not listen on {host}:{port} within {timeout_s:.0f} s")
