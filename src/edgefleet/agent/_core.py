"""What every part of the agent shares: its state (settings, store, journal, host, network clients) and
the small helpers that report an error and save the journal. :class:`~edgefleet.agent.Agent` sets it up."""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any

from edgefleet.agent._config import AgentConfig
from edgefleet.agent._director import DirectorClient
from edgefleet.agent._enroll import Credentials
from edgefleet.agent._fetcher import HttpxFetcher
from edgefleet.agent._identity import DeviceIdentity
from edgefleet.agent._journal import Journal
from edgefleet.agent._store import ModelStore
from edgefleet.agent._tuf import TrustedRepository
from edgefleet.protocol import Assignment, GateThresholds

__all__ = ["AgentCore"]

log = logging.getLogger(__name__)


class AgentCore:
    """The state the agent's parts (update, watch, uplink, local control) work on.

    Each part is a base class of :class:`~edgefleet.agent.Agent` and calls the others through ``self``
    (an update step reports through the uplink's outbox, a failed watch rolls back, a command rolls back).
    """

    config: AgentConfig
    state_dir: Path
    creds: Credentials
    downloads: Path
    store: ModelStore
    journal: Journal
    stop_event: threading.Event
    nudge_event: threading.Event
    rng: random.Random
    fetcher: HttpxFetcher
    repo: TrustedRepository
    director: DirectorClient
    identity: DeviceIdentity  # pinned CA, device certificate, pinned director key
    host: Any  # RuntimeHost or a test double with the same methods
    poll_interval: float
    failures: int  # consecutive unreachable-server heartbeats
    progress: float | None
    last_health: dict[str, Any]  # figures of the last health gate passed

    def _gates(self, a: Assignment | None) -> GateThresholds:
        return a.gates if a is not None else GateThresholds()

    def _ver(self, sha: str | None) -> str | None:
        if not sha:
            return None
        m = self.store.get(sha)
        return m.version if m else sha[:12]

    def _error(self, msg: str) -> None:
        log.warning("%s", msg)
        self.journal.state.last_error = msg[:4096]
        self.journal.event("error", message=msg[:500])
        self._save_quietly()

    def _save_quietly(self) -> None:
        """Save the journal when the disk allows; the one on disk stays a valid older state otherwise."""
        try:
            self.journal.save()
        except OSError as e:
            log.error("cannot write the journal (%s); keeping the previous one on disk", e)
