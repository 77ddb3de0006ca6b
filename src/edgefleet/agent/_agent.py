"""The device agent: enroll, heartbeat, verified download, stage, health gate, activate, watch, roll back.

Every step is written to the journal (tmp + fsync + rename) before its work begins, and every step is
idempotent, so :meth:`Agent.replay` at start can finish or undo whatever a kill -9 interrupted. The
``current`` symlink always points at a verified version: it is only ever swapped with one rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write, sha256_file
from edgefleet.agent._config import AgentConfig
from edgefleet.agent._director import DirectorClient, ServerUnreachable
from edgefleet.agent._fetcher import HttpxFetcher
from edgefleet.agent._journal import Journal, PendingUpdate, WatchState
from edgefleet.agent._store import ModelStore, StoredModel
from edgefleet.agent._tuf import TrustedRepository, delta_target_path, edgefleet_custom
from edgefleet.errors import (
    AgentError,
    AuthError,
    BundleError,
    ConfigError,
    DiskSpaceError,
    DownloadError,
    EdgefleetError,
    HealthCheckError,
    NotFoundError,
    VerificationError,
)
from edgefleet.protocol import (
    ActiveModel,
    Assignment,
    EnrollRequest,
    GateThresholds,
    Heartbeat,
    HeartbeatResponse,
    ModelHealth,
    Resources,
    TelemetryBatch,
)

__all__ = ["Agent", "Credentials", "enroll", "agent_status", "backoff_delay", "jittered", "request_rollback"]

log = logging.getLogger(__name__)


def jittered(interval: float, jitter: float, rng: random.Random | None = None) -> float:
    """``interval`` scaled by a uniform factor in [1 - jitter, 1 + jitter], so a fleet does not poll in step."""
    r = rng or random
    return max(0.0, interval * (1.0 + r.uniform(-jitter, jitter)))


def backoff_delay(failures: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped at ``maximum``."""
    r = rng or random
    cap = min(maximum, initial * (2 ** max(0, failures - 1)))
    return cap / 2 + r.uniform(0, cap / 2)


# --- credentials and enrollment -------------------------------------------------------------------


@dataclass
class Credentials:
    """What enrollment gave this device (stored 0600 in ``credentials.json``)."""

    device_id: str
    device_token: str
    server_url: str
    repository_url: str
    poll_interval_s: float

    @classmethod
    def load(cls, state_dir: Path) -> Credentials:
        path = Path(state_dir) / "credentials.json"
        try:
            obj = json.loads(path.read_text())
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except FileNotFoundError as e:
            raise ConfigError(
                f"{state_dir} holds no credentials: this device is not enrolled",
                hint="run `edgefleet agent enroll --token ... --root root.json --server URL`",
            ) from e
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is unreadable: {e}", hint="enroll the device again") from e

    def save(self, state_dir: Path) -> None:
        atomic_write(
            Path(state_dir) / "credentials.json", json.dumps(self.__dict__, indent=1).encode(), mode=0o600
        )


def enroll(
    config: AgentConfig,
    *,
    token: str,
    root_json: Path | bytes,
    server_url: str,
    name: str | None = None,
    device_class: str | None = None,
    tags: dict[str, str] | None = None,
    transport: Any = None,
) -> Credentials:
    """Exchange a one-time enrollment token for a device token; pin the repository's root.json.

    Raises:
        VerificationError: the server names a different root.json than the one given.
        AuthError: the server refused the token.
        ServerUnreachable: the server did not answer.
    """
    from edgefleet.power import probe

    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    root = root_json if isinstance(root_json, bytes) else Path(root_json).read_bytes()
    try:
        from tuf.api.metadata import Metadata, Root

        Metadata[Root].from_bytes(root)
    except Exception as e:
        raise VerificationError(
            f"the given root.json is not TUF root metadata: {e}",
            hint="pass the repository's root.json (from `edgefleet registry init`)",
        ) from e
    hw = probe(state, device_class_override=device_class, tags=tags)
    client = DirectorClient(server_url, timeout=config.request_timeout_s, transport=transport)
    try:
        resp = client.enroll(EnrollRequest(token=token, name=name, hardware=hw))
    finally:
        client.close()
    digest = hashlib.sha256(root).hexdigest()
    if resp.root_json_sha256 and resp.root_json_sha256 != digest:
        raise VerificationError(
            "the server's root.json differs from the one this device was given to pin",
            hint="get root.json from the repository owner over a trusted channel and enroll again",
            expected=resp.root_json_sha256,
            got=digest,
        )
    atomic_write(state / "root.json", root, mode=0o644)
    # The profile as enrolled: later heartbeats re-probe but keep the class chosen at enrollment.
    atomic_write(state / "hardware.json", hw.model_dump_json().encode(), mode=0o644)
    creds = Credentials(
        resp.device_id, resp.device_token, server_url.rstrip("/"), resp.repository_url, resp.poll_interval_s
    )
    creds.save(state)
    log.info("enrolled as %s", resp.device_id, extra={"device_id": resp.device_id})
    return creds


