"""Child processes of ``edgefleet demo``: each in its own process group, every one stopped at the end."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import AgentError, ServerError

__all__ = ["Child", "Supervisor", "child_env", "lock_held"]

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """Starts children in their own process groups and stops every one of them (no orphans)."""

    def __init__(self, env: dict[str, str], stop_timeout_s: float) -> None:
        self.env = env
        self.children: list[Child] = []
        self.stop_timeout_s = stop_timeout_s

    def spawn(
        self, name: str, argv: list[str], log_path: Path, extra_env: dict[str, str] | None = None
    ) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env={**self.env, **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own group: Ctrl-C reaches the demo, which stops them in order
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        log.info("started %s (pid %d)", name, proc.pid)
        return child

    def check(self, names: set[str] | None = None) -> None:
        for c in self.children:
            if (names is None or c.name in names) and not c.alive():
                kind = ServerError if c.name == "server" else AgentError
                raise kind(
                    f"{c.name} (pid {c.proc.pid}) exited with code {c.proc.returncode}:\n{c.log_tail()}",
                    hint=f"see its log: {c.log_path}",
                )

    def stop(self, children: list[Child] | None = None) -> None:
        todo = [c for c in (children if children is not None else self.children) if c.proc.returncode is None]
        for c in todo:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for c in todo:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", c.name, self.stop_timeout_s)
        for c in todo:
            # SIGKILL the whole group: also anything the child started and left behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(5)

    def stop_all(self) -> None:
        agents = [c for c in self.children if c.name != "server"]
        self.stop(agents)  # agents first: they keep polling a server that is gone otherwise
        self.stop([c for c in self.children if c.name == "server"])


def child_env() -> dict[str, str]:
    """The environment for children: ours minus settings that would leave the embedded defaults."""
    drop = ("EDGEFLEET_SERVER_", "EDGEFLEET_AGENT_", "EDGEFLEET_TOKEN", "EDGEFLEET_ENROLL_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def lock_held(path: Path) -> bool:
    """Does a running process hold the agent's lock file (flock)?"""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
