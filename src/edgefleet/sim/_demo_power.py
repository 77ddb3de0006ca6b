"""``edgefleet demo --story power``: devices on a draining, heating battery obey their power policy.

The story, with real agents, a real control plane and real ONNX Runtime inference: v1.0.0 of the digits
classifier is a small MLP (8 hidden units), v1.1.0 a larger one (128); both go out to every device, so
each device serves v1.1.0 and keeps v1.0.0. Then the devices are taken off mains: every agent restarts
reading a **scripted device-state trace** (a stand-in, so named: this machine has no battery and no
thermal zone) in which the battery drains from 100 % to 10 % and the hottest zone heats towards its
85 °C trip point over 60 s, with a 4 s fan kick in the middle, then the device is plugged in: it charges
and cools. Each agent runs the demo's device policy (``DIR/power/policy.yaml``): ``hot`` (less than
15 °C to the trip point) and ``low-battery`` (below 30 %) both serve the smaller kept version and lower
the rate; ``low-battery`` also defers downloads. While the battery is low a third release, v1.1.1, is
rolled out: the devices defer its download until the battery is above 35 % (the hysteresis) and then
install it. The story narrates each switch from the agents' journals; the summary lists them per device
with their times in the trace, against the points the trace and the policy configure (and the dwell).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from edgefleet.errors import ServerError
from edgefleet.sim._demo import _completed, _Demo
from edgefleet.sim._demo_config import GOOD, NEW
from edgefleet.sim._releases import ReleaseBuilder

__all__ = ["PowerDemo", "expected_switches", "power_policy", "power_trace", "trace_time"]

SMALL, LARGE, UPDATE = GOOD, NEW, "1.1.1"
TRIP_C = 85.0
DWELL_S = 10.0
HOT_HEADROOM, HOT_RELEASE = 15.0, 3.0  # on below 15 °C of headroom, off at 15 + 3
LOW_BATTERY, BATTERY_RELEASE = 30.0, 5.0  # on below 30 %, off at 30 + 5
DRAIN_S, TRACE_S = 60, 100
FAN_KICK = (36, 40)  # [start, end) trace seconds: the fan kicks in; the zone cools below the release point
SWITCH_LAG_S = 6.0  # most seconds between the trace crossing a point and the agent's switch (its loop)


def power_trace() -> list[dict[str, Any]]:
    """The scripted device: one row a second. Battery 100 % -> 10 % and 45 °C -> 80 °C (trip 85 °C) over
    60 s on battery, a fan kick at 36-40 s, then on mains: charging 1.5 %/s and cooling 1.2 °C/s."""
    rows = []
    for t in range(TRACE_S + 1):
        if t <= DRAIN_S:
            battery, source = 100 - 1.5 * t, "battery"
            temp = 62.0 if FAN_KICK[0] <= t < FAN_KICK[1] else min(80.0, 45 + 0.8 * t)
        else:
            battery, source = min(100.0, 10 + 1.5 * (t - DRAIN_S)), "ac"
            temp = max(45.0, 80 - 1.2 * (t - DRAIN_S))
        rows.append(
            {
                "t": t,
                "battery_percent": round(battery, 2),
                "power_source": source,
                "temp_c": round(temp, 2),
                "trip_c": TRIP_C,
            }
        )
    return rows


def power_policy() -> dict[str, Any]:
    """The demo's device policy (the agents read it from ``DIR/power/policy.yaml``)."""
    return {
        "min_dwell_s": DWELL_S,
        "rules": [
            {
                "name": "hot",
                "when": {"headroom_below": HOT_HEADROOM},
                "actions": {"variant": "smaller", "rate_limit_rps": 4},
                "hysteresis": {"temp_c": HOT_RELEASE},
            },
            {
                "name": "low-battery",
                "when": {"battery_below": LOW_BATTERY},
                "actions": {"variant": "smaller", "rate_limit_rps": 2, "defer": ["download"]},
                "hysteresis": {"battery_percent": BATTERY_RELEASE},
            },
        ],
    }


