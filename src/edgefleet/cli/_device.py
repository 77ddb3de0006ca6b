"""``edgefleet device probe | fit | state | policy``: what this device is, whether a model fits one, and
what its power and thermal policy would do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgefleet.cli._common import console, print_json
from edgefleet.errors import InputError

device_app = typer.Typer(
    help="Probe this device, predict whether a model fits another, replay power/thermal policies.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(device_app, name="device")


def _show_profile(p: dict[str, Any]) -> None:
    d = p.get("device") or {}
    t = Table(title=f"device profile: {p['name']}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    rows = [
        ("cpu", f"{d.get('cpu_model')} ({p['arch']}, {p['cores']} cores)"),
        ("isa flags", " ".join(p["isa_flags"]) or "-"),
        ("ram / free disk", f"{p['ram_mb']} MiB / {d.get('disk_free_mb')} MiB"),
        ("onnxruntime", f"{p['onnxruntime']} ({', '.join(p['execution_providers'])})"),
        ("hardware class", p["device_class"]),
        (
            "compute score",
            "not measured" if p["compute_score"] is None else f"{p['compute_score']:.1f} GFLOP/s",
        ),
    ]
    cg = d.get("cgroup")
    if cg:
        q, m = cg.get("cpu_quota_cores"), cg.get("memory_max_bytes")
        cpu = f"cpu {q:g} cores" if q else "cpu unlimited"
        rows.append(("cgroup", cpu + (f", memory {m / 2**20:.0f} MiB" if m else ", memory unlimited")))
    else:
        rows.append(("cgroup", "no cgroup v2 hierarchy"))
    zones = d.get("thermal_zones") or []
    rows.append(
        (
            "thermal zones",
            ", ".join(
                f"{z['type']} {z['temp_c']} °C (trip {min((t for _, t in z['trips']), default='-')})"
                for z in zones
            )
            or "none",
        )
    )
    supplies = d.get("power_supplies") or []
    rows.append(
        (
            "power supplies",
            ", ".join(
                f"{s['name']} {s['type']}"
                + (
                    f" {s['capacity_percent']:.0f}% {s['status']}"
                    if s["capacity_percent"] is not None
                    else ""
                )
                + (" online" if s["online"] else "")
                for s in supplies
            )
            or "none (mains only)",
        )
    )
    rows.append(
        ("energy counters", ", ".join(c["name"] for c in d.get("energy_counters") or []) or "none (no RAPL)")
    )
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)


@device_app.command("probe")
def probe_cmd(
    out: Path | None = typer.Option(None, "--out", "-o", help="write the profile here (.yaml/.yml or .json)"),
    name: str | None = typer.Option(None, "--name", help="profile name (default: host name)"),
    disk: Path = typer.Option(Path("/"), "--disk", help="report free space of this directory's filesystem"),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="run the ~1 s compute micro-benchmark"),
    json_out: bool = typer.Option(False, "--json", help="print the profile as JSON"),
) -> None:
    """Describe this device: CPU, ISA flags, memory, cgroup limits, ONNX Runtime, thermal zones, power
    supplies, energy counters and a measured compute score. ``--out`` feeds ``optimize --profile`` and
    ``device fit --profile``."""
    from edgefleet.power._profile import probe_device, write_profile

    if out is not None and out.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise InputError(
            f"--out {out}: the profile is written as .yaml, .yml or .json", hint="e.g. --out pi4.yaml"
        )
    profile = probe_device(disk, name=name, measure=measure)
    if out is not None:
        write_profile(profile, out)
    if json_out:
        print_json(profile)
        return
    _show_profile(profile)
    if out is not None:
        console.print(f"written to {out}")


@device_app.command("fit")
def fit_cmd(
    model: Path = typer.Argument(..., help="bundle (directory or archive) or .onnx model"),
    profile: Path = typer.Option(..., "--profile", help="device profile written by `edgefleet device probe`"),
    threads: int = typer.Option(1, "--threads", min=1, max=256, help="inference threads on the device"),
    runs: int = typer.Option(200, "--runs", min=10, max=100_000, help="timed runs here"),
    json_out: bool = typer.Option(False, "--json", help="print the prediction as JSON"),
) -> None:
    """Predict the model's p50 latency and memory on the profiled device (measured here, scaled by the
    compute scores and usable cores) with a verdict and its reasons. Exits 1 when it does not fit."""
    from edgefleet.optimize import DeviceProfile
    from edgefleet.power._fit import fit_model

    rep = fit_model(model, DeviceProfile.from_yaml(profile), threads=threads, runs=runs)
    if json_out:
        print_json(rep.to_dict())
    else:
        t = Table(
            title=f"{rep.model} on {rep.profile} ({rep.threads} thread{'s' if rep.threads > 1 else ''})"
        )
        for col in ("measured p50 here", "predicted p50", "predicted memory", "verdict"):
            t.add_column(col)
        t.add_row(
            f"{rep.measured_p50_ms:.3f} ms",
            "-" if rep.predicted_p50_ms is None else f"{rep.predicted_p50_ms:.3f} ms",
            "-" if rep.predicted_rss_mb is None else f"{rep.predicted_rss_mb:.1f} MiB",
            rep.verdict,
        )
        console.print(t)
        for r in rep.reasons:
            console.print(f"  - {r}", highlight=False)
    if rep.verdict == "does not fit":
        raise typer.Exit(1)


@device_app.command("state")
def state_cmd(
    source: str = typer.Option("sysfs", "--source", help="sysfs, sysfs:ROOT or scripted:TRACE (a stand-in)"),
    json_out: bool = typer.Option(False, "--json", help="print the reading as JSON"),
) -> None:
    """One reading of the device state the policies see: battery, power source, temperature and headroom to
    the trip point, link, local hour, CPU pressure, energy counter."""
    from edgefleet.power._state import open_state_source

    s = open_state_source(source).read().to_dict()
    if json_out:
        print_json(s)
        return
    t = Table(title=f"device state ({s['source']})", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in s.items():
        if k != "source":
            t.add_row(k, "unknown" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)))
    console.print(t)


@device_app.command("policy")
def policy_cmd(
    policy: Path = typer.Argument(..., help="device policy YAML (rules over battery, heat, link, hours)"),
    trace: Path = typer.Option(..., "--trace", help="scripted device trace (YAML or CSV) to replay"),
    step: float = typer.Option(10.0, "--step", min=0.1, help="trace seconds between two readings"),
    json_out: bool = typer.Option(False, "--json", help="print the switches as JSON"),
) -> None:
    """Replay a scripted trace through a policy, as the agent would, and print every switch."""
    from edgefleet.power._policy import Policy, PolicyEngine
    from edgefleet.power._state import ScriptedSource

    pol = Policy.from_yaml(policy)
    src = ScriptedSource.from_file(trace)
    clock = [0.0]
    engine = PolicyEngine(pol, clock=lambda: clock[0], keep_switches=10_000)
    rows = []
    while clock[0] <= src.duration_s and len(rows) < 1_000_000:
        s = src.at(clock[0])
        before = set(engine.decision.active)
        d = engine.evaluate(s)
        if set(d.active) != before:
            rows.append({"t": clock[0], "state": s.to_dict(), "decision": d.to_dict()})
        clock[0] += step
    if json_out:
        print_json({"switches": engine.switch_count, "changes": rows})
        return
    t = Table(title=f"{policy.name} over {trace.name}: {engine.switch_count} switches")
    for col in ("t (s)", "battery", "source", "temp / headroom", "active rules", "actions"):
        t.add_column(col)
    for r in rows:
        s, d = r["state"], r["decision"]
        acts = [f"variant {d['variant']}"] if d["variant"] else []
        if d["rate_limit_rps"]:
            acts.append(f"{d['rate_limit_rps']:g} rps")
        if d["duty_cycle"]:
            acts.append(f"duty {d['duty_cycle']:g}")
        if d["batch_delay_ms"]:
            acts.append(f"batch delay {d['batch_delay_ms']:g} ms")
        if d["deferred"]:
            acts.append("defer " + "/".join(d["deferred"]))
        t.add_row(
            f"{r['t']:.0f}",
            "-" if s["battery_percent"] is None else f"{s['battery_percent']:.0f}%",
            s["power_source"] or "-",
            "-"
            if s["temp_c"] is None
            else f"{s['temp_c']:.1f} °C / {s['headroom_c'] if s['headroom_c'] is None else round(s['headroom_c'], 1)}",
            ", ".join(d["active"]) or "(none)",
            ", ".join(acts) or "-",
        )
    console.print(t)