# --- the agent ------------------------------------------------------------------------------------


class Agent:
    """The device daemon over one state directory.

    Args:
        config: agent settings (``state_dir`` must hold credentials from :func:`enroll`).
        host: what serves the active model (default: :class:`~edgefleet.agent.RuntimeHost` over
            ``edgefleet.runtime``); tests may pass another with the same methods.
        health_gate: ``gate(bundle_dir, gates, host) -> dict`` raising ``HealthCheckError`` on failure.
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
        self.downloads = self.state_dir / "downloads"
        self.downloads.mkdir(exist_ok=True)
        self.store = ModelStore(self.state_dir)
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
        )
        self.host = host
        self.health_gate = health_gate
        self.poll_interval = self.creds.poll_interval_s or config.poll_interval_s
        self.failures = 0  # consecutive unreachable-server heartbeats
        self.progress: float | None = None
        self.last_health: dict[str, Any] = {}
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
                self.host.load(cur.bundle_dir)
            except EdgefleetError as e:
                self._auto_rollback(f"active model failed to load: {e}")
        if self.config.api_port is not None:
            self.api_port = self.host.serve(self.config.api_host, self.config.api_port)
        if self.config.mqtt_url:
            self._start_mqtt()
        self._open_outbox()
        log.info(
            "agent started", extra={"state": str(self.state_dir), "active": cur.version if cur else None}
        )

    def close(self) -> None:
        self.stop_event.set()
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
        resp = self.heartbeat()
        if resp is not None:
            for cmd in [*self._queued_commands, *resp.commands]:
                self._command(cmd)
            self._queued_commands.clear()
            if resp.assignment is not None:
                self.apply_assignment(resp.assignment)
        elif self.journal.state.pending is not None and self.journal.state.pending.step != "assigned":
            # Server unreachable: an update already agreed and verified may still finish (repository may be up).
            self._continue_pending()
        if self.journal.state.watch is not None:
            self.check_watch()
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

    # --- crash recovery --------------------------------------------------------------------------

    def replay(self) -> None:
        """Finish or undo whatever the last run was doing when it stopped (kill -9, power loss)."""
        st = self.journal.state
        self.store.clean_leftovers()
        for t in [*self.downloads.glob("*.tmp"), *self.state_dir.glob(".*.tmp-*")]:
            t.unlink(missing_ok=True)  # half-written temp files of atomic writes a crash interrupted
        # 1. An interrupted rollback is finished first.
        if st.rollback_to:
            self._finish_rollback(st.rollback_to, st.rollback_reason or "interrupted rollback", auto=False)
        # 2. `current` must point at a verified version.
        cur = self.store.current()
        if cur is None or (st.active and cur.sha256 != st.active and st.pending is None):
            self._repair_current(cur)
            cur = self.store.current()
        if st.active is None and cur is not None:
            st.active = cur.sha256
        # 3. The step in flight.
        p = st.pending
        if p is not None:
            if p.step in ("staging", "staged", "health_checked", "activating"):
                p.attempts += 1
                if p.attempts > self.config.max_step_attempts:
                    self._refuse(
                        p.sha256,
                        f"agent restarted {p.attempts - 1} times during step {p.step}; "
                        "the update was abandoned",
                        permanent=True,
                    )
            if (
                st.pending is not None
                and p.step == "activating"
                and cur is not None
                and cur.sha256 == p.sha256
            ):
                self._enter_watch(p, previous=p.previous)  # the swap happened before the crash
        # 4. Crash loop while watching a new version.
        w = st.watch
        if w is not None:
            now = time.time()
            gates = self._gates(w.assignment)
            w.boots = [b for b in w.boots if now - b <= gates.crash_loop_window_s] + [now]
            if len(w.boots) >= gates.crash_loop_failures:
                self.journal.save()
                self._rollback_watch(
                    f"crash loop: {len(w.boots)} agent restarts within "
                    f"{gates.crash_loop_window_s:.0f}s while watching {self._ver(w.sha256)}"
                )
        self.journal.event("replayed", active=self._ver(st.active), pending=p.step if p else None)
        self.journal.save()
        # Downloads nobody waits for any more.
        keep = {p.sha256} if p is not None else set()
        for f in self.downloads.iterdir():
            if not any(f.name.startswith(k) for k in keep):
                f.unlink(missing_ok=True)

    def _repair_current(self, cur: StoredModel | None) -> None:
        st = self.journal.state
        for sha in (st.active, st.committed):
            if sha and self.store.get(sha) is not None:
                if cur is None or cur.sha256 != sha:
                    log.warning("repairing `current` -> %s", sha[:12])
                    self.store.set_current(sha)
                return
        kept = self.store.list()
        if kept:
            self.store.set_current(kept[0].sha256)
            st.active = kept[0].sha256
        elif cur is None:
            self.store.current_link.unlink(missing_ok=True)

    # --- control plane ---------------------------------------------------------------------------

    def heartbeat(self) -> HeartbeatResponse | None:
        """Send status; return the response, or None when the server is unreachable (backoff)."""
        if self._beating:
            return None
        self._beating = True
        try:
            resp = self.director.heartbeat(self.creds.device_id, self.build_heartbeat())
        except ServerUnreachable as e:
            self.failures += 1
            log.warning("heartbeat failed (%d in a row): %s", self.failures, e)
            return None
        except AuthError as e:
            self.failures += 1
            self._error(str(e))
            return None
        except EdgefleetError as e:
            self.failures += 1
            self._error(f"heartbeat refused: {e}")
            return None
        finally:
            self._beating = False
            self._last_beat = time.monotonic()
        self.failures = 0
        self._hardware_sent = True
        self._health_sent = self._health_pending
        self.poll_interval = max(self.config.min_poll_interval_s, resp.poll_interval_s)
        return resp

    def build_heartbeat(self) -> Heartbeat:
        st = self.journal.state
        cur = self.store.current()
        active = None
        if cur is not None:
            active = ActiveModel(
                name=cur.name,
                version=cur.version,
                variant=cur.variant,
                target_path=cur.target_path,
                sha256=cur.sha256,
            )
        health = ModelHealth()
        if self.host is not None:
            with contextlib.suppress(Exception):
                health = self.host.health()
        cum_req, cum_err = health.requests, health.errors
        base_req, base_err = self._health_sent
        if cum_req < base_req or cum_err < base_err:  # the host's counters were reset (new baseline)
            base_req = base_err = 0
        health.requests, health.errors = cum_req - base_req, cum_err - base_err
        self._health_pending = (cum_req, cum_err)
        if self.last_health.get("golden_pass") is not None and health.golden_pass is None:
            health.golden_pass = self.last_health["golden_pass"]
        if self.last_health.get("shadow_agreement") is not None and health.shadow_agreement is None:
            health.shadow_agreement = self.last_health["shadow_agreement"]
        events = [e for e in st.history if e.get("t", 0) > self._events_sent_t][-100:]
        if events:
            self._events_sent_t = events[-1]["t"]
        return Heartbeat(
            device_id=self.creds.device_id,
            active=active,
            state=self.state_name(),
            progress=self.progress,
            health=health,
            resources=self._resources(),
            last_error=(st.last_error or None) and st.last_error[:4096],
            events=events,
            hardware=self._hardware() if not self._hardware_sent else None,
        )

    def _hardware(self) -> Any:
        from edgefleet.power import probe

        try:
            enrolled = json.loads((self.state_dir / "hardware.json").read_text())
        except (OSError, ValueError):
            enrolled = {}
        try:
            return probe(self.state_dir, device_class_override=enrolled.get("device_class"))
        except Exception:  # noqa: BLE001 - a probe failure must not stop heartbeats
            return None

    def state_name(self) -> str:
        st = self.journal.state
        if st.pending is not None:
            return st.pending.step
        if st.watch is not None:
            return "watching"
        return "idle" if st.active else "empty"

    def _resources(self) -> Resources:
        try:
            import psutil

            proc = psutil.Process()
            return Resources(
                cpu_percent=proc.cpu_percent(None),
                rss_mb=proc.memory_info().rss / 2**20,
                disk_free_mb=shutil.disk_usage(self.state_dir).free / 2**20,
            )
        except Exception:  # pragma: no cover
            return Resources()

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

    # --- updates ---------------------------------------------------------------------------------

    def apply_assignment(self, a: Assignment) -> None:
        """Start (or continue) installing what the director assigned."""
        st = self.journal.state
        sha = (a.hashes.get("sha256") or "").lower()
        if not sha:
            self._error(f"assignment for {a.target_path} has no sha256; refused")
            return
        if sha == st.active and st.pending is None:
            return
        if sha in st.failed:
            return  # refused before; the reason was reported, the director must assign something else
        if st.watch is not None:
            if st.watch.sha256 == sha:
                return
            if sha == st.watch.previous and self.store.get(sha) is not None:
                # The director went back (rollout halted): switch now, the new one is not at fault.
                self._begin_rollback(sha, f"director assigned {a.version} again")
                self._finish_rollback(sha, f"director assigned {a.version} again", auto=False)
                return
            self.check_watch(final=False)
            if st.watch is not None:
                log.info(
                    "new assignment %s waits for the watch window of %s",
                    a.version,
                    self._ver(st.watch.sha256),
                )
                return
        if st.pending is not None and st.pending.sha256 != sha:
            log.info("assignment changed from %s to %s", st.pending.assignment.version, a.version)
            self.journal.event("superseded", version=st.pending.assignment.version)
            for f in self.downloads.glob(f"{st.pending.sha256}*"):
                f.unlink(missing_ok=True)
            st.pending = None
        if st.pending is None:
            st.pending = PendingUpdate(assignment=a, sha256=sha, previous=st.active)
            self.journal.event("assigned", version=a.version, target=a.target_path, rollout=a.rollout_id)
            self.journal.save()
        else:
            st.pending.assignment = a  # gates may have changed
        self._continue_pending()

    def _continue_pending(self) -> None:
        st = self.journal.state
        p = st.pending
        if p is None:
            return
        try:
            if p.step in ("assigned", "downloading"):
                info = self.repo.check_assignment(p.assignment)  # refreshes TUF metadata
                if self.store.get(p.sha256) is None:
                    self.journal.step("downloading")
                    b0 = self.fetcher.bytes_received
                    p.via = self._download(info, p)
                    self.journal.event(
                        "downloaded",
                        version=p.assignment.version,
                        via=p.via,
                        bytes=self.fetcher.bytes_received - b0,
                    )
                    self.journal.step("downloaded")
                else:
                    self.journal.step("staged")  # a kept version: nothing to download
            if p.step in ("downloaded", "staging"):
                self.journal.step("staging")
                self._stage(p)
                self.journal.event("staged", version=p.assignment.version)
                self.journal.step("staged")
            if p.step == "staged":
                self.last_health = self._health_gate(p)
                self.journal.event(
                    "health_passed", version=p.assignment.version, **_scalars(self.last_health)
                )
                self.journal.step("health_checked")
            if p.step in ("health_checked", "activating"):
                self.journal.step("activating")
                self._activate(p)
        except (DownloadError, ServerUnreachable) as e:
            self._error(f"download of {p.assignment.version} interrupted: {e}")  # resumes next pass
        except DiskSpaceError as e:
            self._refuse(p.sha256, f"refused {p.assignment.version}: {e}", permanent=False)
        except VerificationError as e:
            # Director/repository disagreement or stale metadata may be fixed on their side: not
            # remembered as failed, retried at the next poll. A bad download is dropped, never kept.
            bad_file = (e.details or {}).get("reason") == "hash_mismatch"
            self._refuse(
                p.sha256, f"refused {p.assignment.version}: {e}", permanent=False, keep_downloads=not bad_file
            )
        except (HealthCheckError, BundleError) as e:
            self._refuse(p.sha256, f"refused {p.assignment.version}: {e}", permanent=True)
        except OSError as e:
            if e.errno == 28:  # ENOSPC outside the download (journal, unpack): same as a full disk
                self._refuse(p.sha256, f"refused {p.assignment.version}: disk full ({e})", permanent=False)
            else:
                log.exception("update of %s failed", p.assignment.version)
                self._error(f"update of {p.assignment.version} failed: {e!r}")
        finally:
            self.progress = None

    def _refuse(self, sha: str, reason: str, *, permanent: bool, keep_downloads: bool = False) -> None:
        st = self.journal.state
        p = st.pending
        log.log(logging.DEBUG if reason == st.last_error else logging.WARNING, "%s", reason)
        if permanent:
            st.failed[sha] = reason[:1000]
            while len(st.failed) > self.config.max_failed_targets:
                st.failed.pop(next(iter(st.failed)))
            if self.store.get(sha) is not None and sha not in (st.active, st.committed):
                self.store.remove(sha)
        if not keep_downloads:
            for f in self.downloads.glob(f"{sha}*"):
                f.unlink(missing_ok=True)
        version = p.assignment.version if p is not None and p.sha256 == sha else None
        if p is not None and p.sha256 == sha:
            st.pending = None
        st.last_error = reason
        self.journal.event(
            "refused", version=version, sha256=sha[:12], reason=reason[:500], permanent=permanent
        )
        self._save_quietly()
        self._outbox_put(
            "event",
            {"event": "refused", "version": version, "sha256": sha, "reason": reason, "permanent": permanent},
        )

    def _download(self, info: Any, p: PendingUpdate) -> str:
        dest = self.downloads / f"{p.sha256}.tar"
        if dest.exists():
            try:
                self.repo.verify_file(info, dest)
                return p.via or "full"
            except VerificationError:
                dest.unlink()
        if info.length > self.config.max_target_bytes:
            raise DiskSpaceError(
                f"{info.path} is {info.length} bytes, more than max_target_bytes "
                f"({self.config.max_target_bytes})",
                hint="raise EDGEFLEET_AGENT_MAX_TARGET_BYTES",
            )
        self._check_disk(info.length)
        cur = self.store.current()
        a = p.assignment
        if self.config.use_delta and cur is not None and cur.name == a.name and cur.variant == a.variant:
            try:
                if self._download_delta(info, p, cur, dest):
                    return "delta"
            except (EdgefleetError, OSError) as e:
                if isinstance(e, DiskSpaceError):
                    raise
                log.info("delta update failed (%s); falling back to the full download", e)
                self.journal.event("delta_failed", reason=str(e)[:300])
            for f in self.downloads.glob(f"{p.sha256}.from-*"):
                f.unlink(missing_ok=True)
        part = self.downloads / f"{p.sha256}.part"
        for attempt in (1, 2):
            self.fetcher.download_resumable(
                self.repo.url(info), part, info.length, self._progress(p, info.length)
            )
            try:
                self.repo.verify_file(info, part)
                break
            except VerificationError:
                part.unlink(missing_ok=True)  # corrupted in transit: start over once, then give up
                if attempt == 2:
                    raise
                self.journal.event("hash_mismatch_retry", target=info.path)
        os.replace(part, dest)
        return "full"

    def _download_delta(self, info: Any, p: PendingUpdate, cur: StoredModel, dest: Path) -> bool:
        a = p.assignment
        dinfo = self.repo.find(delta_target_path(a.name, a.version, a.variant, cur.version))
        if dinfo is None:
            return False
        c = edgefleet_custom(dinfo)
        if (
            c.get("kind") != "delta"
            or c.get("base_sha256") != cur.sha256
            or c.get("result_sha256") != p.sha256
        ):
            return False
        if not cur.archive.exists():
            return False
        part = self.downloads / f"{p.sha256}.from-{cur.sha256[:12]}.delta.part"
        self.fetcher.download_resumable(
            self.repo.url(dinfo), part, dinfo.length, self._progress(p, dinfo.length)
        )
        self.repo.verify_file(dinfo, part)
        from edgefleet.bundle import apply_delta

        tmp = self.downloads / f"{p.sha256}.tar.tmp"
        apply_delta(cur.archive, part, tmp, expected_sha256=p.sha256, expected_length=info.length)
        self.repo.verify_file(info, tmp)  # the result must be exactly what the full target's metadata signed
        os.replace(tmp, dest)
        part.unlink(missing_ok=True)
        return True

    def _progress(self, p: PendingUpdate, total: int) -> Callable[[int, int], None]:
        def cb(done: int, tot: int) -> None:
            self.progress = min(1.0, done / tot) if tot else None
            p.bytes_downloaded = done
            if self.on_progress:
                self.on_progress(done, tot)
            # Keep the director informed during long downloads (commands are handled after).
            if time.monotonic() - self._last_beat > self.poll_interval and not self._beating:
                resp = self.heartbeat()
                if resp is not None:
                    self._queued_commands.extend(resp.commands)

        return cb

    def _check_disk(self, length: int) -> None:
        free = shutil.disk_usage(self.state_dir).free
        need = int(length * (1 + self.config.unpack_factor)) + int(self.config.disk_reserve_mb * 2**20)
        have = sum(f.stat().st_size for f in self.downloads.glob("*.part"))
        if free + have < need:
            raise DiskSpaceError(
                f"not enough disk for the update: {free / 2**20:.1f} MiB free, {need / 2**20:.1f} MiB needed",
                hint="free space in the state directory, lower keep_versions or disk_reserve_mb",
                free=free,
                needed=need,
            )

    def _stage(self, p: PendingUpdate) -> None:
        if self.store.get(p.sha256) is not None:
            return
        archive = self.downloads / f"{p.sha256}.tar"
        if not archive.exists() or sha256_file(archive) != p.sha256:
            archive.unlink(missing_ok=True)
            p.step = "assigned"  # lost or damaged: download again
            self.journal.save()
            raise DownloadError(f"downloaded archive of {p.assignment.version} is missing; downloading again")
        a = p.assignment
        info = {
            "name": a.name,
            "version": a.version,
            "variant": a.variant,
            "target_path": a.target_path,
            "length": a.length,
        }
        self.store.install(
            archive,
            p.sha256,
            info,
            unpack_factor=self.config.unpack_factor,
            reserve_bytes=int(self.config.disk_reserve_mb * 2**20),
        )
        archive.unlink(missing_ok=True)

    def _health_gate(self, p: PendingUpdate) -> dict[str, Any]:
        m = self.store.get(p.sha256)
        if m is None:
            p.step = "assigned"
            raise DownloadError("staged version vanished; downloading again")
        gate = self.health_gate
        if gate is None:
            from edgefleet.agent._health import check_health

            gate = check_health
        return gate(m.bundle_dir, p.assignment.gates, host=self.host, config=self.config)

    def _activate(self, p: PendingUpdate) -> None:
        m = self.store.get(p.sha256)
        if m is None:
            p.step = "assigned"
            raise DownloadError("staged version vanished before activation; downloading again")
        baseline = self._baseline()  # the old version's live figures; the new window starts now
        if self.host is not None:
            self.host.load(m.bundle_dir)  # hot swap: requests in flight finish on the old model
            # Requests that waited on the swap belong to neither version: the watch starts after it.
            with contextlib.suppress(Exception):
                self.host.health(reset=True)
        self.store.set_current(p.sha256)
        self._enter_watch(p, previous=p.previous, baseline=baseline)
        self.journal.save()
        self._outbox_put("event", {"event": "activated", "version": p.assignment.version, "sha256": p.sha256})
        self._gc()

    def _baseline(self) -> dict[str, float | None]:
        if self.host is None:
            return {}
        try:
            h = self.host.health(reset=True)
        except Exception:  # noqa: BLE001 - no figures: the watch compares the error rate only
            return {}
        return {
            "latency_p95_ms": h.latency_p95_ms,
            "mean_confidence": h.mean_confidence,
            "error_rate": (h.errors / h.requests) if h.requests else None,
            "requests": float(h.requests),
        }

    def _enter_watch(
        self, p: PendingUpdate, previous: str | None, baseline: dict[str, float | None] | None = None
    ) -> None:
        st = self.journal.state
        st.watch = WatchState(
            sha256=p.sha256,
            previous=previous if previous != p.sha256 else None,
            baseline=baseline or {},
            assignment=p.assignment,
        )
        st.active = p.sha256
        st.pending = None
        st.last_error = None
        self.journal.event("activated", version=p.assignment.version, sha256=p.sha256[:12])

    def _gc(self) -> None:
        st = self.journal.state
        protect = {s for s in (st.active, st.committed, st.watch.previous if st.watch else None) if s}
        if st.pending:
            protect.add(st.pending.sha256)
        for sha in self.store.gc(self.config.keep_versions, protect):
            self.journal.event("removed", sha256=sha[:12])

    # --- watch window and rollback ---------------------------------------------------------------

    def check_watch(self, *, final: bool | None = None) -> str | None:
        """Compare the new version's live figures with the one before; commit or roll back.

        Returns:
            "committed", "rolled_back" or None (still watching).
        """
        st = self.journal.state
        w = st.watch
        if w is None:
            return None
        gates = self._gates(w.assignment)
        elapsed = time.time() - w.started_at
        done = elapsed >= gates.watch_window_s if final is None else final
        h = ModelHealth()
        if self.host is not None:
            with contextlib.suppress(Exception):
                h = self.host.health()
        reasons = []
        enough = h.requests >= self.config.watch_min_requests or (done and h.requests > 0)
        if enough:
            rate = h.errors / h.requests
            if rate > gates.max_error_rate:
                reasons.append(f"error rate {rate:.1%} > {gates.max_error_rate:.1%}")
            b = w.baseline
            if b.get("latency_p95_ms") and h.latency_p95_ms is not None:
                ratio = h.latency_p95_ms / b["latency_p95_ms"]
                # A tiny model's p95 is scheduler noise: a ratio counts only past an absolute slack.
                slower_ms = h.latency_p95_ms - b["latency_p95_ms"]
                if ratio > gates.max_latency_ratio and slower_ms > self.config.watch_latency_slack_ms:
                    reasons.append(
                        f"p95 latency {ratio:.2f}x the previous version (> {gates.max_latency_ratio}; "
                        f"{h.latency_p95_ms:.2f} ms vs {b['latency_p95_ms']:.2f} ms)"
                    )
            if b.get("mean_confidence") and h.mean_confidence is not None:
                ratio = h.mean_confidence / b["mean_confidence"]
                if ratio < gates.min_confidence_ratio:
                    reasons.append(
                        f"mean confidence {ratio:.2f}x the previous version (< {gates.min_confidence_ratio})"
                    )
        if reasons:
            self._rollback_watch("watch window failed: " + "; ".join(reasons))
            return "rolled_back"
        if done:
            st.committed = w.sha256
            st.watch = None
            self.journal.event("committed", version=self._ver(w.sha256), requests=h.requests)
            self.journal.save()
            self._outbox_put("event", {"event": "committed", "sha256": w.sha256})
            self._gc()
            return "committed"
        return None

    def _rollback_watch(self, reason: str) -> None:
        w = self.journal.state.watch
        assert w is not None
        self.journal.state.failed[w.sha256] = reason
        self._auto_rollback(reason)

    def _auto_rollback(self, reason: str) -> None:
        st = self.journal.state
        bad = st.active
        target = None
        if st.watch is not None and st.watch.previous and self.store.get(st.watch.previous):
            target = st.watch.previous
        else:
            for m in self.store.list():
                if m.sha256 != bad and m.sha256 not in st.failed:
                    target = m.sha256
                    break
        if bad:
            st.failed[bad] = reason[:1000]
        if target is None:
            st.last_error = f"{reason}; no other verified version to roll back to"
            self.journal.event("rollback_impossible", reason=reason[:500])
            self.journal.save()
            return
        self._begin_rollback(target, reason)
        self._finish_rollback(target, reason, auto=True)

    def rollback(self, version: str | None = None, *, reason: str = "operator command") -> StoredModel:
        """Switch to a kept version now (no download): the one before, or ``version``.

        Raises:
            NotFoundError: no such kept version.
        """
        st = self.journal.state
        if version:
            m = self.store.find_version(version)
            if m is None:
                raise NotFoundError(
                    f"version {version} is not kept on this device",
                    hint="`edgefleet agent status` lists the kept versions",
                )
        else:
            prev = st.watch.previous if st.watch is not None else None
            m = self.store.get(prev) if prev else None
            if m is None:
                m = next((x for x in self.store.list() if x.sha256 != st.active), None)
            if m is None:
                raise NotFoundError(
                    "no other verified version is kept on this device",
                    hint="assign an older release from the control plane",
                )
        if st.pending is not None:
            self._refuse(st.pending.sha256, f"update abandoned: {reason}", permanent=False)
        if st.active and st.active != m.sha256:
            st.failed[st.active] = f"rolled back: {reason}"
        self._begin_rollback(m.sha256, reason)
        self._finish_rollback(m.sha256, reason, auto=False)
        return m

    def _begin_rollback(self, target: str, reason: str) -> None:
        st = self.journal.state
        st.rollback_to = target
        st.rollback_reason = reason
        self.journal.save()

    def _finish_rollback(self, target: str, reason: str, *, auto: bool) -> None:
        st = self.journal.state
        m = self.store.get(target)
        if m is None:
            st.rollback_to = None
            st.last_error = f"rollback target {target[:12]} vanished; staying on the current version"
            self.journal.save()
            return
        if self.host is not None and getattr(self.host, "loaded", None) != m.bundle_dir:
            try:
                self.host.load(m.bundle_dir)
            except EdgefleetError as e:  # pragma: no cover - a kept version was verified and ran before
                log.error("rollback target failed to load: %s", e)
        self.store.set_current(target)
        st.active = target
        st.committed = target
        st.watch = None
        st.rollback_to = None
        st.rollback_reason = None
        st.last_error = f"rolled back to {m.version}: {reason}"
        self.journal.event("rolled_back", to=m.version, reason=reason[:500], auto=auto)
        self.journal.save()
        self._outbox_put("event", {"event": "rolled_back", "to": m.version, "reason": reason, "auto": auto})
        log.warning("rolled back to %s: %s", m.version, reason)

    # --- helpers ---------------------------------------------------------------------------------

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

    def _start_mqtt(self) -> None:
        from edgefleet.agent._nudge import start_nudge_listener

        try:
            self._mqtt = start_nudge_listener(
                self.config.mqtt_url or "", self.creds.device_id, self.nudge_event
            )
        except Exception as e:  # the broker is optional: polling still works
            log.warning("MQTT nudges disabled: %s", e)

    def _open_outbox(self) -> None:
        try:
            from edgefleet.telemetry import Outbox

            self._outbox = Outbox(self.state_dir / "outbox.sqlite")
        except Exception as e:  # pragma: no cover - outbox is best effort; the journal has the events
            log.warning("outbox unavailable: %s", e)

    def _outbox_put(self, kind: str, payload: dict[str, Any]) -> None:
        if self._outbox is None:
            return
        with contextlib.suppress(Exception):
            self._outbox.put(kind, {**payload, "t": time.time()})

    def _telemetry_config(self) -> Any:
        """``AggregatorConfig`` for the host's per-bundle aggregator (``telemetry_window_s`` applied)."""
        from edgefleet.telemetry import AggregatorConfig

        w = self.config.telemetry_window_s
        return AggregatorConfig() if w is None else AggregatorConfig(window_s=w, feature_window_s=w)

    def _collect_telemetry(self, *, final: bool = False) -> None:
        """Close due telemetry windows of the host and queue them in the outbox (kind ``telemetry``)."""
        collect = getattr(self.host, "telemetry_windows", None)
        if collect is None or self._outbox is None:
            return
        try:
            windows = collect(final=final)
        except Exception as e:  # noqa: BLE001 - telemetry never stops the loop
            log.warning("telemetry windows lost: %s", e)
            return
        for w in windows:
            w.tags["device_id"] = self.creds.device_id
            with contextlib.suppress(Exception):  # full or broken outbox: the window is dropped (counted)
                self._outbox.put("telemetry", w.to_dict())

    def _upload_events(self) -> None:
        """Upload queued events every pass, telemetry windows when the upload interval is due.

        The interval is the shorter of ``AgentConfig.telemetry_interval_s`` and the outbox's
        ``upload_interval_s``; items are acked only after a 2xx, so they survive an unreachable server.
        """
        if self._outbox is None or self.failures:
            return
        interval = min(self.config.telemetry_interval_s, self._outbox.config.upload_interval_s)
        due = time.monotonic() - self._telemetry_sent_t >= interval
        kinds = None if due else ["event"]
        for _ in range(10):  # bounded: one pass never blocks the loop for long
            try:
                items = self._outbox.batch(kinds=kinds)
            except Exception:  # pragma: no cover
                return
            if not items:
                break
            batch_id = hashlib.sha256("\n".join(i.uid for i in items).encode()).hexdigest()[:32]
            # the control plane validates each window as a telemetry Window document (the item's payload)
            windows = [i.payload for i in items if i.kind == "telemetry" and isinstance(i.payload, dict)]
            events = [i.wire() for i in items if i.kind != "telemetry"]
            try:
                self.director.telemetry(
                    self.creds.device_id,
                    TelemetryBatch(
                        batch_id=batch_id, device_id=self.creds.device_id, windows=windows, events=events
                    ),
                )
            except EdgefleetError as e:
                log.info("telemetry upload deferred: %s", e)
                return
            self._outbox.ack([i.id for i in items])
        if due:
            self._telemetry_sent_t = time.monotonic()


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}


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
