"""The agent's journal: one JSON file rewritten atomically (tmp + fsync + rename) before every step.

A kill -9 leaves either the old or the new journal on disk, never a torn one; the agent replays it at
start to finish or undo the interrupted step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgefleet._fs import atomic_write
from edgefleet.protocol import Assignment

__all__ = ["Journal", "JournalState", "PendingUpdate", "WatchState"]

log = logging.getLogger(__name__)

JOURNAL_SCHEMA = 1
MAX_JOURNAL_BYTES = 4 << 20

# Steps of one update, in order. ``watching`` lives in ``JournalState.watch`` once activation is done.
STEPS = ("assigned", "downloading", "downloaded", "staging", "staged", "health_checked", "activating")


class _J(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PendingUpdate(_J):
    """An update in flight: the director's assignment and how far the agent got."""

    assignment: Assignment
    sha256: str
    step: str = "assigned"
    attempts: int = Field(0, description="restarts seen inside the current step")
    via: str | None = Field(None, description="'delta' or 'full' once the archive is complete")
    bytes_downloaded: int = 0
    started_at: float = Field(default_factory=time.time)
    previous: str | None = Field(None, description="sha256 active when the update started")


class WatchState(_J):
    """An activated but not yet committed version, watched against the one before it."""

    sha256: str
    previous: str | None
    started_at: float = Field(default_factory=time.time)
    boots: list[float] = Field(default_factory=list, description="agent starts while watching (crash loop)")
    baseline: dict[str, float | None] = Field(default_factory=dict)
    assignment: Assignment | None = None
    looks: int = Field(0, description="paired latency looks taken in this window (this run)")
    last_ratio: float | None = Field(None, description="latency ratio new/previous of the last look")


class JournalState(_J):
    schema_version: int = JOURNAL_SCHEMA
    seq: int = 0
    active: str | None = Field(None, description="sha256 of the version `current` should point at")
    committed: str | None = Field(None, description="last version that passed its watch window")
    pending: PendingUpdate | None = None
    watch: WatchState | None = None
    failed: dict[str, str] = Field(default_factory=dict, description="sha256 -> why it was refused")
    rollback_to: str | None = Field(None, description="set before a rollback's swap, cleared after")
    rollback_reason: str | None = None
    last_error: str | None = None
    director_seq: int | None = Field(None, description="sequence number of the last director answer acted on")
    director_commands_seq: int | None = Field(
        None, description="sequence number of the last director answer whose commands ran"
    )
    directives_refused: int = Field(
        0, description="director answers refused (bad signature, stale, replayed)"
    )
    history: list[dict[str, Any]] = Field(default_factory=list)
    updated_at: float = Field(default_factory=time.time)


class Journal:
    """Load, change and durably save the agent's :class:`JournalState`."""

    def __init__(self, path: Path, *, history: int = 50) -> None:
        self.path = Path(path)
        self._history = history
        self.state = self._load()

    def _load(self) -> JournalState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return JournalState()
        try:
            if len(raw) > MAX_JOURNAL_BYTES:
                raise ValueError(f"journal is {len(raw)} bytes, more than {MAX_JOURNAL_BYTES}")
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("journal is not a JSON object")
            if obj.get("schema_version", 1) > JOURNAL_SCHEMA:
                raise ValueError(f"journal schema {obj.get('schema_version')} is newer than this agent")
            return JournalState.model_validate(obj)
        except Exception as e:  # a journal we cannot read must not stop the device from serving
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error(
                "journal %s is unreadable (%s); moved to %s, rebuilding from the model store",
                self.path,
                e,
                aside,
            )
            state = JournalState()
            state.last_error = f"journal was unreadable and was rebuilt: {e}"
            return state

    def save(self) -> None:
        self.state.seq += 1
        self.state.updated_at = time.time()
        atomic_write(self.path, self.state.model_dump_json(indent=1).encode())

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append an event to the history (saved with the next :meth:`save`)."""
        ev = {"t": round(time.time(), 3), "event": kind, **fields}
        log.info("%s%s", kind, "".join(f" {k}={v}" for k, v in fields.items() if v is not None))
        self.state.history.append(ev)
        del self.state.history[: max(0, len(self.state.history) - self._history)]
        return ev

    def step(self, step: str) -> None:
        """Record that the pending update enters ``step`` and save, before the step's work begins."""
        p = self.state.pending
        assert p is not None, "no pending update"
        if p.step != step:
            p.step = step
            p.attempts = 0
        self.save()
