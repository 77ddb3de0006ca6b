"""``edgefleet update-policy``: when device groups take new releases (maintenance windows, metered links,
charging, pinning, deferral); ``edgefleet rollout create --force`` overrides them for a security fix."""

from __future__ import annotations

import re
from typing import Any

import typer

from edgefleet.cli._common import ago, console, operator_command
from edgefleet.client import Client
from edgefleet.errors import InputError

policy_app = typer.Typer(
    help="Update policies per device group: maintenance windows, metered/charging, pin or defer.",
    no_args_is_help=True,
)
_WINDOW = re.compile(r"^\d{1,2}:\d{2}-\d{1,2}:\d{2}$")


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="update-policy")


def _describe(p: dict[str, Any]) -> str:
    parts = []
    if p.get("windows"):
        parts.append(f"windows {', '.join(p['windows'])} {p.get('timezone', 'UTC')}")
    if p.get("download_only_unmetered"):
        parts.append("unmetered links only")
    if p.get("download_only_charging"):
        parts.append("while charging only")
    if p.get("pin"):
        parts.append(f"pinned to {p['pin']}")
    if p.get("defer_until"):
        parts.append(f"deferred until {p['defer_until']}")
    return "; ".join(parts) or "no restriction"


def _show_one(r: dict[str, Any]) -> None:
    if "deleted" in r:
        console.print(f"deleted update policy {r['deleted']}")
        return
    console.print(
        f"[bold]{r['name']}[/] selector '{r['selector']}' priority {r['priority']}: {_describe(r['policy'])}"
        f"  (by {r['updated_by']}, {ago(r['updated_at'])})"
    )


def _show_list(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        _show_one(r)
    if not rows:
        console.print("no update policies (every device takes a rollout's release when it is admitted)")


@operator_command(policy_app, "set", show=_show_one)
def policy_set(
    api: Client,
    name: str = typer.Argument(..., help="The policy's name (lower case, digits, . _ -)."),
    selector: str = typer.Option("*", "--selector", help="The device group, e.g. 'region=eu class=pi4'."),
    priority: int = typer.Option(0, "--priority", help="Highest matching priority wins."),
    window: list[str] = typer.Option(
        None, "--window", help="Maintenance window HH:MM-HH:MM in --timezone (repeat for several)."
    ),
    timezone: str = typer.Option("UTC", "--timezone", "--tz", help="IANA time zone, e.g. Europe/Berlin."),
    unmetered_only: bool = typer.Option(False, "--unmetered-only", help="Download only on unmetered links."),
    charging_only: bool = typer.Option(False, "--charging-only", help="Download only while charging."),
    pin: str | None = typer.Option(None, "--pin", help="The group stays on this version."),
    defer_until: str | None = typer.Option(
        None, "--defer-until", help="Rollouts wait until then (ISO date/time; no offset: in --timezone)."
    ),
) -> dict[str, Any]:
    """Set a device group's update policy (replaces the policy of that name)."""
    for w in window or []:
        if not _WINDOW.match(w.replace(" ", "")):
            raise InputError(f"--window {w!r} is not HH:MM-HH:MM", hint="e.g. --window 02:00-05:00")
    if pin is not None and defer_until is not None:
        raise InputError(
            "--pin and --defer-until exclude each other", hint="a group pins or defers, not both"
        )
    policy: dict[str, Any] = {
        "windows": list(window or []),
        "timezone": timezone,
        "download_only_unmetered": unmetered_only,
        "download_only_charging": charging_only,
        "pin": pin,
        "defer_until": defer_until,
    }
    return api.set_update_policy(name, policy, selector=selector, priority=priority)


@operator_command(policy_app, "list", show=_show_list)
def policy_list(api: Client) -> list[dict[str, Any]]:
    """Update policies, highest priority first."""
    return api.update_policies()


@operator_command(policy_app, "show", show=_show_one)
def policy_show(api: Client, name: str = typer.Argument(...)) -> dict[str, Any]:
    """One update policy."""
    return api.update_policy(name)


@operator_command(policy_app, "delete", show=_show_one)
def policy_delete(api: Client, name: str = typer.Argument(...)) -> dict[str, Any]:
    """Remove an update policy (its devices take releases whenever they are admitted)."""
    return api.delete_update_policy(name)
