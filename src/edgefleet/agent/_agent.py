"""The device agent: one class, :class:`Agent`, composing its parts over one state directory.

Enrollment is in ``_enroll``, the update steps and the journal replay in ``_update``, the watch window and
rollbacks in ``_watch``, heartbeats, outbox and nudges in ``_uplink``, server commands and local requests
in ``_control``; this module holds the control loop. Every step is written to the journal before its work
begins and every step is idempotent, so :meth:`Agent.replay` at start can finish or undo whatever a kill -9
interrupted. The ``current`` symlink always points at a verified version: it is only ever swapped with one
rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.agent._atrest import ModelKey
from edgefleet.agent._config import AgentConfig
from edgefleet.agent._control import LocalControl
from edgefleet.agent._director import DirectorClient
from edgefleet.agent._enroll import Credentials
from edgefleet.agent._federated import FederatedParticipation
from edgefleet.agent._fetcher import HttpxFetcher
from edgefleet.agent._identity import DeviceIdentity
from edgefleet.agent._journal import Journal
from edgefleet.agent._power import DevicePower
from edgefleet.agent._store import ModelStore
from edgefleet.agent._tuf import TrustedRepository
from edgefleet.agent._update import UpdateSteps
from edgefleet.agent._uplink import Uplink
from edgefleet.agent._watch import WatchWindow
from edgefleet.errors import AgentError, EdgefleetError

__all__ = ["Agent", "backoff_delay", "jittered"]

log = logging.getLogger(__name__)


# The loop's schedule. Hand-written rather than tenacity waits: these are not retries of one call but the
# pause between two passes of a loop that keeps serving, watching and reporting in between, and the
# backoff is "equal jitter" (half fixed, half random), which tenacity's jittered waits do not offer.


def jittered(interval: float, jitter: float, rng: random.Random | None = None) -> float:
    """``interval`` scaled by a uniform factor in [1 - jitter, 1 + jitter], so a fleet does not poll in step."""
    r = rng or random
    return max(0.0, interval * (1.0 + r.uniform(-jitter, jitter)))


def backoff_delay(failures: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped at ``maximum``."""
    r = rng or random
    cap = min(maximum, initial * (2 ** max(0, failures - 1)))
    return cap / 2 + r.uniform(0, cap / 2)


