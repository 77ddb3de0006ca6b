"""The watch window after an activation (commit or roll back), and rollbacks to a kept version."""

from __future__ import annotations

import contextlib
import logging
import time

from edgefleet.agent._core import AgentCore
from edgefleet.agent._store import StoredModel
from edgefleet.errors import EdgefleetError, NotFoundError
from edgefleet.protocol import ModelHealth

__all__ = ["WatchWindow"]

log = logging.getLogger(__name__)


class WatchWindow(AgentCore):
    """Compare a new version's live figures with the one before it; roll back to a kept version."""

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
                self.host.load(self.store.open(target))  # a kept version: its files re-checked first
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
