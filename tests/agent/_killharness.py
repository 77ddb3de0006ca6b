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

PROGRESS = ["idle", "assigned", "downloading", "downloaded", "staging", "staged", "health_checked",
            "activating", "watching", "committed"]
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


@dataclass
class KillHarness:
    """Runs trials against a stand-in server; ``template`` is an enrolled state dir with the old version."""

    work: Path
    template: Path
    old_sha: str
    new_sha: str
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0

    def spawn(self, state: Path, log: Path) -> subprocess.Popen:
        env = {**os.environ, "EDGEFLEET_AGENT_STATE_DIR": str(state), **self.env}
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--state", str(state), "--no-progress"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), start_new_session=True)

    def _wait(self, state: Path, pred, timeout: float, proc: subprocess.Popen | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(progress_of(state, self.new_sha)):
                return True
            if proc is not None and proc.poll() is not None:
                return pred(progress_of(state, self.new_sha))
            time.sleep(0.003)
        return False

    def trial(self, i: int, rng: random.Random, *, mode: str | None = None, span_s: float = 3.0) -> dict[str, Any]:
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
        result: dict[str, Any] = {"trial": i, "mode": mode, "target": target if mode == "step" else None,
                                  "killed_at": at, "killed_after_s": round(killed_after, 3),
                                  "valid_after_kill": why is None, "error": why}
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
