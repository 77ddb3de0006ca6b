"""``edgefleet devices``: the fleet a running control plane knows, and its enrollment tokens."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import ago, console, operator_command, parse_duration, parse_pairs, tags_text
from edgefleet.client import Client

devices_app = typer.Typer(help="The fleet: devices, their state, enrollment tokens.", no_args_is_help=True)
dtokens_app = typer.Typer(
    help="Enrollment tokens (one-time, expiring, scoped to tags).", no_args_is_help=True
)
dpolicy_app = typer.Typer(
    help="Power/thermal policies pushed per device group (over the bundle's device_policy.yaml).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    devices_app.add_typer(dtokens_app, name="tokens")
    devices_app.add_typer(dpolicy_app, name="power-policy")
    app.add_typer(devices_app, name="devices")


def _show_devices(out: dict[str, Any]) -> None:
    from rich.table import Column, Table

    t = Table("name", "class", "tags", "status", "seen", "active", "state")
    t.columns.insert(0, Column("id", no_wrap=True))
    for d in out["devices"]:
        a = d["active"]
        t.add_row(
            d["id"],
            d["name"] or "",
            d["class"],
            tags_text(d["tags"]),
            d["status"],
            ago(d["last_seen"]),
            f"{a['name']} {a['version']}" if a else "-",
            d["state"] or "",
        )
    console.print(t)
    console.print(f"{out['total']} devices")


@operator_command(devices_app, "list", show=_show_devices)
def devices_list(
    api: Client,
    selector: str | None = typer.Option(None, "--selector", "-s"),
    status: str | None = typer.Option(None, "--status", help="pending, online, stale, offline or revoked."),
    limit: int = typer.Option(100, "--limit"),
) -> dict[str, Any]:
    """Devices, filtered by selector and status."""
    return api.devices(selector=selector, status=status, limit=limit)


@operator_command(devices_app, "show", show=lambda d: console.print_json(data=d))
def devices_show(api: Client, device_id: str = typer.Argument(...)) -> dict[str, Any]:
    """One device: hardware, tags, active model, health, assignment."""
    return api.device(device_id)


@operator_command(devices_app, "revoke", json_option=False)
def devices_revoke(api: Client, device_id: str = typer.Argument(...)) -> None:
    """Revoke a device's token (it must enroll again)."""
    api.revoke_device(device_id)
    console.print(f"revoked {device_id}")


@operator_command(devices_app, "tag", json_option=False)
def devices_tag(
    api: Client,
    device_id: str = typer.Argument(...),
    tags: list[str] = typer.Argument(..., help="key=value ..."),
) -> None:
    """Replace a device's tags."""
    d = api.tag_device(device_id, parse_pairs(tags, "tag"))
    console.print(f"{device_id}: " + tags_text(d["tags"]))


def _show_created(toks: list[dict[str, Any]], out: Path | None) -> None:
    if out is not None:
        console.print(f"wrote {len(toks)} enrollment tokens to {out}")
    else:
        for t in toks:
            print(t["token"])


@operator_command(dtokens_app, "create", show=_show_created)
def dtokens_create(
    api: Client,
    tag: list[str] = typer.Option(
        None, "--tag", help="key=value every device enrolled with it gets (repeatable)."
    ),
    expires: str = typer.Option("24h", "--expires", help="Lifetime, e.g. 1h."),
    count: int = typer.Option(1, "--count", min=1, max=10_000, help="How many tokens (one per device)."),
    out: Path | None = typer.Option(None, "--out", help="Write the tokens to this file (mode 0600)."),
) -> list[dict[str, Any]]:
    """Create one-time enrollment tokens."""
    tags, ttl = parse_pairs(tag, "tag"), parse_duration(expires)
    toks = [api.create_enrollment_token(tags=tags, expires_in_s=ttl) for _ in range(count)]
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(t["token"] + "\n" for t in toks))
    return toks


def _show_tokens(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("id", "tags", "usable", "used by", "expires")
    for r in rows:
        t.add_row(
            r["id"],
            tags_text(r["tags"]),
            "yes" if r["usable"] else "no",
            r["used_by"] or "",
            ago(r["expires_at"]).replace(" ago", " ago (expired)") if not r["usable"] else "",
        )
    console.print(t)


@operator_command(dtokens_app, "list", show=_show_tokens)
def dtokens_list(api: Client) -> list[dict[str, Any]]:
    """Enrollment tokens and whether they are still usable."""
    return api.enrollment_tokens()


@operator_command(dtokens_app, "revoke", json_option=False)
def dtokens_revoke(api: Client, token_id: str = typer.Argument(...)) -> None:
    """Revoke an unused enrollment token."""
    api.revoke_enrollment_token(token_id)
    console.print(f"revoked {token_id}")


def _show_policies(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("name", "selector", "priority", "rules", "updated")
    for r in rows:
        rules = ", ".join(x.get("name", "?") for x in r["policy"].get("rules", []))
        t.add_row(r["name"], r["selector"], str(r["priority"]), rules or "-", ago(r["updated_at"]))
    console.print(t)


@operator_command(dpolicy_app, "set", show=lambda r: console.print(f"device policy {r['name']} set"))
def dpolicy_set(
    api: Client,
    name: str = typer.Argument(..., help="Group name, e.g. eu-sensors."),
    policy: Path = typer.Argument(..., help="The policy YAML (the format of a bundle's device_policy.yaml)."),
    selector: str = typer.Option("*", "--selector", "-s", help="Devices, e.g. 'class=sensor region=eu'."),
    priority: int = typer.Option(0, "--priority", help="The highest matching priority wins."),
) -> dict[str, Any]:
    """Push a power/thermal policy to the devices SELECTOR matches; they take it with their next telemetry."""
    from edgefleet.power import Policy

    doc = Policy.from_yaml(policy)  # a clear error for a missing, oversized or invalid file, here
    return api.set_device_policy(
        name, doc.model_dump(mode="json", exclude_none=True), selector=selector, priority=priority
    )


@operator_command(dpolicy_app, "list", show=_show_policies)
def dpolicy_list(api: Client) -> list[dict[str, Any]]:
    """Device policies per group, highest priority first."""
    return api.device_policies()


@operator_command(dpolicy_app, "delete", json_option=False)
def dpolicy_delete(api: Client, name: str = typer.Argument(...)) -> None:
    """Remove a group's device policy (its devices go back to their bundle's)."""
    api.delete_device_policy(name)
    console.print(f"deleted device policy {name}")
