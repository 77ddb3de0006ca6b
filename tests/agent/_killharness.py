"""kill -9 trials: run the real agent as a subprocess, SIGKILL it at a random instant of an update,
restart it, and check the state. Shared by tests/agent/test_agent_kill.py and benchmarks/agent_bench.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRESS = [
    "idle",
    "assigned",
    "downloading",
    "downloaded",
    "staging",
    "staged",
    "health_checked",
    "activating",
    "watching",
    "committed",
]
KILL_STEPS = ["downloading", "downloaded", "staging", "staged", "health_checked", "activating", "watching"]


def read_journal(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / "journal.json").read_text())
    except (OSError, ValueError):
        return {}


def progress_of(state: Path, new_sha: str) -> str:
    j = read_journal(state)
    if j.get("committed") == new_sha:
        return "committed"
    if j.get("watch") and j["watch"].get("sha256") == new_sha:
        return "watching"
    p = j.get("pending")
    if p and p.get("sha256") == new_sha:
        return p.get("step", "assigned")
    return "idle"


def check_valid_active(state: Path, allowed: set[str]) -> str | None:
    """Return why the state is invalid, or None. Valid: `current` -> a verified version in ``allowed``
    whose archive and files match their hashes, and the journal agrees (or is mid-swap)."""
    from edgefleet.agent import Journal, ModelStore

    store = ModelStore(state)
    cur = store.current()
    if cur is None:
        return "current does not point at a verified version"
    if cur.sha256 not in allowed:
        return f"current points at unexpected {cur.sha256[:12]}"
    try:
        store.verify(cur.sha256, deep=True)
    except Exception as e:  # noqa: BLE001
        return f"active version fails verification: {e}"
    j = Journal(state / "journal.json").state
    if j.active != cur.sha256 and not (j.pending is not None and j.pending.step == "activating"):
        return f"journal says active {str(j.active)[:12]}, current is {cur.sha256[:12]}"
    return None


# A parent that has imported the agent's libraries once and forks a fresh agent process per start: the
# agent still runs as its own process (own pid, killed with a real SIGKILL), but trials skip the 1-3 s of
# imports a cold `python -m edgefleet.cli agent run` costs on a small machine.
_ZYGOTE = r"""
import json, os, sys
import numpy, onnxruntime, httpx, tuf.ngclient, fastapi, uvicorn
import edgefleet.cli, edgefleet.agent, edgefleet.agent._host, edgefleet.agent._health, edgefleet.bundle
import edgefleet.telemetry, edgefleet.power
out = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            os.setsid()
            fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 1)
            os.dup2(null, 0)
            os.environ.update(cmd["env"])
            code = 0
            try:
                from edgefleet.cli import main
                main(cmd["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
    elif cmd["op"] == "wait":
        flags = 0 if cmd.get("block", True) else os.WNOHANG
        try:
            p, status = os.waitpid(cmd["pid"], flags)
            out.write(json.dumps({"done": p != 0, "code": os.waitstatus_to_exitcode(status) if p else None}) + "\n")
        except ChildProcessError:
            out.write(json.dumps({"done": True, "code": None}) + "\n")
    out.flush()
"""


class Zygote:
    """Forks agent processes from a pre-imported parent (see the note above)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _ask(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> _Forked:
        return _Forked(self, self._ask({"op": "spawn", "argv": argv, "env": env, "log": str(log)})["pid"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


class _Forked:
    """The subset of ``subprocess.Popen`` the harness uses, for a process forked by the zygote."""

    def __init__(self, z: Zygote, pid: int) -> None:
        self.z, self.pid, self.returncode = z, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            r = self.z._ask({"op": "wait", "pid": self.pid, "block": False})
            if r["done"]:
                self.returncode = r["code"] if r["code"] is not None else -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


@dataclass
class KillHarness:
    """Runs trials against a stand-in server; ``template`` is an enrolled state dir with the old version."""

    work: Path
    template: Path
    old_sha: str
    new_sha: str
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    zygote: Zygote | None = None

    def spawn(self, state: Path, log: Path) -> Any:
        argv = ["agent", "run", "--state", str(state), "--no-progress"]
        if self.zygote is not None:
            return self.zygote.spawn(argv, {"EDGEFLEET_AGENT_STATE_DIR": str(state), **self.env}, log)
        env = {**os.environ, "EDGEFLEET_AGENT_STATE_DIR": str(state), **self.env}
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),
            start_new_session=True,
        )

    def _wait(self, state: Path, pred, timeout: float, proc: Any = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(progress_of(state, self.new_sha)):
                return True
            if proc is not None and proc.poll() is not None:
                return pred(progress_of(state, self.new_sha))
            time.sleep(0.003)
        return False

    def trial(
        self, i: int, rng: random.Random, *, mode: str | None = None, span_s: float = 3.0
    ) -> dict[str, Any]:
        state = self.work / f"trial-{i:04d}"
        shutil.rmtree(state, ignore_errors=True)
        shutil.copytree(self.template, state, symlinks=True)
        log = self.work / f"trial-{i:04d}.log"
        mode = mode or rng.choice(["step", "time"])
        target = rng.choice(KILL_STEPS)
        delay = rng.uniform(0, 0.05)
        t0 = time.monotonic()
        p = self.spawn(state, log)
        if mode == "step":
            self._wait(state, lambda s: PROGRESS.index(s) >= PROGRESS.index(target), self.timeout_s, p)
            time.sleep(delay)
        else:
            time.sleep(rng.uniform(0, span_s))
        at = progress_of(state, self.new_sha)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        killed_after = time.monotonic() - t0
        why = check_valid_active(state, {self.old_sha, self.new_sha})
        result: dict[str, Any] = {
            "trial": i,
            "mode": mode,
            "target": target if mode == "step" else None,
            "killed_at": at,
            "killed_after_s": round(killed_after, 3),
            "valid_after_kill": why is None,
            "error": why,
        }
        p2 = self.spawn(state, log)
        t1 = time.monotonic()
        done = self._wait(state, lambda s: s == "committed", self.timeout_s, p2)
        result["recovery_s"] = round(time.monotonic() - t1, 3)
        p2.send_signal(signal.SIGTERM)
        try:
            p2.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(p2.pid, signal.SIGKILL)
            p2.wait()
        why2 = check_valid_active(state, {self.new_sha})
        result["completed_on_restart"] = done and why2 is None
        if why2 and not result["error"]:
            result["error"] = f"after restart: {why2}"
        result["ok"] = result["valid_after_kill"] and result["completed_on_restart"]
        if result["ok"]:
            shutil.rmtree(state, ignore_errors=True)
            log.unlink(missing_ok=True)
        return result
