"""Updates: assignment -> download (full or delta) -> stage -> health gate -> activate, and the journal
replay that finishes or undoes whatever a kill -9 interrupted.

Every step is written to the journal (tmp + fsync + rename) before its work begins, and every step is
idempotent. The bundle the store installs (verified once, by the bundle library) is the object the
health gate checks and the runtime serves; a step resumed after a restart opens the stored version again
with every file re-checked, since the disk may have changed in between.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet._fs import sha256_file
from edgefleet._tracing import span
from edgefleet.agent._core import AgentCore
from edgefleet.agent._director import ServerUnreachable
from edgefleet.agent._journal import PendingUpdate, WatchState
from edgefleet.agent._store import StoredModel
from edgefleet.errors import (
    BundleError,
    DiskSpaceError,
    DownloadError,
    EdgefleetError,
    HealthCheckError,
    VerificationError,
)
from edgefleet.protocol import Assignment, delta_target_path
from edgefleet.protocol._targets import edgefleet_custom

if TYPE_CHECKING:
    from edgefleet.bundle import Bundle

__all__ = ["UpdateSteps"]

log = logging.getLogger(__name__)


class UpdateSteps(AgentCore):
    """Install what the director assigned, one journaled step at a time; replay the journal at start."""

    health_gate: Callable[..., dict[str, Any]] | None
    on_progress: Callable[[int, int], None] | None
    _archive_checked: str | None  # sha256 of the archive this run's download step checked
    _staged: Bundle | None  # the bundle installed by this run, verified once, until it is activated

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
        version = p.assignment.version
        try:
            with span("edgefleet.agent.update", version=version, sha256=p.sha256, resumed_at=p.step):
                self._steps(p)
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

    def _steps(self, p: PendingUpdate) -> None:
        """The update's steps from where the journal says it stands, each an OpenTelemetry span."""
        version = p.assignment.version
        if p.step in ("assigned", "downloading"):
            with span("edgefleet.agent.update.download", version=version) as sp:
                info = self.repo.check_assignment(p.assignment)  # refreshes TUF metadata
                if self.store.get(p.sha256) is None:
                    self.journal.step("downloading")
                    b0 = self.fetcher.bytes_received
                    p.via = self._download(info, p)
                    self._archive_checked = p.sha256
                    got = self.fetcher.bytes_received - b0
                    self.journal.event("downloaded", version=version, via=p.via, bytes=got)
                    self.journal.step("downloaded")
                    if sp is not None:
                        sp.set_attributes({"via": p.via, "bytes": got})
                else:
                    self.journal.step("staged")  # a kept version: nothing to download
        if p.step in ("downloaded", "staging"):
            with span("edgefleet.agent.update.stage", version=version):
                self.journal.step("staging")
                self._stage(p)
                self.journal.event("staged", version=version)
                self.journal.step("staged")
        if p.step == "staged":
            with span("edgefleet.agent.update.health_gate", version=version):
                self.last_health = self._health_gate(p)
                self.journal.event("health_passed", version=version, **_scalars(self.last_health))
                self.journal.step("health_checked")
        if p.step in ("health_checked", "activating"):
            with span("edgefleet.agent.update.activate", version=version):
                self.journal.step("activating")
                self._activate(p)

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
            self._staged = None
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
        # Checked against the signed metadata by this run's download step, or hashed again after a restart.
        checked = self._archive_checked == p.sha256 and archive.exists()
        if not checked and (not archive.exists() or sha256_file(archive) != p.sha256):
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
        self._staged = self.store.install(
            archive,
            p.sha256,
            info,
            unpack_factor=self.config.unpack_factor,
            reserve_bytes=int(self.config.disk_reserve_mb * 2**20),
        )
        self._archive_checked = None
        archive.unlink(missing_ok=True)

    def _verified(self, p: PendingUpdate) -> Bundle:
        """The pending version's bundle: the one this run installed, or the stored one re-checked."""
        staged = self._staged
        if staged is not None and staged.root == self.store.models / p.sha256 / "bundle":
            return staged
        return self.store.open(p.sha256)

    def _health_gate(self, p: PendingUpdate) -> dict[str, Any]:
        m = self.store.get(p.sha256)
        if m is None:
            p.step = "assigned"
            raise DownloadError("staged version vanished; downloading again")
        gate = self.health_gate
        if gate is None:
            from edgefleet.agent._health import check_health

            gate = check_health
        return gate(self._verified(p), p.assignment.gates, host=self.host, config=self.config)

    def _activate(self, p: PendingUpdate) -> None:
        m = self.store.get(p.sha256)
        if m is None:
            p.step = "assigned"
            raise DownloadError("staged version vanished before activation; downloading again")
        bundle = self._verified(p)
        baseline = self._baseline()  # the old version's live figures; the new window starts now
        if self.host is not None:
            self.host.load(bundle)  # hot swap: requests in flight finish on the old model
            # Requests that waited on the swap belong to neither version: the watch starts after it.
            with contextlib.suppress(Exception):
                self.host.health(reset=True)
        self.store.set_current(p.sha256)
        self._staged = None
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


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}
