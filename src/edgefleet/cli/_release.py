"""``edgefleet release``: the releases a running control plane knows (registered from the repository)."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli._common import ago, console, operator_command, parse_pairs
from edgefleet.client import Client

release_app = typer.Typer(
    help="Releases the control plane knows (registered from the repository).", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(release_app, name="release")


def _show_registered(rel: dict[str, Any]) -> None:
    console.print(f"[green]registered[/] {rel['name']} {rel['version']}:")
    for v in rel["variants"]:
        rt = v["runtime"]
        console.print(
            f"  {v['variant']:<12} classes {','.join(v['device_classes']):<16} "
            f"onnxruntime {rt.get('onnxruntime')}  ram>={rt.get('min_ram_mb') or '-'}  "
            f"isa {','.join(rt.get('isa_flags') or []) or '-'}"
        )


@operator_command(release_app, "register", show=_show_registered)
def release_register(
    api: Client,
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    classes: list[str] = typer.Option(None, "--classes", help="variant=class1,class2 (repeatable)."),
) -> dict[str, Any]:
    """Register a published name+version: the server reads its variants from the TUF targets."""
    device_classes = {k: v.split(",") for k, v in parse_pairs(classes, "classes").items()}
    return api.register_release(name, version, device_classes=device_classes or None)


def _show_releases(rels: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("name", "version", "variants", "registered")
    for r in rels:
        t.add_row(
            r["name"], r["version"], ", ".join(v["variant"] for v in r["variants"]), ago(r["registered_at"])
        )
    console.print(t)


@operator_command(release_app, "list", show=_show_releases)
def release_list(api: Client) -> list[dict[str, Any]]:
    """Registered releases."""
    return api.releases()
