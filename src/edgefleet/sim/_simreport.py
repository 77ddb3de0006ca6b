"""A scenario run's verdict and report: assertions on the outcome, Markdown + JSON, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write
from edgefleet.sim._scenario import SimScenario

__all__ = ["check", "heartbeat_quantiles", "overall", "peak_over_mean", "write_report"]

_LASTING = ("crash_loop", "clock_skew", "offline_mid_update", "drift")  # for_s 0: until the end of the run


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    """Histogram quantile (Prometheus' linear interpolation) of cumulative ``le -> count`` buckets."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank, prev_le, prev_n = q * items[-1][1], 0.0, 0.0
    for le, n in items:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 1.0)
        prev_le, prev_n = le, n
    return prev_le


def heartbeat_quantiles(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per interval between samples: heartbeat p50/p99 (server side, from /metrics) and requests/s."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        dt = b["t"] - a["t"]
        delta = {le: n - a["buckets"].get(le, 0.0) for le, n in b["buckets"].items()}
        if dt <= 0:
            continue
        p50, p99 = _quantile(delta, 0.5), _quantile(delta, 0.99)
        out.append(
            {
                "t": b["t"],
                "rps": round((b["heartbeats"] - a["heartbeats"]) / dt, 1),
                "p50_ms": None if p50 is None else round(p50 * 1000, 2),
                "p99_ms": None if p99 is None else round(p99 * 1000, 2),
            }
        )
    return out


def overall(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The server's heartbeat route over the whole run (first to last sample): heartbeats/s seen by the
    devices, and p50/p99 from the histogram's growth over the run (not a median of intervals)."""
    ok = [s for s in samples if s.get("buckets")]
    if len(ok) < 2 or ok[-1]["t"] <= ok[0]["t"]:
        return None
    a, b = ok[0], ok[-1]
    delta = {le: n - a["buckets"].get(le, 0.0) for le, n in b["buckets"].items()}
    p50, p99 = _quantile(delta, 0.5), _quantile(delta, 0.99)
    seconds = b["t"] - a["t"]
    cpu = [s.get("server_cpu_s") for s in (a, b)]
    return {
        "seconds": round(seconds, 1),
        "heartbeats": b["heartbeats"] - a["heartbeats"],
        "heartbeats_per_s": round((b["heartbeats"] - a["heartbeats"]) / seconds, 1),
        "server_requests": int(max(delta.values(), default=0)),
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "server_cpu_share": None if None in cpu else round((cpu[1] - cpu[0]) / seconds, 3),
    }


def peak_over_mean(result: dict[str, Any]) -> float | None:
    """Heartbeat rate's peak (one sampling interval) over its mean, from the first herd fault to the end."""
    herd = next((f for f in result["faults"] if f["kind"] == "herd"), None)
    if herd is None:
        return None
    rates = [r["rps"] for r in heartbeat_quantiles(result["samples"]) if r["t"] > herd["at_s"]]
    if not rates or sum(rates) == 0:
        return None
    return round(max(rates) / (sum(rates) / len(rates)), 2)


def check(sc: SimScenario, result: dict[str, Any]) -> list[str]:
    """What the scenario expected and did not get (empty: it passed)."""
    e, fails = sc.expect, []
    state = result["rollout"]["state"]
    if e.rollout_state and state != e.rollout_state:
        fails.append(f"rollout ended {state!r}, expected {e.rollout_state!r}")
    if e.all_on:
        version = sc.baseline.version if e.all_on == "baseline" else sc.candidate.version
        on = result["final_versions"].get(version, 0)
        if on != sc.devices:
            fails.append(f"{on}/{sc.devices} devices on {version} at the end, expected all")
    if e.max_bad_share is not None and result["ever_ran_candidate_share"] > e.max_bad_share:
        fails.append(
            f"{result['ever_ran_candidate_share']:.1%} of the fleet ran {sc.candidate.version}, "
            f"expected at most {e.max_bad_share:.1%}"
        )
    uploads = (result.get("telemetry") or {}).get("uploads") or {}
    errors5xx = sum(
        n
        for counts in (result["status_counts"], uploads)
        for code, n in counts.items()
        if code.startswith("5")
    )
    if errors5xx > e.max_server_errors:
        fails.append(f"devices saw {errors5xx} server errors (5xx), expected at most {e.max_server_errors}")
    if e.max_p99_ms is not None:
        o = result.get("overall") or overall(result["samples"])
        if o is None or o["p99_ms"] is None or o["p99_ms"] > e.max_p99_ms:
            fails.append(
                f"server heartbeat p99 {o and o['p99_ms']} ms over the run, expected under {e.max_p99_ms:g} ms"
            )
    if e.max_io_errors is not None:
        io = sum(n for k, n in result["status_counts"].items() if not k.isdigit())
        if io > e.max_io_errors:
            fails.append(f"devices saw {io} connection errors, expected at most {e.max_io_errors}")
    if e.max_peak_over_mean is not None:
        pm = peak_over_mean(result)
        if pm is None or pm > e.max_peak_over_mean:
            fails.append(f"heartbeat peak over mean {pm}, expected at most {e.max_peak_over_mean}")
    if e.drift_alert_regions is not None:
        got = result.get("drift_alert_regions") or []
        if sorted(got) != sorted(e.drift_alert_regions):
            fails.append(
                f"drift alerts open for regions {got or 'none'}, expected exactly {sorted(e.drift_alert_regions)}"
            )
    return fails


def write_report(sc: SimScenario, result: dict[str, Any], failures: list[str], out: Path) -> list[Path]:
    """report.json, report.md, versions.png and server.png in ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    series = heartbeat_quantiles(result["samples"])
    doc = {**result, "passed": not failures, "failures": failures, "server_series": series}
    doc["overall"] = result.get("overall") or overall(result["samples"])
    doc["samples"] = [{k: v for k, v in s.items() if k != "buckets"} for s in result["samples"]]
    paths = [out / "report.json", out / "report.md", out / "versions.png", out / "server.png"]
    atomic_write(paths[0], json.dumps(doc, indent=2, default=str).encode())
    atomic_write(paths[1], _markdown(sc, doc).encode())
    _plots(sc, doc, paths[2], paths[3])
    return paths


def _markdown(sc: SimScenario, d: dict[str, Any]) -> str:
    r = d["rollout"]
    lines = [
        f"# Scenario {sc.name}: {'passed' if d['passed'] else 'FAILED'}",
        "",
        sc.description.strip(),
        "",
        f"- devices: {d['devices']}, heartbeats: {d['heartbeats']}, run: {d['seconds']} s after the rollout began",
        f"- rollout {r['id']}: **{r['state']}** (first wave {r['first_wave']} devices; failed gates: "
        f"{', '.join(r['failed_gates'] or []) or 'none'})",
        f"- devices that ever ran {sc.candidate.version}: {d['ever_ran_candidate']} "
        f"({d['ever_ran_candidate_share']:.1%})",
        f"- at the end: {', '.join(f'{n} on {v}' for v, n in d['final_versions'].items())}",
        f"- answers the devices saw: {', '.join(f'{k}: {v}' for k, v in sorted(d['status_counts'].items()))}"
        + (
            f" (connection errors: {', '.join(f'{k} {v}' for k, v in sorted(d['error_kinds'].items()))})"
            if d.get("error_kinds")
            else ""
        ),
    ]
    st = d.get("setup") or {}
    if st:
        lines.append(
            f"- setup: server on {st['database']} ({st['server']}), devices in {st['device_workers']} worker "
            f"process(es) ({', '.join(str(w['devices']) + (' in netns ' + w['netns'] if w['netns'] else '') for w in d.get('workers') or [])}); "
            f"{st['protocol']}; downloads: {st['downloads']}"
        )
    if d.get("partitions_via"):
        lines.append(
            f"- partitions via **{d['partitions_via']}**"
            + (f" ({d['partitions_note']})" if d.get("partitions_note") else "")
        )
    cpu = [s.get("server_cpu_s") for s in d["samples"] if s.get("server_cpu_s") is not None]
    if len(cpu) >= 2 and d["samples"][-1]["t"] > 0:
        lines.append(
            f"- server CPU: {cpu[-1] - cpu[0]:.1f} s over the {d['samples'][-1]['t']:.0f} s run "
            f"({(cpu[-1] - cpu[0]) / d['samples'][-1]['t']:.0%} of one core)"
        )
    lines += [f"- **failed**: {f}" for f in d["failures"]]
    lines += ["", "## Rollout events", "", "| action | details |", "| --- | --- |"]
    for ev in r["events"]:
        det = {k: v for k, v in ev.items() if k not in ("action", "at")}
        lines.append(f"| {ev['action']} | {json.dumps(det, default=str)[:300]} |")
    lines += ["", "## Faults", "", "| kind | region | at (s) | what it did |", "| --- | --- | --- | --- |"]
    for f in d["faults"]:
        did = f.get("did") or {k: v for k, v in f.items() if k not in ("kind", "region", "at_s")}
        lines.append(
            f"| {f['kind']} | {f['region']} | {f['at_s']} | {did if isinstance(did, str) else json.dumps(did)} |"
        )
    tel = d.get("telemetry") or {}
    if tel.get("every_s"):
        lines += [
            "",
            "## Telemetry and alerts",
            "",
            f"{tel['windows_sent']} telemetry windows accepted (uploads: "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(tel['uploads'].items())) or 'none'}); open alerts "
            f"after the control plane's evaluation:",
            "",
        ]
        lines += [f"- {a['rule']}: {a['message']}" for a in d.get("alerts") or []] or ["- none"]
    ok = [s for s in d["server_series"] if s["p99_ms"] is not None]
    if ok:
        o = d.get("overall") or {}
        lines += [
            "",
            "## Server (heartbeat route, from its /metrics)",
            "",
            f"over the run ({o.get('seconds')} s after the rollout began): {o.get('heartbeats')} heartbeats answered, "
            f"{o.get('heartbeats_per_s')}/s; p50 {o.get('p50_ms')} ms, **p99 {o.get('p99_ms')} ms**; server CPU "
            f"{o.get('server_cpu_share')} of a core.",
            "",
            f"peak {max(s['rps'] for s in ok)} requests/s; worst interval p50 {max(s['p50_ms'] for s in ok)} ms, "
            f"p99 {max(s['p99_ms'] for s in ok)} ms. Plots: versions.png, server.png.",
        ]
    return "\n".join(lines) + "\n"


def _plots(sc: SimScenario, d: dict[str, Any], versions_png: Path, server_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in d["samples"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    for v in (sc.baseline.version, sc.candidate.version):
        ax.plot(t, [s["versions"].get(v, 0) for s in d["samples"]], label=v)
    for ev in d["rollout"]["events"]:
        if ev["action"] in ("rollout.wave_opened", "rollout.rolled_back", "rollout.completed") and "t" in ev:
            ax.axvline(ev["t"], color="grey", lw=0.5)
    for f in d["faults"]:
        end = (
            f["at_s"] + f["for_s"] if f.get("for_s") else (t[-1] if t and f.get("kind") in _LASTING else None)
        )
        ax.axvspan(f["at_s"], end if end and end > f["at_s"] else f["at_s"] + 0.1, color="red", alpha=0.15)
    ax.set(
        xlabel="seconds since the rollout began", ylabel="devices", title=f"{sc.name}: devices per version"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(versions_png, dpi=90)
    plt.close(fig)
    s = d["server_series"]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    a1.plot([x["t"] for x in s], [x["rps"] for x in s])
    a1.set(ylabel="heartbeats/s", title=f"{sc.name}: server")
    a2.plot([x["t"] for x in s], [x["p50_ms"] for x in s], label="p50")
    a2.plot([x["t"] for x in s], [x["p99_ms"] for x in s], label="p99")
    a2.set(xlabel="seconds since the rollout began", ylabel="ms")
    a2.legend()
    fig.tight_layout()
    fig.savefig(server_png, dpi=90)
    plt.close(fig)
