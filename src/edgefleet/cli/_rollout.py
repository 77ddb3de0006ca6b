"""``edgefleet rollout``: create and drive gated rollouts on a running control plane."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli._common import console, operator_command, parse_duration, parse_numbers
from edgefleet.client import Client
from edgefleet.errors import InputError

rollout_app = typer.Typer(help="Create and drive gated rollouts.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(rollout_app, name="rollout")


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _show_created(out: dict[str, Any]) -> None:
    console.print(
        f"[green]rollout {out['id']}[/] {out['name']} {out['version']} to '{out['selector']}': wave 1 "
        f"({out['wave_percent']:g}%) admitted {out['members'].get('admitted', 0)} devices"
        + (f", {out['members']['does_not_fit']} do not fit" if out["members"].get("does_not_fit") else "")
    )


@operator_command(rollout_app, "create", show=_show_created)
def rollout_create(
    api: Client,
    name: str = typer.Argument(..., help="Model name of the release."),
    version: str = typer.Argument(...),
    selector: str = typer.Option("*", "--selector", "-s", help="Devices, e.g. 'class=pi4 region=eu-*'."),
    waves: str = typer.Option("1,5,25,100", "--waves", help="Cumulative percentages, strictly increasing."),
    soak: str = typer.Option(
        "10m", "--soak", help="Soak time per wave (e.g. 10m), or one per wave: 5m,10m,..."
    ),
    policy: str = typer.Option(
        "auto", "--policy", help="auto: advance passed waves; approval: wait for approve."
    ),
    on_fail: str = typer.Option("rollback", "--on-fail", help="rollback or halt when a gate fails."),
    min_devices: int | None = typer.Option(
        None, "--min-devices", help="Devices reporting before a wave passes."
    ),
    min_requests: int | None = typer.Option(
        None, "--min-requests", help="Requests served before ML gates judge."
    ),
    gate: list[str] = typer.Option(None, "--gate", help="Any gate setting, e.g. max_latency_p95_ratio=1.3."),
    force: bool = typer.Option(
        False, "--force", help="A forced update (security fix): ignore the devices' update policies."
    ),
) -> dict[str, Any]:
    """Start a rollout of NAME VERSION through gated waves."""
    try:
        wave_list = [float(w) for w in waves.split(",") if w.strip()]
    except ValueError:
        raise InputError(
            f"--waves {waves!r} is not a list of numbers", hint="e.g. --waves 1,5,25,100"
        ) from None
    soaks = [parse_duration(x) for x in soak.split(",")]
    gates: dict[str, Any] = dict(parse_numbers(gate, "gate"))
    if min_devices is not None:
        gates["min_devices"] = min_devices
    if min_requests is not None:
        gates["min_requests"] = min_requests
    for k in ("min_devices", "min_requests", "min_control_requests"):
        if k in gates:
            gates[k] = int(gates[k])
    return api.create_rollout(
        name,
        version,
        selector=selector,
        waves=wave_list,
        soak_s=soaks[0] if len(soaks) == 1 else soaks,
        policy=policy,
        on_fail=on_fail,
        gates=gates,
        force=force or None,
    )


def _show_rollouts(rows: list[dict[str, Any]]) -> None:
    from rich.table import Column, Table

    t = Table("release", "selector", "state", "wave", "admitted", "gates")
    t.columns.insert(0, Column("id", no_wrap=True))
    for r in rows:
        ev = r.get("evaluation") or {}
        t.add_row(
            r["id"],
            f"{r['name']} {r['version']}",
            r["selector"],
            r["state"],
            f"{r['wave']}/{len(r['waves'])} ({r['wave_percent']:g}%)",
            str(r["members"].get("admitted", 0)),
            ev.get("status", "-"),
        )
    console.print(t)


@operator_command(rollout_app, "list", show=_show_rollouts)
def rollout_list(api: Client, state: str | None = typer.Option(None, "--state")) -> list[dict[str, Any]]:
    """Rollouts, newest first."""
    return api.rollouts(state=state)


def _show_rollout(r: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(
        f"[bold]{r['id']}[/] {r['name']} {r['version']}  selector '{r['selector']}'  [bold]{r['state']}[/]"
        f"  wave {r['wave']}/{len(r['waves'])} ({r['wave_percent']:g}%)  policy {r['policy']}, "
        f"on fail {r['on_fail']}" + ("  [red]forced[/] (update policies ignored)" if r.get("force") else "")
    )
    if r.get("reason"):
        console.print(f"reason: {r['reason']}")
    ev = r.get("evaluation") or {}
    if ev:
        c = ev["counts"]
        console.print(
            f"devices: {c['admitted']} admitted, {c['installed']} installed, {c['failed']} failed, "
            f"{c['reporting']} reporting (need {c['min_devices']}), {c['does_not_fit']} do not fit; "
            f"soak {ev['soak_elapsed_s']:.0f}/{ev['soak_s']:.0f}s; reference: {ev['reference_source']}"
        )
        t = Table("gate", "status", "wave", "reference", "limit")
        for g in ev["gates"]:
            colour = {"pass": "green", "fail": "red", "wait": "yellow"}.get(g["status"], "dim")
            t.add_row(
                g["name"],
                f"[{colour}]{g['status']}[/]",
                _num(g["value"]),
                _num(g["reference"]),
                _num(g["threshold"]),
            )
        console.print(t)
        if ev.get("waiting_for"):
            console.print("waiting for: " + "; ".join(ev["waiting_for"]))
        if ev.get("held"):
            why = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(ev["held"].items()))
            console.print(f"held by update policies: {sum(ev['held'].values())} devices ({why})")
    for x in r.get("does_not_fit", [])[:20]:
        console.print(f"[yellow]does not fit[/] {x['device_id']}: {x['reason']}")


@operator_command(rollout_app, "show", show=_show_rollout)
def rollout_show(api: Client, rollout_id: str = typer.Argument(...)) -> dict[str, Any]:
    """A rollout's state, the current wave's gates with their figures, and devices that do not fit."""
    return api.rollout(rollout_id)


def _show_acted(out: dict[str, Any]) -> None:
    console.print(f"rollout {out['id']}: {out['state']} (wave {out['wave']}/{len(out['waves'])})")


_ACTIONS = {
    "pause": "Pause: no new devices, gates keep being measured, the soak clock stops.",
    "resume": "Resume a paused rollout.",
    "abort": "Stop: devices on the release keep it, admitted ones not yet on it keep their old one.",
    "rollback": "Roll every admitted device back to the release it ran before.",
    "approve": "Open the next wave of a rollout waiting for approval.",
}


def _action(action: str) -> None:
    def act(
        api: Client,
        rollout_id: str = typer.Argument(...),
        reason: str | None = typer.Option(None, "--reason"),
    ) -> dict[str, Any]:
        return api.act_on_rollout(rollout_id, action, reason=reason)  # type: ignore[arg-type]

    act.__name__ = f"rollout_{action}"
    operator_command(rollout_app, action, show=_show_acted, doc=_ACTIONS[action])(act)


for _a in _ACTIONS:
    _action(_a)


def _show_audit(rows: list[dict[str, Any]]) -> None:
    import datetime as dt

    for a in rows:
        when = dt.datetime.fromtimestamp(a["at"]).strftime("%H:%M:%S")
        states = f"{a['from_state'] or ''} -> {a['to_state']}" if a["to_state"] else ""
        d = a["details"]
        extra = d.get("reason") or (f"wave {d['wave']}" if "wave" in d else "")
        console.print(f"{when} {a['actor']:<18} {a['action']:<26} {states:<26} {extra}")


@operator_command(rollout_app, "audit", show=_show_audit)
def rollout_audit(api: Client, rollout_id: str = typer.Argument(...)) -> list[dict[str, Any]]:
    """Every transition of a rollout, with who did it and the figures behind it."""
    return api.rollout_audit(rollout_id)
