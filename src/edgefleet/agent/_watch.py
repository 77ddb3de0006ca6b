"""The watch window after an activation (commit or roll back), and rollbacks to a kept version.

Error rate and confidence are the live figures against the previous version's. Latency is not: a live p95
against a baseline taken before the window mistakes a busy CPU for a slow model. While watching, the agent
keeps a runner of the new and of the previous version and, at most every ``watch_look_interval_s``, takes
a paired look (``_paired.paired_look``: both timed interleaved on the golden inputs); the window fails on
latency only when ``_paired.latency_verdict`` says the last looks were all slow.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from edgefleet.agent._core import AgentCore
from edgefleet.agent._journal import WatchState
from edgefleet.agent._paired import PairedLook, latency_verdict, paired_look
from edgefleet.agent._store import StoredModel
from edgefleet.errors import EdgefleetError, NotFoundError
from edgefleet.protocol import GateThresholds, ModelHealth

__all__ = ["WatchWindow"]

log = logging.getLogger(__name__)

_MAX_LOOKS = 200  # looks kept in memory per window (the verdict needs the last few)


@dataclass
class _Looks:
    """The window's latency reference: runners of the new and the previous version, and the looks taken."""

    sha256: str
    run_new: Any = None
    run_old: Any = None
    rows_new: list[Any] = field(default_factory=list)
    rows_old: list[Any] = field(default_factory=list)
    looks: list[PairedLook] = field(default_factory=list)
    last_t: float = float("-inf")
    unavailable: str | None = None  # why latency is not compared in this window


