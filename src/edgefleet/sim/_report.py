"""What ``edgefleet demo`` reports: the live device table, each rollout's record, the final summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.sim._demo_config import BAD, GOOD, NEW, DemoDevice
from edgefleet.sim._narrator import Narrator

if TYPE_CHECKING:
    from edgefleet.client import Client
    from edgefleet.sim._traffic import Traffic

__all__ = ["Reporting"]


class Reporting:
    """The reporting half of the demo's story (mixed into it): reads the state the story keeps."""

    n: Narrator
    api: Client | None
    url: str
    dir: Path
    t0: float
    devices: list[DemoDevice]
    traffic: Traffic | None
    summary: dict[str, Any]

    def _fleet(self) -> list[dict[str, Any]]:
        assert self.api is not None
        return self.api.devices(limit=1000)["devices"]

    def _render(self, ro: dict[str, Any], fleet: list[dict[str, Any]]) -> None:
        ev = ro.get("evaluation") or {}
        gates = []
        for g in ev.get("gates") or []:
            if g["status"] in ("pass", "fail"):
                v = f" {g['value']:.3g}" if isinstance(g.get("value"), (int, float)) else ""
                colour = "green" if g["status"] == "pass" else "red"
                gates.append(f"[{colour}]{g['name']}{v}[/]")
        c = ev.get("counts") or {}
        header = (
            f"[bold]{ro['name']} {ro['version']}[/] {ro['id']}: [bold]{ro['state']}[/] wave {ro['wave']}/"
            f"{len(ro['waves'])} ({ro['wave_percent']:g}%) - admitted {c.get('admitted', 0)}, installed "
            f"{c.get('installed', 0)}, reporting {c.get('reporting', 0)}; control group {ev.get('control_devices', 0)}"
            f" devices; soak {ev.get('soak_elapsed_s', 0):.0f}/{ev.get('soak_s', 0):.0f}s\n"
            f"gates: {', '.join(gates) or 'waiting for data'}"
        )
        by_id = {d["id"]: d for d in fleet}
        members = {m["device_id"]: m for m in ro.get("devices") or []}
        traffic = self.traffic.snapshot() if self.traffic else {}
        rows = []
        for dev in self.devices:
            d = by_id.get(dev.device_id) or {}
            t = traffic.get(dev.name, {})
            acc, conf = t.get("accuracy"), t.get("confidence")
            m = members.get(dev.device_id) or {}
            wave = {"admitted": f"wave {m.get('wave')}", "rolled_back": "rolled back"}.get(
                m.get("status"), "control"
            )
            rows.append(
                [
                    dev.name,
                    dev.device_class,
                    dev.region,
                    wave,
                    (d.get("active") or {}).get("version") or "-",
                    d.get("state") or "-",
                    str(t.get("requests", 0)),
                    f"{acc:.0%}" if acc is not None else "-",
                    f"{conf:.2f}" if conf is not None else "-",
                ]
            )
        self.n.live(
            header,
            ["device", "class", "region", "rollout", "version", "agent", "served", "accuracy", "confidence"],
            rows,
        )

    def _record(self, rollout_id: str, version: str, t0: float, restored_at: float | None = None) -> None:
        assert self.api is not None
        ro = self.api.rollout(rollout_id)
        audit = self.api.rollout_audit(rollout_id)
        waves = []
        failed: dict[str, Any] | None = None
        for a in audit:
            det = a["details"] or {}
            if a["action"] == "rollout.wave_passed":
                waves.append(_wave_entry(det, "passed", a["at"], t0))
            elif a["action"] == "rollout.gate_failed":
                failed = _wave_entry(det, "failed", a["at"], t0)
                failed["reason"] = det.get("reason")
                waves.append(failed)
        entry: dict[str, Any] = {
            "id": rollout_id,
            "version": version,
            "state": ro["state"],
            "waves": ro["waves"],
            "wave_reached": ro["wave"],
            "soak_s": ro["soak_s"],
            "reason": ro.get("reason"),
            "wave_results": waves,
            "failed_gates": failed["failed_gates"] if failed else [],
            "duration_s": round(time.time() - t0, 1),
        }
        if failed is not None:
            entry["gate_failed_at"] = failed["at_s"]
        if restored_at is not None and failed is not None:
            gate_t = t0 + failed["at_s"]
            entry["all_back_seen_by_server_s"] = round(restored_at - gate_t, 2)
        self.summary["rollouts"].append(entry)
        if failed:
            self.n.note(f"[red]gate failed[/] in wave {failed['wave']}: {failed.get('reason')}")
        else:
            self.n.note(
                f"v{version} reached {ro['wave_percent']:g}% of the fleet in {entry['duration_s']:.0f}s "
                f"({len(waves)} wave{'s' if len(waves) != 1 else ''} passed)"
            )

    # --- the end ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        from edgefleet.agent import agent_status

        self.n.step("What happened")
        fleet = {d["id"]: d for d in self._fleet()}
        traffic = self.traffic.snapshot() if self.traffic else {}
        bad = next((r for r in self.summary["rollouts"] if r["version"] == BAD), None)
        ever_bad, rolled_back_t = [], []
        devices = []
        for dev in self.devices:
            st = agent_status(dev.state_dir)
            hist = st["history"]
            ran = sorted(
                {e.get("version") for e in hist if e.get("event") == "activated" and e.get("version")}
            )
            served = sorted(traffic.get(dev.name, {}).get("by_version", {}))
            if BAD in ran or BAD in served:
                ever_bad.append(dev.name)
                rolled_back_t += [
                    e["t"] for e in hist if e.get("event") == "rolled_back" and e.get("to") == NEW
                ]
            d = fleet.get(dev.device_id) or {}
            devices.append(
                {
                    "name": dev.name,
                    "id": dev.device_id,
                    "class": dev.device_class,
                    "region": dev.region,
                    "state_dir": str(dev.state_dir),
                    "final_version": (d.get("active") or {}).get("version"),
                    "variant": (d.get("active") or {}).get("variant"),
                    "versions_activated": ran,
                    "served": traffic.get(dev.name, {}).get("by_version", {}),
                }
            )
        self.summary["devices"] = devices
        self.summary["final_versions"] = {d["name"]: d["final_version"] for d in devices}
        if bad is not None:
            wave1 = next((w for w in bad["wave_results"] if w["wave"] == 1), None)
            gate_abs = None
            audit = self.api.rollout_audit(bad["id"]) if self.api else []
            for a in audit:
                if a["action"] == "rollout.gate_failed":
                    gate_abs = a["at"]
            bad["devices_ever_ran"] = ever_bad
            bad["first_wave_devices"] = wave1["devices"] if wave1 else None
            if gate_abs is not None and rolled_back_t:
                bad["time_to_roll_back_s"] = round(max(rolled_back_t) - gate_abs, 2)
            bad["devices_on_bad_at_end"] = sum(1 for d in devices if d["final_version"] == BAD)
        by_rollout = {r["version"]: r for r in self.summary["rollouts"]}
        good = by_rollout.get(NEW, {})
        self.summary["ok"] = bool(
            by_rollout.get(GOOD, {}).get("state") == "completed"
            and good.get("state") == "completed"
            and bad is not None
            and bad["state"] == "rolled_back"
            and bad["failed_gates"]
            and bad.get("devices_on_bad_at_end") == 0
            and all(v == NEW for v in self.summary["final_versions"].values())
        )
        self.summary["duration_s"] = round(time.time() - self.t0, 1)
        self._final_tables(devices)

    def _final_tables(self, devices: list[dict[str, Any]]) -> None:
        rows = []
        for r in self.summary["rollouts"]:
            waves = []
            for w in r["wave_results"]:
                figs = _gate_figures(w["gates"])
                waves.append(
                    f"w{w['wave']} {w['percent']:g}% {w['result']} ({w['devices']} dev){': ' + figs if figs else ''}"
                )
            extra = ""
            if r["version"] == BAD:
                extra = (
                    f"ran it: {len(r.get('devices_ever_ran', []))} device(s) "
                    f"({', '.join(r.get('devices_ever_ran', [])) or '-'}); "
                    f"rolled back in {_fmt(r.get('time_to_roll_back_s'))}s after the gate failed"
                )
            rows.append(
                [r["version"], r["id"], r["state"], "\n".join(waves) or "-", f"{r['duration_s']:.0f}s", extra]
            )
        self.n.table(
            "rollouts",
            [
                "release",
                "rollout",
                "final state",
                "waves and the gate figures that decided",
                "took",
                "bad release",
            ],
            rows,
        )
        self.n.table(
            "devices",
            ["device", "class", "region", "final", "variant", "activated", "served (accuracy)"],
            [
                [
                    d["name"],
                    d["class"],
                    d["region"],
                    d["final_version"] or "-",
                    d["variant"] or "-",
                    ", ".join(d["versions_activated"]),
                    ", ".join(
                        f"{v}: {s['requests']} ({s['accuracy']:.0%})" for v, s in sorted(d["served"].items())
                    ),
                ]
                for d in devices
            ],
        )

    def explore(self, keep_running: bool) -> list[str]:
        d = self.dir
        tls = self.url.startswith("https:")
        tok = f"--token-file {d / 'server' / 'admin-token'}"
        if tls:
            tok += f" --ca {d / 'tls' / 'ca.crt'}"
        first = self.devices[0].name if self.devices else "DEVICE"
        bad = next((r["id"] for r in self.summary["rollouts"] if r["version"] == BAD), "ROLLOUT")
        scheme = "https" if tls else "http"
        server = f"--server {self.url}" if keep_running else f"--server {scheme}://127.0.0.1:8700"
        cmds = []
        if not keep_running:
            serve_tls = (
                f" --tls-cert {d / 'tls' / 'server.crt'} --tls-key {d / 'tls' / 'server.key'} "
                f"--ca {d / 'tls'} --device-auth mtls"
                if tls
                else ""
            )
            cmds.append(
                f"edgefleet server run --data {d / 'server'} --repo {d / 'repository'} "
                f"--keys {d / 'server' / 'keys'} --port 8700{serve_tls} &"
            )
        cmds += [
            f"edgefleet rollout list {server} {tok}",
            f"edgefleet rollout audit {bad} {server} {tok}",
            f"edgefleet devices list {server} {tok}",
            f"edgefleet agent status --state {d / 'devices' / first}",
            f"edgefleet registry list --repo {d / 'repository'}",
            f"less {d / 'optimize' / GOOD / 'report.md'}",
        ]
        return cmds


