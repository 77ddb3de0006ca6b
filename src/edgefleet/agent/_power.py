"""The agent's device awareness: the state seam, the power/thermal policy, and what the agent does about it.

Each pass of the loop reads the device state (``AgentConfig.device_state``: sysfs, or a scripted trace
standing in for a battery and a thermal zone), evaluates the policy (``AgentConfig.device_policy``, else
``device_policy.yaml`` in the active bundle), logs every switch in the journal (so heartbeats carry it),
serves the smaller kept variant of the same model while a rule asks for it, widens the runtime's batching
delay, and defers downloads. The host's serving path obeys the governor's gate (rate limit, duty cycle,
paused escalation).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgefleet.agent._core import AgentCore
from edgefleet.errors import EdgefleetError
from edgefleet.protocol import Assignment

__all__ = ["DevicePower"]

log = logging.getLogger(__name__)


class DevicePower(AgentCore):
    """Mixed into :class:`~edgefleet.agent.Agent`: ``self.power`` is its ``DeviceGovernor``."""

    power: Any  # edgefleet.power.DeviceGovernor
    energy: Any  # edgefleet.power._energy.EnergyMeter
    _power_policy_sha: str | None  # the bundle whose policy is in force (None: the config's file)
    _power_small: tuple[str, str] | None  # (smaller variant served, the active version it stands in for)
    _power_deferred: str | None  # the assignment whose download was last reported deferred

    def _power_start(self) -> None:
        from edgefleet.power import DeviceGovernor, Policy, open_state_source

        metered = True if self.config.metered else None  # AgentConfig.metered: the link is known metered
        self.power = DeviceGovernor(
            open_state_source(self.config.device_state, speed=self.config.device_trace_speed, metered=metered)
        )
        self._power_policy_sha = None
        self._power_small = None
        self._power_deferred = None
        self._power_group: tuple[Any, str] | None = None  # (policy, source) the server pushes to the group
        self._power_group_etag: str | None = None
        if self.config.device_policy is not None:
            self.power.set_policy(Policy.from_yaml(self.config.device_policy), str(self.config.device_policy))
        from edgefleet.power._energy import EnergyMeter

        kind, _, root = self.config.device_state.partition(":")
        powercap = Path(root or "/") / "sys/class/powercap" if kind == "sysfs" else None
        self.energy = EnergyMeter(self.config.cpu_watts, powercap=powercap)

    def _energy_resources(self) -> dict[str, Any]:
        """Energy per inference since the last heartbeat (``power._energy``), from the host's cumulative
        request count the heartbeat has just read: computed here, never on the request path."""
        requests = getattr(self, "_health_pending", (0, 0))[0]
        try:
            return self.energy.sample(requests)
        except Exception:  # noqa: BLE001 - a figure must never stop a heartbeat
            return {}

    def _power_refresh_group(self) -> None:
        """Read the policy the server pushes to this device's group (with the telemetry; best effort:
        offline keeps the last one). It is in force over the bundle's; a configured file wins over both."""
        from edgefleet.agent._director import ServerUnreachable
        from edgefleet.power import Policy

        try:
            got = self.director.get(f"/v1/devices/{self.creds.device_id}/device-policy")
        except (ServerUnreachable, EdgefleetError) as e:
            log.info("device policy not refreshed: %s", e)
            return
        etag = got.get("etag")
        if etag == self._power_group_etag:
            return
        policy = None
        if got.get("policy") is not None:
            try:
                policy = Policy.from_data(got["policy"], origin=f"the server's {got.get('source')}")
            except EdgefleetError as e:
                self._error(f"device policy from the server ignored: {e.message}")
                return
        self._power_group_etag = etag
        self._power_group = (policy, str(got.get("source"))) if policy is not None else None
        self._power_policy_sha = "-"  # re-decide what is in force at the next pass
        self.journal.event("power_policy_source", source=str(got.get("source")))

    def _power_bundle_policy(self) -> None:
        """Take the group's policy the server pushed, else ``device_policy.yaml`` of the active bundle, when
        no policy file is configured."""
        from edgefleet.power import POLICY_FILE, Policy

        if self.config.device_policy is not None:
            return
        group = self._power_group
        if group is not None:
            if self._power_policy_sha != group[1]:
                self._power_policy_sha = group[1]
                self.power.set_policy(group[0], group[1])
            return
        cur = self.store.current()
        sha = cur.sha256 if cur else None
        if sha == self._power_policy_sha:
            return
        self._power_policy_sha = sha
        f = cur.bundle_dir / POLICY_FILE if cur else None
        if f is None or not f.is_file():
            self.power.set_policy(None)
            return
        try:  # the bundle's files were checked against its signed manifest when it was installed
            self.power.set_policy(Policy.from_yaml(f), f"{cur.name} {cur.version}")
        except EdgefleetError as e:
            self.power.set_policy(None)
            self._error(f"device policy in {cur.version} ignored: {e.message}")

    def _power_tick(self) -> None:
        """Read the device, apply the policy, log its switches, serve the variant it asks for."""
        if self.host is not None and getattr(self.host, "power_gate", False) is None:
            self.host.power_gate = self.power.gate  # the serving path obeys the policy's rate limit
        self._power_bundle_policy()
        switches = self.power.tick()
        for sw in switches:
            st = sw.state
            self.journal.event(
                "power_policy",
                rule=sw.rule,
                on=sw.on,
                battery_percent=st.get("battery_percent"),
                power_source=st.get("power_source"),
                temp_c=st.get("temp_c"),
                headroom_c=st.get("headroom_c"),
                **({"trace_t": st["trace_t"]} if st.get("trace_t") is not None else {}),
            )
        if switches:
            self._save_quietly()
        self._power_variant()
        self._power_batch_delay()

    def _power_batch_delay(self) -> None:
        """Widen the runtime's batching delay while a rule asks (``batch_delay_ms``), back when none does."""
        rt = getattr(self.host, "runtime", None)
        want = self.power.decision.batch_delay_ms
        if rt is None or not hasattr(rt, "set_batch_delay") or rt.batch_delay_ms == want:
            return
        rt.set_batch_delay(want)
        log.info(
            "batching delay %s", f"{want:g} ms (power policy)" if want is not None else "back to default"
        )

    def _power_variant(self) -> None:
        st = self.journal.state
        cur = self.store.current()
        if cur is None or self.host is None or st.pending is not None or st.watch is not None:
            return  # an update owns the host until it is activated and watched
        if self._power_small is not None and self._power_small[1] != cur.sha256:
            self._power_small = None  # an update activated a new version since: it is what serves
        want = self.power.decision.variant == "smaller"
        if want and self._power_small is None:
            kept = [m for m in self.store.list() if m.name == cur.name and m.length < cur.length]
            if not kept:
                return
            small = min(kept, key=lambda m: m.length)
            if self._power_load(small.sha256):
                self._power_small = (small.sha256, cur.sha256)
                self.journal.event(
                    "power_variant", serving=small.version, variant=small.variant, instead_of=cur.version
                )
                self._save_quietly()
        elif not want and self._power_small is not None and self._power_load(cur.sha256):
            self._power_small = None
            self.journal.event("power_variant", serving=cur.version, variant=cur.variant)
            self._save_quietly()

    def _power_load(self, sha: str) -> bool:
        try:
            self.host.load(self.store.open(sha))
            return True
        except EdgefleetError as e:
            self._error(f"power policy could not switch to {self._ver(sha)}: {e.message}")
            return False

    def _download_deferred(self, a: Assignment) -> bool:
        """True when a rule defers downloads and this assignment still needs one (reported once)."""
        if self.power.may("download"):
            self._power_deferred = None
            return False
        st = self.journal.state
        sha = (a.hashes.get("sha256") or "").lower()
        if sha == st.active or self.store.get(sha) is not None:
            return False  # nothing to download
        if (
            st.pending is not None
            and st.pending.sha256 == sha
            and st.pending.step not in ("assigned", "downloading")
        ):
            return False  # downloaded already: the rest of the update is local
        if self._power_deferred != sha:
            self._power_deferred = sha
            self.journal.event(
                "download_deferred", version=a.version, rules=",".join(self.power.decision.active)
            )
            self._save_quietly()
        return True

    def power_status(self) -> dict[str, Any]:
        """The governor's summary plus the variant served in place of the active one, if any."""
        out = self.power.summary()
        if self._power_small is not None:
            out["serving_instead"] = self._ver(self._power_small[0])
        return out