class WatchWindow(AgentCore):
    """Compare a new version's live figures with the one before it; roll back to a kept version."""

    _watch_looks: _Looks | None = None

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
            if b.get("mean_confidence") and h.mean_confidence is not None:
                ratio = h.mean_confidence / b["mean_confidence"]
                if ratio < gates.min_confidence_ratio:
                    reasons.append(
                        f"mean confidence {ratio:.2f}x the previous version (< {gates.min_confidence_ratio})"
                    )
        latency = ""
        if not reasons:
            verdict, latency = self._latency(w, gates, done)
            if verdict == "fail":
                reasons.append(latency)
        if reasons:
            self._rollback_watch("watch window failed: " + "; ".join(reasons))
            return "rolled_back"
        if done:
            st.committed = w.sha256
            st.watch = None
            self._release_looks()
            self.journal.event(
                "committed", version=self._ver(w.sha256), requests=h.requests, latency=latency[:300]
            )
            self.journal.save()
            self._outbox_put("event", {"event": "committed", "sha256": w.sha256})
            self._gc()
            return "committed"
        return None

    # --- latency: paired looks ------------------------------------------------------------------

    def _latency(self, w: WatchState, gates: GateThresholds, done: bool) -> tuple[str, str]:
        """Take a paired look if one is due (and enough to judge at the end); return the verdict."""
        lk = self._looks_for(w)
        if lk.unavailable:
            return "pass", lk.unavailable
        cfg = self.config
        now = time.monotonic()
        due = 1 if now - lk.last_t >= cfg.watch_look_interval_s else 0
        if done:  # a short window still gets the looks its verdict needs
            due = max(due, cfg.watch_look_persistence - len(lk.looks))
        try:
            for _ in range(due):
                lk.looks.append(
                    paired_look(lk.run_new, lk.run_old, lk.rows_new, lk.rows_old, pairs=cfg.watch_look_pairs)
                )
                lk.last_t = time.monotonic()
        except EdgefleetError as e:
            lk.unavailable = f"latency not compared: a paired look failed ({e})"
            log.warning("%s", lk.unavailable)
            self._release_runners(lk)
            return "pass", lk.unavailable
        del lk.looks[:-_MAX_LOOKS]
        if lk.looks:
            w.looks += due
            w.last_ratio = round(lk.looks[-1].ratio, 3)
        return latency_verdict(
            lk.looks,
            max_ratio=gates.max_latency_ratio,
            slack_ms=cfg.watch_look_slack_ms,
            persistence=cfg.watch_look_persistence,
            done=done,
        )

    def _looks_for(self, w: WatchState) -> _Looks:
        """The window's runners (opened on first use, through the store: files re-checked)."""
        lk = self._watch_looks
        if lk is not None and lk.sha256 == w.sha256:
            return lk
        self._release_looks()
        lk = self._watch_looks = _Looks(w.sha256)
        if not w.previous or self.store.get(w.previous) is None:
            lk.unavailable = "no previous version on this device: latency not compared"
            return lk
        try:
            new_b, old_b = self.store.open(w.sha256), self.store.open(w.previous)
            raw = new_b.golden.inputs_raw
            new_feeds = new_b.model_inputs(raw)
            try:  # the same raw inputs through each version's own contract
                old_feeds = old_b.model_inputs(raw)
            except EdgefleetError:
                old_feeds = old_b.model_inputs(old_b.golden.inputs_raw)
            lk.rows_new, lk.rows_old = _rows(new_feeds), _rows(old_feeds)
            lk.run_new, lk.run_old = new_b.runner().run, old_b.runner().run
            lk.run_new(lk.rows_new[0])  # warm-up: first calls allocate
            lk.run_old(lk.rows_old[0])
        except (EdgefleetError, OSError, StopIteration) as e:
            lk.unavailable = f"latency not compared: no paired reference ({e})"
            log.warning("%s", lk.unavailable)
            self._release_runners(lk)
        return lk

    @staticmethod
    def _release_runners(lk: _Looks) -> None:
        lk.run_new = lk.run_old = None
        lk.rows_new, lk.rows_old = [], []

    def _release_looks(self) -> None:
        """Drop the window's runners (the previous version's session and its memory)."""
        lk, self._watch_looks = self._watch_looks, None
        if lk is not None:
            self._release_runners(lk)

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
        leaving = st.active
        self._begin_rollback(m.sha256, reason)
        error = self._finish_rollback(m.sha256, reason, auto=False)
        if error is not None:
            raise error
        if leaving and leaving != m.sha256:
            st.failed[leaving] = f"rolled back: {reason}"
            self.journal.save()
        return m

    def _begin_rollback(self, target: str, reason: str) -> None:
        st = self.journal.state
        st.rollback_to = target
        st.rollback_reason = reason
        self.journal.save()

    def _finish_rollback(self, target: str, reason: str, *, auto: bool) -> EdgefleetError | None:
        """Switch to a kept version; return the error (and stay where it was) if that version cannot load."""
        st = self.journal.state
        m = self.store.get(target)
        if m is None:
            st.rollback_to = None
            st.last_error = f"rollback target {target[:12]} vanished; staying on the current version"
            self.journal.save()
            return NotFoundError(st.last_error)
        if self.host is not None and getattr(self.host, "loaded", None) != m.bundle_dir:
            try:
                self.host.load(self.store.open(target))  # a kept version: its files re-checked first
            except EdgefleetError as e:  # changed on disk, or sealed with another key: not switched to
                st.rollback_to = st.rollback_reason = None
                st.failed[target] = f"kept version failed to load: {e}"[:1000]
                st.last_error = f"rollback to {m.version} refused: {e}; staying on the current version"
                self.journal.event("rollback_failed", to=m.version, reason=str(e)[:500])
                self.journal.save()
                log.error("%s", st.last_error)
                return e
        self.store.set_current(target)
        st.active = target
        st.committed = target
        st.watch = None
        self._release_looks()
        st.rollback_to = None
        st.rollback_reason = None
        st.last_error = f"rolled back to {m.version}: {reason}"
        self.journal.event("rolled_back", to=m.version, reason=reason[:500], auto=auto)
        self.journal.save()
        self._outbox_put("event", {"event": "rolled_back", "to": m.version, "reason": reason, "auto": auto})
        log.warning("rolled back to %s: %s", m.version, reason)
        return None


def _rows(feeds: dict[str, Any]) -> list[dict[str, Any]]:
    n = len(next(iter(feeds.values())))
    return [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]
