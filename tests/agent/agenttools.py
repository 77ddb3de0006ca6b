"""Helpers the agent tests import (a module of its own: every test folder has a ``conftest``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

GOLDEN = 16
PRE = [{"op": "scale", "factor": 1 / 16}]


def run_until(agent, pred, timeout: float = 30.0, sleep: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.run_once()
        if pred():
            return
        time.sleep(sleep)
    raise AssertionError(
        f"condition not met in {timeout}s; state={agent.state_name()} journal="
        f"{json.dumps(agent.journal.state.model_dump(mode='json'), default=str)[:2000]}"
    )


def assert_valid_active(state: Path, expect_sha: str | None = None) -> dict[str, Any]:
    """The invariant every fault must keep: `current` -> a verified version whose files match its hashes,
    and a journal that agrees."""
    from edgefleet.agent import Journal, ModelStore

    store = ModelStore(state)
    cur = store.current()
    assert cur is not None, f"`current` does not point at a verified version: {list(state.iterdir())}"
    store.verify(cur.sha256, deep=True)
    j = Journal(state / "journal.json").state
    assert j.active == cur.sha256 or (j.pending is not None and j.pending.step == "activating"), (
        f"journal active {j.active} but current {cur.sha256}"
    )
    if expect_sha is not None:
        assert cur.sha256 == expect_sha
    return {"current": cur, "journal": j}