def _wave_entry(det: dict[str, Any], result: str, at: float, t0: float) -> dict[str, Any]:
    ev = det.get("evaluation") or {}
    counts = ev.get("counts") or {}
    return {
        "wave": det.get("wave"),
        "percent": ev.get("percent", det.get("percent")),
        "result": result,
        "at_s": round(at - t0, 2),
        "devices": counts.get("admitted"),
        "reporting": counts.get("reporting"),
        "reference": ev.get("reference_source"),
        "control_devices": ev.get("control_devices"),
        "failed_gates": ev.get("failed_gates") or [],
        "gates": {
            g["name"]: {k: g.get(k) for k in ("status", "value", "threshold", "reference")}
            for g in ev.get("gates") or []
        },
    }


def _gate_figures(gates: dict[str, dict[str, Any]]) -> str:
    """The judged ML gates of one wave in words: value, limit and the control group's figure."""
    out = []
    g = gates.get("confidence_ratio")
    if g and g["status"] in ("pass", "fail"):
        ref = f"; control mean confidence {g['reference']:.2f}" if g.get("reference") is not None else ""
        out.append(f"confidence ratio {g['value']:.2f} (min {g['threshold']:g}{ref})")
    g = gates.get("latency_p95_ratio")
    if g and g["status"] in ("pass", "fail"):
        ref = f"; control p95 {g['reference']:.2f} ms" if g.get("reference") is not None else ""
        out.append(f"p95 latency ratio {g['value']:.2f} (max {g['threshold']:g}{ref})")
    g = gates.get("error_rate")
    if g and g["status"] in ("pass", "fail"):
        out.append(f"error rate {g['value']:.1%} (max {g['threshold']:.1%})")
    g = gates.get("golden_pass_rate")
    if g and g["status"] in ("pass", "fail"):
        out.append(f"golden set passed on {g['value']:.0%}")
    return ", ".join(out)


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if isinstance(x, float) else str(x)