def expected_switches(rows: list[dict[str, Any]], dwell_s: float = DWELL_S) -> list[dict[str, Any]]:
    """Where the trace crosses the policy's points, row by row: each rule turns on at the first row past
    its point and off at the first row past the release point (point + hysteresis), a change never sooner
    than ``dwell_s`` after the last. ``held`` lists the rows where the release held but the dwell kept the
    rule on (the fan kick)."""
    tests = {
        "hot": (
            lambda r: TRIP_C - r["temp_c"] < HOT_HEADROOM,
            lambda r: TRIP_C - r["temp_c"] >= HOT_HEADROOM + HOT_RELEASE,
        ),
        "low-battery": (
            lambda r: r["battery_percent"] < LOW_BATTERY,
            lambda r: r["battery_percent"] >= LOW_BATTERY + BATTERY_RELEASE,
        ),
    }
    out = []
    for rule, (on_test, off_test) in tests.items():
        on, changed, held = False, None, []
        for r in rows:
            flip = off_test(r) if on else on_test(r)
            if not flip:
                continue
            if changed is not None and r["t"] - changed < dwell_s:
                held.append(r["t"])
                continue
            on, changed = not on, r["t"]
            out.append({"rule": rule, "on": on, "t": r["t"], "held_by_dwell": held})
            held = []
    return sorted(out, key=lambda e: e["t"])


def trace_time(e: dict[str, Any]) -> float | None:
    """The trace second of a ``power_policy`` journal event: ``trace_t`` where the agent records it, else
    the row its battery reading belongs to (the trace's battery is one-to-one with time on each source)."""
    if isinstance(e.get("trace_t"), int | float):
        return float(e["trace_t"])
    b = e.get("battery_percent")
    if not isinstance(b, int | float):
        return None
    return (100 - b) / 1.5 if e.get("power_source") == "battery" else DRAIN_S + (b - 10) / 1.5


class _PowerReleases(ReleaseBuilder):
    """Three digits MLPs: v1.0.0 small (8 hidden units), v1.1.0 and v1.1.1 larger (128)."""

    def _train(self) -> tuple[dict[str, Path], Any]:
        import numpy as np

        from edgefleet.examples import digits, train_digits_mlp

        s = self.cfg.seed
        self.n.step("Training three releases of a digits classifier (scikit-learn MLP -> ONNX)")
        data = digits(seed=0)
        plan = [
            (SMALL, (8,), s, "small model (8 hidden units): what a device falls back to"),
            (LARGE, (128,), s + 1, "larger model (128 hidden units)"),
            (UPDATE, (128,), s + 2, "larger model retrained with another seed"),
        ]
        models = {}
        for version, hidden, seed, what in plan:
            path = self.dir / "models" / f"digits-{version}.onnx"
            acc = train_digits_mlp(path, hidden=hidden, seed=seed, max_iter=200, data=data)
            models[version] = path
            self.releases[version] = {"version": version, "trained": what, "test_accuracy": round(acc, 4)}
            self.n.note(f"v{version}: {what}; test accuracy {acc:.1%}")
        np.savez(self.dir / "data" / "calib.npz", input=(data.x_train[:128] / 16.0).astype(np.float32))
        np.savez(
            self.dir / "data" / "eval.npz", input=(data.x_test / 16.0).astype(np.float32), labels=data.y_test
        )
        return models, data


