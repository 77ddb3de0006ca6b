"""Control from outside the loop: the server's commands, local requests (``edgefleet agent rollback``
while the agent runs), and the state directory's view (``edgefleet agent status``)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write
from edgefleet.agent._core import AgentCore
from edgefleet.agent._enroll import Credentials
from edgefleet.agent._journal import Journal
from edgefleet.agent._store import ModelStore
from edgefleet.errors import AgentError, ConfigError, EdgefleetError, NotFoundError

__all__ = ["LocalControl", "agent_status", "request_rollback"]

log = logging.getLogger(__name__)


class LocalControl(AgentCore):
    """Carry out the server's commands and local requests."""

    def _command(self, cmd: str) -> None:
        log.info("command from server: %s", cmd)
        if cmd == "rollback" or cmd.startswith("rollback:"):
            version = cmd.split(":", 1)[1] if ":" in cmd else None
            try:
                self.rollback(version, reason=f"server command {cmd!r}")
            except EdgefleetError as e:
                self._error(f"command {cmd!r} failed: {e}")
        elif cmd in ("poll", "refresh"):
            self.nudge_event.set()
        else:
            self._error(f"unknown command {cmd!r} ignored")

    def _process_requests(self) -> None:
        """Carry out local requests (``edgefleet agent rollback`` while this agent runs)."""
        d = self.state_dir / "requests"
        if not d.is_dir():
            return
        for f in sorted(d.glob("*.json")):
            try:
                req = json.loads(f.read_text())
                if req.get("command") != "rollback":
                    raise AgentError(f"unknown local request {req.get('command')!r}")
                m = self.rollback(req.get("version"), reason="operator command (edgefleet agent rollback)")
                result: dict[str, Any] = {
                    "rolled_back_to": m.version,
                    "sha256": m.sha256,
                    "via": "running agent",
                }
            except EdgefleetError as e:
                result = {"error": e.to_dict()}
            except (OSError, ValueError) as e:
                result = {"error": {"error": "agent", "message": f"bad request file {f.name}: {e}"}}
            atomic_write(f.with_suffix(".done"), json.dumps(result).encode(), mode=0o600)
            f.unlink(missing_ok=True)


def agent_status(state_dir: Path) -> dict[str, Any]:
    """The state directory's view (no network, no lock): versions, journal, last errors."""
    state_dir = Path(state_dir)
    store = ModelStore(state_dir) if (state_dir / "models").exists() else None
    journal = Journal(state_dir / "journal.json") if (state_dir / "journal.json").exists() else None
    st = journal.state if journal else None
    cur = store.current() if store else None
    try:
        creds = Credentials.load(state_dir)
        device = {
            "device_id": creds.device_id,
            "server_url": creds.server_url,
            "repository_url": creds.repository_url,
        }
    except ConfigError:
        device = None
    return {
        "state_dir": str(state_dir),
        "enrolled": device is not None,
        "device": device,
        "active": cur.to_dict() if cur else None,
        "kept": [
            m.to_dict() | {"current": cur is not None and m.sha256 == cur.sha256}
            for m in (store.list() if store else [])
        ],
        "pending": st.pending.model_dump(mode="json") if st and st.pending else None,
        "watch": st.watch.model_dump(mode="json", exclude={"assignment"}) if st and st.watch else None,
        "committed": st.committed if st else None,
        "failed": dict(st.failed) if st else {},
        "last_error": st.last_error if st else None,
        "history": st.history[-20:] if st else [],
        "downloads": sorted(f"{f.name} ({f.stat().st_size} B)" for f in (state_dir / "downloads").glob("*"))
        if (state_dir / "downloads").exists()
        else [],
        "journal_seq": st.seq if st else 0,
    }


def request_rollback(state_dir: Path, version: str | None, *, wait_s: float = 30.0) -> dict[str, Any]:
    """Ask the agent running on ``state_dir`` to roll back, and wait for its answer.

    Raises:
        AgentError: the agent refused (its error is passed on) or did not answer in time.
    """
    d = Path(state_dir) / "requests"
    d.mkdir(exist_ok=True, mode=0o700)
    rid = uuid.uuid4().hex
    atomic_write(
        d / f"{rid}.json", json.dumps({"command": "rollback", "version": version}).encode(), mode=0o600
    )
    done = d / f"{rid}.done"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if done.exists():
            result = json.loads(done.read_text())
            done.unlink(missing_ok=True)
            if "error" in result:
                err = result["error"]
                raise (NotFoundError if err.get("error") == "not_found" else AgentError)(
                    err.get("message", "rollback failed"), hint=err.get("hint")
                )
            return result
        time.sleep(0.05)
    (d / f"{rid}.json").unlink(missing_ok=True)
    raise AgentError(
        f"the agent running on {state_dir} did not answer within {wait_s:.0f}s",
        hint="check it is healthy (`systemctl status edgefleet-agent`) and retry",
    )
