"""What the agent sends: heartbeats (status, health, events), queued events and telemetry windows through
the durable outbox; and the MQTT nudge listener that makes it poll now."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from typing import Any

from edgefleet.agent._core import AgentCore
from edgefleet.agent._director import ServerUnreachable
from edgefleet.errors import AuthError, EdgefleetError
from edgefleet.protocol import (
    ActiveModel,
    Heartbeat,
    HeartbeatResponse,
    ModelHealth,
    Resources,
    TelemetryBatch,
)

__all__ = ["Uplink"]

log = logging.getLogger(__name__)


class Uplink(AgentCore):
    """Heartbeats, the outbox (events, telemetry windows) and MQTT nudges."""

    _last_beat: float
    _beating: bool
    _queued_commands: list[str]
    _mqtt: Any
    _outbox: Any
    _events_sent_t: float
    _health_sent: tuple[int, int]
    _health_pending: tuple[int, int]
    _telemetry_sent_t: float
    _hardware_sent: bool

    # --- heartbeat -------------------------------------------------------------------------------

    def heartbeat(self) -> HeartbeatResponse | None:
        """Send status; return the response, or None when the server is unreachable (backoff)."""
        if self._beating:
            return None
        self._beating = True
        try:
            self._renew_certificate()
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
        self._note_wait(resp.wait_reason)
        # act only on the signed, fresh decision (DeviceIdentity.accept), never on the unsigned fields
        return self.identity.accept(resp, self.journal, self.creds.device_id)

    def _note_wait(self, reason: str | None) -> None:
        """Journal (once per change) why the control plane holds an update back (the group's update policy)."""
        if reason == getattr(self, "_wait_reason", None):
            return
        self._wait_reason = reason
        if reason:
            self.journal.event("update_waiting", reason=reason[:300])
            self._save_quietly()

    def _renew_certificate(self) -> None:
        """Renew the device certificate when less than a third of its lifetime is left (best effort)."""
        try:
            if self.identity.renewal_due():
                self.identity.renew(self.director.post, self.creds.device_id)
        except (EdgefleetError, OSError, ValueError) as e:
            log.warning("certificate renewal failed (the current one is used until it expires): %s", e)

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
            power = getattr(self, "power", None)  # the DeviceGovernor (agent/_power.py)
            st = power.state if power is not None else None
            return Resources(
                cpu_percent=proc.cpu_percent(None),
                rss_mb=proc.memory_info().rss / 2**20,
                disk_free_mb=shutil.disk_usage(self.state_dir).free / 2**20,
                temperature_c=st.temp_c if st else None,
                battery_percent=st.battery_percent if st else None,
                power_source=st.power_source if st else None,
                power_rules=[r[:64] for r in power.decision.active] if power is not None else None,
                power_switches=power.switch_count if power is not None else None,
                **(self._energy_resources() if hasattr(self, "_energy_resources") else {}),
                metered=(st.link == "metered") if st is not None and st.link is not None else None,
            )
        except Exception:  # pragma: no cover
            return Resources()

    # --- nudges, outbox, telemetry ---------------------------------------------------------------

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
        self._start_sampling()

    def _start_sampling(self) -> None:
        """Give the host a sampler whose policy follows the bundle and the server (``_samples``)."""
        from edgefleet.agent._samples import DeviceSampling

        self.sampling = DeviceSampling(
            self._outbox,
            self.director,
            self.creds.device_id,
            metered=self.link_metered,
            policy_interval_s=self.config.telemetry_interval_s,
        )
        if self.host is not None and hasattr(self.host, "sampler"):
            self.host.sampler = self.sampling.sampler
            self.host.on_load = self.sampling.bundle_loaded
            self.sampling.bundle_loaded(getattr(self.host, "loaded", None))

    def link_metered(self) -> bool:
        """Whether the uplink is metered now: ``AgentConfig.metered``, or the device state says so."""
        state = getattr(getattr(self, "power", None), "state", None)  # agent/_power.py's device state
        return bool(self.config.metered) or getattr(state, "link", None) == "metered"

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
        # samples have their own route (DeviceSampling.upload), after the telemetry
        kinds = [k for k in self._outbox.config.priorities if k != "sample"] if due else ["event"]
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
            if hasattr(self, "_power_refresh_group") and self.config.device_policy is None:
                self._power_refresh_group()  # agent/_power.py: the group's device policy
            sampling = getattr(self, "sampling", None)
            if sampling is not None:
                # the client and identity the agent holds now (enrollment or a test may replace them)
                sampling.director, sampling.device_id = self.director, self.creds.device_id
                sampling.refresh_policy()
                sampling.upload()
