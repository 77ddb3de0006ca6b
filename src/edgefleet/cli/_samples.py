"""``edgefleet samples``: what devices sampled, their labels, Label Studio files, policies, live accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import ago, console, operator_command
from edgefleet.client import Client
from edgefleet.errors import InputError

samples_app = typer.Typer(
    help="Samples devices sent, their labels and the live accuracy they measure.", no_args_is_help=True
)
policy_app = typer.Typer(
    help="Sample policies per device group (no new release needed).", no_args_is_help=True
)
_MAX_LABEL_FILE = 64 << 20


def register(app: typer.Typer) -> None:
    samples_app.add_typer(policy_app, name="policy")
    app.add_typer(samples_app, name="samples")


def _show_samples(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("request id", "device", "release", "reason", "predicted", "conf", "label", "input", "received")
    for r in rows:
        conf = "-" if r["confidence"] is None else f"{r['confidence']:.2f}"
        t.add_row(
            r["request_id"], r["device_id"], r["release"], r["reason"], str(r["predicted"]), conf,
            r["label"] or "-", r["input_kind"], ago(r["received_at"]),
        )  # fmt: skip
    console.print(t)
    if not rows:
        console.print(
            "no samples (devices sample only when a policy enables it: edgefleet samples policy set)"
        )


def _show_one(r: dict[str, Any]) -> None:
    console.print_json(json.dumps(r, default=str))


@operator_command(samples_app, "list", show=_show_samples)
def samples_list(
    api: Client,
    device: str = typer.Option(None, "--device", help="One device's samples."),
    release: str = typer.Option(None, "--release", help="One release's (name@version)."),
    predicted: str = typer.Option(None, "--class", help="Samples the model put in this class."),
    labelled: bool = typer.Option(None, "--labelled/--unlabelled", help="Only labelled / unlabelled ones."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
) -> list[dict[str, Any]]:
    """Samples, newest first."""
    return api.samples(device_id=device, release=release, predicted=predicted, labelled=labelled, limit=limit)


@operator_command(samples_app, "show", show=_show_one)
def samples_show(
    api: Client, request_id: str = typer.Argument(..., help="The sample's request id.")
) -> dict[str, Any]:
    """One sample with its scores and features."""
    return api.sample(request_id)


@operator_command(samples_app, "label", show=_show_one)
def samples_label(
    api: Client,
    label: str = typer.Argument(..., help="The true class ('-' clears the label)."),
    request_ids: list[str] = typer.Argument(..., help="Request ids to label."),
) -> dict[str, Any]:
    """Label samples (audited)."""
    return api.label_samples(request_ids, None if label == "-" else label)


@operator_command(samples_app, "delete-device", show=_show_one)
def samples_delete_device(
    api: Client,
    device_id: str = typer.Argument(..., help="The device whose data is erased."),
    yes: bool = typer.Option(False, "--yes", help="Confirm: this cannot be undone."),
) -> dict[str, Any]:
    """Erase every sample, label and telemetry row of a device (admin role; audited)."""
    if not yes:
        raise InputError(f"erasing {device_id}'s data cannot be undone", hint="add --yes to confirm")
    return api.delete_device_data(device_id)


@operator_command(
    samples_app, "export", show=lambda tasks, out: console.print(f"{len(tasks)} tasks -> {out}")
)
def samples_export(
    api: Client,
    out: Path = typer.Option(..., "--out", "-o", help="The Label Studio JSON file to write."),
    fmt: str = typer.Option("label-studio", "--format", help="Only label-studio."),
    release: str = typer.Option(None, "--release", help="One release's samples (name@version)."),
    labelled: bool = typer.Option(None, "--labelled/--unlabelled"),
    limit: int = typer.Option(100, "--limit", min=1, max=1000),
) -> list[dict[str, Any]]:
    """Write samples as Label Studio tasks (import them into a Label Studio project)."""
    if fmt != "label-studio":
        raise InputError(f"unknown export format {fmt!r}", hint="use --format label-studio")
    tasks = api.export_samples(release=release, labelled=labelled, limit=limit)
    out.write_text(json.dumps(tasks, indent=1))
    return tasks


@operator_command(samples_app, "import-labels", show=_show_one)
def samples_import_labels(
    api: Client, file: Path = typer.Argument(..., help="A Label Studio JSON export of annotated tasks.")
) -> dict[str, Any]:
    """Apply the labels of a Label Studio export (tasks made by samples export)."""
    try:
        if file.stat().st_size > _MAX_LABEL_FILE:
            raise InputError(
                f"{file} is larger than {_MAX_LABEL_FILE >> 20} MiB", hint="export fewer tasks at a time"
            )
        tasks = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot read {file}: {e}", hint="pass a JSON file exported from Label Studio"
        ) from None
    if not isinstance(tasks, list):
        raise InputError(
            f"{file} is not a list of tasks", hint="export the project as JSON (not JSON-MIN or CSV)"
        )
    return api.import_labels(tasks)


def _show_accuracy(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("release", "class", "region", "labelled", "accuracy", "95% CI", "ECE")
    for r in rows:
        ci = r["accuracy_ci"]
        t.add_row(
            r["release"], str(r.get("device_class", "")), str(r.get("region", "")), str(r["labelled"]),
            f"{r['accuracy']:.3f}", f"{ci[0]:.3f}-{ci[1]:.3f}", "-" if r["ece"] is None else f"{r['ece']:.3f}",
        )  # fmt: skip
    console.print(t)


@operator_command(samples_app, "accuracy", show=_show_accuracy)
def samples_accuracy(
    api: Client,
    release: str = typer.Option(None, "--release", help="One release (name@version)."),
    by: str = typer.Option("release", "--by", help="release, plus device_class and/or region"),
) -> list[dict[str, Any]]:
    """Live accuracy from labelled samples, with Wilson 95 % intervals and calibration error."""
    return api.accuracy(release=release, by=by)


@operator_command(policy_app, "set", show=_show_one)
def policy_set(
    api: Client,
    name: str = typer.Argument(..., help="The policy's name."),
    selector: str = typer.Option("*", "--selector", help="Devices it applies to, e.g. 'region=eu'."),
    priority: int = typer.Option(0, "--priority", help="Highest matching priority wins."),
    rate: float = typer.Option(0.02, "--rate", help="Share of all answers kept (0-0.05)."),
    low_confidence_rate: float = typer.Option(0.2, "--low-confidence-rate"),
    low_confidence_threshold: float = typer.Option(0.6, "--low-confidence-threshold"),
    per_class_daily_cap: int = typer.Option(None, "--per-class-daily-cap"),
    daily_byte_budget: int = typer.Option(None, "--daily-bytes"),
    privacy: str = typer.Option("hash", "--privacy", help="raw, hash, features or drop"),
    allow_metered: bool = typer.Option(False, "--allow-metered"),
    disabled: bool = typer.Option(False, "--off", help="Turn sampling off for these devices."),
) -> dict[str, Any]:
    """Set a device group's sample policy."""
    policy = {
        "enabled": not disabled,
        "rate": rate,
        "low_confidence_rate": low_confidence_rate,
        "low_confidence_threshold": low_confidence_threshold,
        "per_class_daily_cap": per_class_daily_cap,
        "daily_byte_budget": daily_byte_budget,
        "privacy": privacy,
        "allow_metered": allow_metered,
    }
    return api.set_sample_policy(name, policy, selector=selector, priority=priority)


@operator_command(policy_app, "list", show=lambda rows: [_show_one(r) for r in rows])
def policy_list(api: Client) -> list[dict[str, Any]]:
    """Sample policies, highest priority first."""
    return api.sample_policies()


@operator_command(policy_app, "delete", show=_show_one)
def policy_delete(api: Client, name: str = typer.Argument(...)) -> dict[str, Any]:
    """Remove a sample policy (its devices fall back on their bundle's)."""
    return api.delete_sample_policy(name)
