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


def _show_lineage(lin: dict[str, Any]) -> None:
    console.print(f"lineage of {lin['name']} {lin['version']} (newest first):")
    for node in lin["chain"]:
        if not node.get("published"):
            console.print(f"  {node['version']}: not in the repository")
            continue
        head = f"  [bold]{node['version']}[/]"
        if node.get("parent_version"):
            head += f" <- {node['parent_version']}"
        console.print(head + (f"  ({node['trained']})" if node.get("trained") else ""))
        data = node.get("data_snapshot") or node.get("dataset_sha256")
        if data:
            labels = (
                f", {node['labels_used']} labels {node.get('label_counts') or ''}"
                if node.get("labels_used")
                else ""
            )
            console.print(f"      data {data[:16]}...{labels}", highlight=False)
        if node.get("retrain_job"):
            job = node.get("job") or {}
            console.print(
                f"      job {node['retrain_job']} ({job.get('status', 'not recorded here')}), trainer "
                f"{node.get('trainer') or '-'}, request {node.get('retrain_request') or '-'}"
                + (f", rollout {job['rollout_id']}" if job.get("rollout_id") else "")
            )
        if node.get("mlflow_run_id"):
            console.print(f"      mlflow run {node['mlflow_run_id']} {node.get('mlflow_model') or ''}")
        for v in node["variants"]:
            opt = v.get("optimization") or {}
            acc = f"accuracy {v['accuracy']:.3f}" if v.get("accuracy") is not None else ""
            console.print(
                f"      {v['variant']:<10} {opt.get('variant', '-'):<14} objective {opt.get('objective', '-')}, "
                f"max drop {opt.get('max_drop', '-')} {acc}"
            )


@operator_command(release_app, "lineage", show=_show_lineage)
def release_lineage(
    api: Client, name: str = typer.Argument(...), version: str = typer.Argument(...)
) -> dict[str, Any]:
    """The chain of parents of a release: data snapshots, labels, retraining jobs, optimize runs."""
    return api.release_lineage(name, version)