class PowerDemo(_Demo):
    """The power story; reuses the rollout story's server, agents, traffic and rollout following."""

    def run(self) -> dict[str, Any]:
        self._prepare_dir()
        builder = _PowerReleases(self.cfg, self.n, self.dir, self.summary, versions=(SMALL, LARGE, UPDATE))
        data = builder.build()
        self.releases = builder.releases
        self.summary["story"] = "power"
        self.summary["failure_mode"] = (
            "no failure: a scripted battery-and-heat trace (a stand-in for hardware this machine lacks) "
            "drives each device's power policy"
        )
        self._start_server()
        self._enroll_and_start_agents()
        self._start_traffic(data)
        self.n.live_start()
        try:
            self._rollout_everyone()  # v1.0.0, the small one
            self._rollout_larger()
            self._unplug()
            self._watch()
        finally:
            self.n.live_stop()
        self._finish_power()
        return self.summary

    # --- steps -----------------------------------------------------------------------------------

    def _one_wave_gates(self) -> dict[str, Any]:
        return {
            "min_devices": self.cfg.min_devices,
            "min_requests": self.cfg.min_requests,
            "latency_look_s": self.cfg.latency_look_s,
        }

    def _rollout_larger(self) -> None:
        self.n.step(f"Rolling out v{LARGE} (the larger model) to every device; v{SMALL} stays kept on each")
        r = self._create(LARGE, [100.0], 0.0, self._one_wave_gates())
        t0 = time.time()
        self._follow(r["id"], LARGE, lambda ro, f: _completed(ro) and self._all_on(f, LARGE, idle=True))
        self._record(r["id"], LARGE, t0)

    def _unplug(self) -> None:
        """Write the trace and the policy, and restart every agent on them (taken off mains)."""
        d = self.dir / "power"
        d.mkdir(exist_ok=True)
        self.trace_rows = power_trace()
        self.trace_file = d / "trace.yaml"
        self.policy_file = d / "policy.yaml"
        self.trace_file.write_text(
            "# a scripted device (stand-in for a battery and a thermal zone this machine lacks)\n"
            + yaml.safe_dump(self.trace_rows, sort_keys=False)
        )
        self.policy_file.write_text(yaml.safe_dump(power_policy(), sort_keys=False))
        self.expected = expected_switches(self.trace_rows)
        self.n.step(
            "The devices are taken off mains: each agent restarts reading a scripted battery-and-heat trace "
            "(a stand-in: this machine has no battery or thermal zone) and the demo's device policy"
        )
        self.n.note(
            f"trace {self.trace_file}: battery 100% -> 10% and 45 -> 80 °C (trip {TRIP_C:g} °C) over "
            f"{DRAIN_S}s, a fan kick at {FAN_KICK[0]}-{FAN_KICK[1]}s, then charging and cooling to "
            f"{TRACE_S}s"
        )
        self.n.note(
            f"policy {self.policy_file}: hot (headroom < {HOT_HEADROOM:g} °C, off at "
            f"{HOT_HEADROOM + HOT_RELEASE:g}): smaller model, 4/s; low-battery (< {LOW_BATTERY:g}%, off at "
            f"{LOW_BATTERY + BATTERY_RELEASE:g}%): smaller model, 2/s, downloads deferred; a rule changes "
            f"at most once per {DWELL_S:g}s"
        )
        self.n.note(
            "the points this trace crosses: "
            + ", ".join(f"{e['rule']} {'on' if e['on'] else 'off'} at {e['t']}s" for e in self.expected)
        )
        env = {
            "EDGEFLEET_AGENT_HISTORY_EVENTS": "500",
            "EDGEFLEET_AGENT_BACKOFF_MAX_S": "5",
            "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "10",
            **self.agent_env,
            "EDGEFLEET_AGENT_DEVICE_STATE": f"scripted:{self.trace_file}",
            "EDGEFLEET_AGENT_DEVICE_POLICY": str(self.policy_file),
        }
        names = {dev.name for dev in self.devices}
        old = [c for c in self.sup.children if c.name in names]
        self.sup.stop(old)
        for c in old:  # stopped: kept aside so that the supervisor's liveness checks skip them
            self.sup.children.remove(c)
        self.retired = old
        self.restarted_at: dict[str, float] = {}
        for dev, c in zip(self.devices, old, strict=True):
            self.sup.spawn(dev.name, list(c.proc.args), self.dir / "logs" / f"{dev.name}.log", env)
            self.restarted_at[dev.name] = time.time()
        self._wait(
            lambda: all(
                (d.get("resources") or {}).get("power_switches") is not None
                for d in self._fleet()
                if d["id"] in {x.device_id for x in self.devices}
            ),
            self.cfg.start_timeout_s,
            "every agent to report its device state",
        )

    def _journal(self, name: str) -> list[dict[str, Any]]:
        """The agent's journal events since it restarted on the trace (read-only; the agent writes it
        atomically)."""
        dev = next(d for d in self.devices if d.name == name)
        try:
            hist = json.loads((dev.state_dir / "journal.json").read_text()).get("history") or []
        except (OSError, ValueError):
            return []
        since = self.restarted_at[name]
        return [e for e in hist if isinstance(e, dict) and e.get("t", 0) >= since]

    def _watch(self) -> None:
        """Follow the trace: narrate each switch, roll v1.1.1 out while the batteries are low, and wait
        until the trace is over, every rule is off and every device runs v1.1.1."""
        assert self.api is not None
        self.n.step("Following the devices through the trace (switches from the agents' journals)")
        seen: dict[str, int] = {d.name: 0 for d in self.devices}
        self.trace_start: dict[str, float] = {}
        self.rate_samples: list[tuple[float, dict[str, Any]]] = []  # (wall time, traffic snapshot)
        rollout: dict[str, Any] | None = None
        self.update_rollout_t0 = 0.0
        deadline = time.monotonic() + TRACE_S + self.cfg.phase_timeout_s
        while True:
            self.sup.check()
            journals = {d.name: self._journal(d.name) for d in self.devices}
            for name, events in journals.items():
                for e in events[seen[name] :]:
                    self._narrate(name, e)
                seen[name] = len(events)
            fleet = self._fleet()
            if self.traffic is not None:
                self.rate_samples.append((time.time(), self.traffic.snapshot()))
            self._render_power(fleet, journals)
            low = all(
                any(e.get("event") == "power_policy" and e.get("rule") == "low-battery" for e in ev)
                for ev in journals.values()
            )
            if rollout is None and low:
                self.n.step(
                    f"Rolling out v{UPDATE} while the batteries are low: the devices defer its download"
                )
                rollout = self._create(UPDATE, [100.0], 0.0, self._one_wave_gates())
                self.update_rollout_t0 = time.time()
            if rollout is not None:
                ro = self.api.rollout(rollout["id"])
                over = all(time.time() - t > TRACE_S + 2 for t in self.restarted_at.values())
                rules_off = all(
                    not (d.get("resources") or {}).get("power_rules")
                    for d in fleet
                    if d["id"] in {x.device_id for x in self.devices}
                )
                if over and rules_off and _completed(ro) and self._all_on(fleet, UPDATE, idle=True):
                    self._record(rollout["id"], UPDATE, self.update_rollout_t0)
                    return
            if time.monotonic() > deadline:
                raise ServerError(
                    "the power story did not end in time: "
                    + ("no device reported low-battery" if rollout is None else f"rollout {rollout['id']}"),
                    hint=f"see the logs in {self.dir / 'logs'} and the trace in {self.dir / 'power'}",
                )
            time.sleep(0.5)

    def _narrate(self, name: str, e: dict[str, Any]) -> None:
        kind = e.get("event")
        t = trace_time(e) if kind == "power_policy" else None
        if t is not None:
            self.trace_start.setdefault(name, e["t"] - t)
        elif name in self.trace_start:
            t = e["t"] - self.trace_start[name]
        at = f"t={t:.0f}s" if t is not None else f"{e['t'] - self.restarted_at[name]:.0f}s after restart"
        if kind == "power_policy":
            state = (
                f"battery {_num(e.get('battery_percent'))}% ({e.get('power_source') or '?'}), "
                f"{_num(e.get('temp_c'))} °C, {_num(e.get('headroom_c'))} °C to the trip point"
            )
            self.n.note(
                f"{name} {at}: rule [bold]{e.get('rule')}[/] {'on' if e.get('on') else 'off'} ({state})"
            )
        elif kind == "power_variant":
            instead = f" instead of v{e['instead_of']}" if e.get("instead_of") else ""
            self.n.note(f"{name} {at}: serves v{e.get('serving')} ({e.get('variant')}){instead}")
        elif kind == "download_deferred":
            self.n.note(f"{name} {at}: download of v{e.get('version')} deferred ({e.get('rules')})")
        elif kind == "activated":
            self.n.note(f"{name} {at}: v{e.get('version')} activated")

    def _render_power(self, fleet: list[dict[str, Any]], journals: dict[str, list[dict[str, Any]]]) -> None:
        by_id = {d["id"]: d for d in fleet}
        traffic = self.traffic.snapshot() if self.traffic else {}
        rows = []
        for dev in self.devices:
            r = (by_id.get(dev.device_id) or {}).get("resources") or {}
            t = traffic.get(dev.name, {})
            rows.append(
                [
                    dev.name,
                    f"{time.time() - self.restarted_at[dev.name]:.0f}s",
                    f"{_num(r.get('battery_percent'))}% {r.get('power_source') or ''}",
                    f"{_num(r.get('temperature_c'))} °C",
                    ", ".join(r.get("power_rules") or []) or "normal",
                    str(r.get("power_switches", "-")),
                    t.get("last_version") or "-",
                    str(t.get("requests", 0)),
                    str(t.get("rate_limited", 0)),
                ]
            )
        self.n.live(
            f"scripted trace ({TRACE_S}s); heartbeats as the control plane sees them",
            [
                "device",
                "trace",
                "battery",
                "temp",
                "rules on",
                "switches",
                "serving",
                "served",
                "refused (429)",
            ],
            rows,
        )

    # --- the end ---------------------------------------------------------------------------------

    def _finish_power(self) -> None:
        self.n.step("What happened")
        fleet = {d["id"]: d for d in self._fleet()}
        traffic = self.traffic.snapshot() if self.traffic else {}
        devices, rows, ok = [], [], True
        for dev in self.devices:
            events = self._journal(dev.name)
            pol = [e for e in events if e.get("event") == "power_policy"]
            t_first = trace_time(pol[0]) if pol else None
            start = pol[0]["t"] - t_first if t_first is not None else self.restarted_at[dev.name]

            def at(e: dict[str, Any], start: float = start) -> float:
                return round(e["t"] - start, 1)

            switches = [
                {
                    "rule": e["rule"],
                    "on": bool(e["on"]),
                    "t": trace_time(e),
                    "battery_percent": e.get("battery_percent"),
                    "power_source": e.get("power_source"),
                    "temp_c": e.get("temp_c"),
                    "headroom_c": e.get("headroom_c"),
                }
                for e in pol
            ]
            variants = [
                {"t": at(e), "serving": e.get("serving"), "instead_of": e.get("instead_of")}
                for e in events
                if e.get("event") == "power_variant"
            ]
            deferred = [
                {"t": at(e), "version": e.get("version"), "rules": e.get("rules")}
                for e in events
                if e.get("event") == "download_deferred"
            ]
            activated = [
                {"t": at(e), "version": e.get("version")} for e in events if e.get("event") == "activated"
            ]
            checks = self._check(switches, variants, deferred, activated)
            rates = self._rates(dev.name, start, switches)
            hb = (fleet.get(dev.device_id) or {}).get("resources") or {}
            checks["heartbeat_counts_the_switches"] = hb.get("power_switches") == len(switches)
            ok = ok and all(checks.values())
            t = traffic.get(dev.name, {})
            devices.append(
                {
                    "name": dev.name,
                    "id": dev.device_id,
                    "class": dev.device_class,
                    "state_dir": str(dev.state_dir),
                    "switches": switches,
                    "variants": variants,
                    "downloads_deferred": deferred,
                    "activated": activated,
                    "heartbeat": {k: hb.get(k) for k in ("power_switches", "power_rules", "battery_percent")},
                    "served": t.get("by_version", {}),
                    "refused_429": t.get("rate_limited", 0),
                    "served_per_s": rates,
                    "final_version": ((fleet.get(dev.device_id) or {}).get("active") or {}).get("version"),
                    "checks": checks,
                }
            )
            for s in switches:
                exp = next(
                    (x["t"] for x in self.expected if x["rule"] == s["rule"] and x["on"] == s["on"]), None
                )
                rows.append(
                    [
                        dev.name,
                        s["rule"],
                        "on" if s["on"] else "off",
                        _num(s["t"]),
                        _num(exp),
                        f"{_num(s['battery_percent'])}% {s['power_source'] or ''}",
                        f"{_num(s['temp_c'])} °C ({_num(s['headroom_c'])} to trip)",
                    ]
                )
        self.n.table(
            "switches per device (trace seconds; expected: where the trace crosses the policy's points)",
            ["device", "rule", "", "at", "expected", "battery", "temperature"],
            rows,
        )
        self.n.table(
            "what the devices did",
            [
                "device",
                "served (requests)",
                "refused (429)",
                "answers/s by phase",
                "download deferred",
                "final",
                "checks",
            ],
            [
                [
                    d["name"],
                    ", ".join(f"v{v}: {s['requests']}" for v, s in sorted(d["served"].items())),
                    str(d["refused_429"]),
                    " | ".join(
                        f"{'+'.join(r['rules']) or 'normal'} {r['served_per_s']:g}" for r in d["served_per_s"]
                    ),
                    ", ".join(f"v{x['version']} at {x['t']:.0f}s" for x in d["downloads_deferred"]) or "-",
                    d["final_version"] or "-",
                    "all pass"
                    if all(d["checks"].values())
                    else ", ".join(k for k, v in d["checks"].items() if not v),
                ]
                for d in devices
            ],
        )
        self.summary.update(
            {
                "ok": ok,
                "power": {
                    "trace_file": str(self.trace_file),
                    "policy_file": str(self.policy_file),
                    "policy": power_policy(),
                    "expected": self.expected,
                    "switch_lag_allowed_s": SWITCH_LAG_S,
                    "devices": devices,
                },
                "final_versions": {d["name"]: d["final_version"] for d in devices},
                "duration_s": round(time.time() - self.t0, 1),
            }
        )

    def _rates(self, name: str, start: float, switches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answers and refusals per second of one device between its switches (from the traffic
        generator's counts sampled while the trace ran): the rate the policy let through."""
        cuts = [0.0, *(s["t"] for s in switches if isinstance(s["t"], int | float)), float(TRACE_S)]
        out = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            inside = [(w, snap[name]) for w, snap in self.rate_samples if a + 1 <= w - start <= b - 1]
            if len(inside) < 2 or inside[-1][0] - inside[0][0] < 2:
                continue
            (w0, s0), (w1, s1) = inside[0], inside[-1]
            on: set[str] = set()
            for x in switches:  # the rules on during this window: replay the switches before it
                if isinstance(x["t"], int | float) and x["t"] <= a:
                    (on.add if x["on"] else on.discard)(x["rule"])
            rules = sorted(on)
            out.append(
                {
                    "from_t": round(a, 1),
                    "to_t": round(b, 1),
                    "rules": rules,
                    "served_per_s": round((s1["requests"] - s0["requests"]) / (w1 - w0), 2),
                    "refused_per_s": round((s1["rate_limited"] - s0["rate_limited"]) / (w1 - w0), 2),
                }
            )
        return out

    def _check(
        self,
        switches: list[dict[str, Any]],
        variants: list[dict[str, Any]],
        deferred: list[dict[str, Any]],
        activated: list[dict[str, Any]],
    ) -> dict[str, bool]:
        """The device's record against the trace's points: same switches, each within the agent's loop lag
        of its point, none sooner than the dwell after the last change of its rule."""
        exp = self.expected
        got = [(s["rule"], s["on"]) for s in switches]
        same = got == [(e["rule"], e["on"]) for e in exp]
        timely = same and all(
            isinstance(s["t"], int | float) and e["t"] - 1.0 <= s["t"] <= e["t"] + SWITCH_LAG_S
            for s, e in zip(switches, exp, strict=True)
        )
        dwell = True
        for rule in {s["rule"] for s in switches}:
            ts = [s["t"] or 0.0 for s in switches if s["rule"] == rule]
            dwell = dwell and all(b - a >= DWELL_S for a, b in zip(ts, ts[1:], strict=False))
        low_off = next((s["t"] for s in switches if s["rule"] == "low-battery" and not s["on"]), None)
        return {
            "switches_at_the_configured_points": timely,
            "no_change_within_the_dwell": dwell,
            "served_the_smaller_version": any(
                v["serving"] == SMALL and v["instead_of"] == LARGE for v in variants
            )
            and bool(variants)
            and variants[-1]["serving"] != SMALL,
            "download_deferred": any(d["version"] == UPDATE for d in deferred),
            "installed_after_the_battery_recovered": low_off is not None
            and any(a["version"] == UPDATE and a["t"] >= low_off for a in activated),
        }

    def close(self) -> None:
        super().close()
        retired = [{"name": c.name, "pid": c.proc.pid} for c in getattr(self, "retired", [])]
        self.summary["processes"]["started"][:0] = retired  # the agents before they were unplugged

    def explore(self, keep_running: bool) -> list[str]:
        d = self.dir
        conn = f"--token-file {d / 'server' / 'admin-token'}" + (
            f" --ca {self.ca_file}" if self.ca_file else ""
        )
        server = f"--server {self.url}" if keep_running else "--server URL (after edgefleet server run)"
        first = self.devices[0].name if self.devices else "DEVICE"
        return [
            f"edgefleet devices list {server} {conn}",
            f"edgefleet agent status --state {d / 'devices' / first}",
            f"less {d / 'power' / 'trace.yaml'}",
            f"less {d / 'power' / 'policy.yaml'}",
            f"{sys.executable} -m json.tool {d / 'summary.json'}",
        ]


def _num(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, int | float) else "-"