class Agent(UpdateSteps, WatchWindow, Uplink, LocalControl, DevicePower, FederatedParticipation):
    """The device daemon over one state directory.

    Args:
        config: agent settings (``state_dir`` must hold credentials from :func:`enroll`).
        host: what serves the active model (default: :class:`~edgefleet.agent.RuntimeHost` over
            ``edgefleet.runtime``); tests may pass another with the same methods.
        health_gate: ``gate(bundle, gates, host=, config=) -> dict`` raising ``HealthCheckError`` on failure;
            ``bundle`` is the verified ``edgefleet.bundle.Bundle`` (default: the golden set, latency and
            memory budgets and the shadow run of ``_health.check_health``).
        fetcher_transport / director_transport: httpx transports (fault injection in tests).
        on_progress: ``(done, total)`` callback while downloading (CLI progress bar).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        host: Any = None,
        health_gate: Callable[..., dict[str, Any]] | None = None,
        fetcher_transport: Any = None,
        director_transport: Any = None,
        on_progress: Callable[[int, int], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.creds = Credentials.load(self.state_dir)
        self.identity = DeviceIdentity(self.state_dir)
        self.downloads = self.state_dir / "downloads"
        self.downloads.mkdir(exist_ok=True)
        key = ModelKey(config.model_key_file) if config.model_key_file is not None else None
        self.store = ModelStore(self.state_dir, key=key)
        self.journal = Journal(self.state_dir / "journal.json", history=config.history_events)
        self.stop_event = threading.Event()
        self.nudge_event = threading.Event()
        self.rng = rng or random.Random()
        self.on_progress = on_progress
        self.fetcher = HttpxFetcher(
            max_rate=config.max_rate_bytes_per_s,
            retries=config.download_retries,
            backoff=config.retry_backoff_s,
            backoff_max=config.retry_backoff_max_s,
            chunk=config.chunk_bytes,
            timeout=config.request_timeout_s,
            transport=fetcher_transport,
            cancel=self.stop_event,
            max_metadata_bytes=config.max_metadata_bytes,
            verify=self.identity.verify(),
        )
        self.repo = TrustedRepository(
            self.state_dir / "tuf",
            self.creds.repository_url,
            (self.state_dir / "root.json").read_bytes(),
            self.fetcher,
            max_metadata_bytes=config.max_metadata_bytes,
        )
        self.director = DirectorClient(
            config.server_url or self.creds.server_url,
            token=self.creds.device_token,
            timeout=config.request_timeout_s,
            transport=director_transport,
            verify=self.identity.verify(),
        )
        self.host = host
        self.health_gate = health_gate
        self.poll_interval = self.creds.poll_interval_s or config.poll_interval_s
        self.failures = 0  # consecutive unreachable-server heartbeats
        self.progress: float | None = None
        self.last_health: dict[str, Any] = {}
        self._archive_checked = None  # sha256 of the archive this run's download step checked
        self._staged = None  # the bundle this run installed, verified once, until it is activated
        self._last_beat = 0.0
        self._beating = False
        self._queued_commands: list[str] = []
        self._lock_fd: int | None = None
        self._mqtt: Any = None
        self._outbox: Any = None
        self.api_port: int | None = None
        self._events_sent_t = 0.0
        # ModelHealth counts are "since the last heartbeat" (the server adds them up); the host's
        # counters are cumulative, so remember what the last delivered heartbeat covered.
        self._health_sent = (0, 0)
        self._health_pending = (0, 0)
        self._telemetry_sent_t = time.monotonic()  # first telemetry upload one interval after start
        self._hardware_sent = False  # the first heartbeat of a run carries the hardware profile
        self._power_start()  # device state source and power/thermal policy (agent/_power.py)
        self._fl_init()  # federated jobs the control plane names (agent/_federated.py)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Lock the state directory, replay the journal, load the active model, start the local API."""
        self._lock()
        self.replay()
        if self.host is None:
            from edgefleet.agent._host import RuntimeHost

            self.host = RuntimeHost(telemetry_config=self._telemetry_config())
        cur = self.store.current()
        if cur is not None:
            try:
                # installed by an earlier run: every file re-checked before it serves
                self.host.load(self.store.open(cur.sha256))
            except EdgefleetError as e:
                self._auto_rollback(f"active model failed to load: {e}")
        if self.config.api_port is not None:
            self.api_port = self.host.serve(
                self.config.api_host,
                self.config.api_port,
                tls_cert=self.config.api_tls_cert,
                tls_key=self.config.api_tls_key,
                insecure_http=self.config.api_insecure_http,
            )
        if self.config.mqtt_url:
            self._start_mqtt()
        self._open_outbox()
        log.info(
            "agent started", extra={"state": str(self.state_dir), "active": cur.version if cur else None}
        )

    def close(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(Exception):
            self._fl_close()  # a running SuperNode stops with the agent
        self._release_looks()
        if self._mqtt is not None:
            with contextlib.suppress(Exception):
                self._mqtt.loop_stop()
                self._mqtt.disconnect()
        if self.host is not None:
            with contextlib.suppress(Exception):
                self._collect_telemetry(final=True)  # the open window is queued, uploaded next run
            with contextlib.suppress(Exception):
                self.host.close()
        if self._outbox is not None:
            with contextlib.suppress(Exception):
                self._outbox.close()
        self.fetcher.close()
        self.director.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run(self, *, max_iterations: int | None = None) -> None:
        """Run the control loop until :attr:`stop_event` is set (SIGTERM handler, Ctrl-C)."""
        self.start()
        try:
            n = 0
            while not self.stop_event.is_set():
                try:
                    wait = self.run_once()
                except Exception as e:  # never let one bad pass stop the device from serving
                    log.exception("agent loop pass failed")
                    self.failures += 1
                    with contextlib.suppress(Exception):
                        self._error(f"agent loop pass failed: {e!r}")
                    wait = backoff_delay(
                        self.failures, self.config.backoff_initial_s, self.config.backoff_max_s, self.rng
                    )
                n += 1
                if max_iterations is not None and n >= max_iterations:
                    break
                self.nudge_event.clear()
                # Wake on stop or on an MQTT nudge, whichever comes first.
                deadline = time.monotonic() + wait
                while not self.stop_event.is_set() and not self.nudge_event.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.nudge_event.wait(min(left, 0.25))
                    self._process_requests()
        finally:
            self.close()

    def run_once(self) -> float:
        """One pass of the loop: heartbeat, commands, assignment, watch window, uploads.

        Returns:
            Seconds to wait before the next pass (poll interval with jitter, or backoff).
        """
        self._collect_telemetry()
        self._power_tick()
        resp = self.heartbeat()
        if resp is not None:
            for cmd in [*self._queued_commands, *resp.commands]:
                self._command(cmd)
            self._queued_commands.clear()
            if resp.assignment is not None and not self._download_deferred(resp.assignment):
                self.apply_assignment(resp.assignment)
        elif self.journal.state.pending is not None and self.journal.state.pending.step != "assigned":
            # Server unreachable: an update already agreed and verified may still finish (repository may be up).
            self._continue_pending()
        if self.journal.state.watch is not None:
            self.check_watch()
        self._fl_tick(resp)  # join, stay in or leave a federated job the answer names (agent/_federated.py)
        self._upload_events()
        self._process_requests()
        if resp is None:
            return backoff_delay(
                self.failures, self.config.backoff_initial_s, self.config.backoff_max_s, self.rng
            )
        wait = jittered(self.poll_interval, self.config.jitter, self.rng)
        w = self.journal.state.watch
        if w is not None:
            left = w.started_at + self._gates(w.assignment).watch_window_s - time.time()
            wait = min(wait, max(left, self.config.min_poll_interval_s))
        return wait

    def _lock(self) -> None:
        fd = os.open(self.state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise AgentError(
                f"another agent is running on {self.state_dir}",
                hint="stop it first (systemctl stop edgefleet-agent)",
            ) from e
        self._lock_fd = fd
