"""``edgefleet telemetry drift | merge | outbox``: offline drift tests and outbox inspection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import console, print_json
from edgefleet.errors import InputError, NotFoundError, PayloadTooLargeError

telemetry_app = typer.Typer(
    help="Test windows for drift, merge them, inspect a device's outbox.", no_args_is_help=True
)

_MAX_WINDOWS_FILE = 256 << 20


def register(app: typer.Typer) -> None:
    app.add_typer(telemetry_app, name="telemetry")


def _load_windows(path: Path) -> list[Any]:
    """Windows from a JSON file: one window, a list, or an object with a ``windows`` list."""
    from edgefleet.telemetry import Window

    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="pass a JSON file of telemetry windows")
    size = path.stat().st_size
    if size > _MAX_WINDOWS_FILE:
        raise PayloadTooLargeError(
            f"{path} is {size} bytes, limit {_MAX_WINDOWS_FILE}", hint="split the file"
        )
    try:
        doc = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(
            f"{path} is not JSON: {e}", hint="pass window dicts as written by Window.to_dict()"
        ) from e
    if isinstance(doc, dict) and isinstance(doc.get("windows"), list):
        doc = doc["windows"]
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not doc:
        raise InputError(
            f"{path} holds no windows", hint="expected a window, a list of windows or {windows: [...]}"
        )
    out = []
    for i, d in enumerate(doc):
        try:
            out.append(Window.from_dict(d, check_time=False))
        except InputError as e:
            raise type(e)(f"{path} window {i}: {e.message}", hint=e.hint) from e
    return out


def _reference(path: Path):
    from edgefleet.telemetry import Reference

    return Reference.load(path)


@telemetry_app.command("drift")
def drift_cmd(
    windows: Path = typer.Argument(..., help="JSON file: one window, a list, or {windows: [...]}"),
    reference: Path = typer.Option(..., "--reference", "-r", help="the bundle's reference.json"),
    by: str = typer.Option(
        "", "--by", help="comma-separated tags to test per group, e.g. device_class,region"
    ),
    alpha: float | None = typer.Option(
        None, help="family-wise significance (default from EDGEFLEET_DRIFT_ALPHA)"
    ),
    threshold: float | None = typer.Option(None, help="drift score from which a window is drifted"),
    top: int = typer.Option(5, help="tests to show per report"),
    fail_on_drift: bool = typer.Option(False, "--fail-on-drift", help="exit 2 when any report is drifted"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Merge the windows (per group with --by) and test them against the reference."""
    from rich.table import Table

    from edgefleet.telemetry import DriftConfig, drift, drift_by_group

    ws = _load_windows(windows)
    ref = _reference(reference)
    overrides = {k: v for k, v in {"alpha": alpha, "threshold": threshold}.items() if v is not None}
    cfg = DriftConfig(**overrides)
    groups = [g.strip() for g in by.split(",") if g.strip()]
    reports = drift_by_group(ws, ref, by=groups, config=cfg) if groups else {("all",): drift(ws, ref, cfg)}
    if as_json:
        print_json(
            {
                "reference_id": ref.id,
                "windows": len(ws),
                "groups": [
                    {"group": dict(zip(groups or ["all"], k, strict=False)), **r.to_dict()}
                    for k, r in reports.items()
                ],
            }
        )
    else:
        for key, rep in reports.items():
            title = f"{'/'.join(key)}: score {rep.score:.2f} " + (
                "[bold red]DRIFTED[/]" if rep.drifted else "[green]no drift[/]"
            )
            t = Table(title=title, title_justify="left")
            for col in ("test", "kind", "statistic", "p (corrected)", "PSI", "rows", "fired"):
                t.add_column(col)
            for x in rep.top(top):
                t.add_row(
                    x.name,
                    x.test,
                    f"{x.statistic:.3g}",
                    f"{x.p_adjusted:.3g}",
                    f"{x.psi:.3f}",
                    str(x.n),
                    "yes" if x.fired else "",
                )
            console.print(t)
            for s in rep.skipped:
                console.print(f"  [yellow]skipped[/] {s}")
    if fail_on_drift and any(r.drifted for r in reports.values()):
        raise typer.Exit(2)


@telemetry_app.command("merge")
def merge_cmd(
    windows: Path = typer.Argument(..., help="JSON file of windows"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write the merged window here"),
    as_json: bool = typer.Option(False, "--json", help="print the merged window summary as JSON"),
) -> None:
    """Merge windows into one (exact: counts, sketch bins and histograms add)."""
    from edgefleet.telemetry import merge_windows

    m = merge_windows(_load_windows(windows), on_mismatch="drop")
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_bytes(m.to_json())
        tmp.replace(output)
    if as_json:
        print_json(m.summary())
    else:
        s = m.summary()
        console.print(
            f"{m.windows} windows, {s['requests']} requests, {s['errors']} errors, "
            f"p95 {_fmt(s['latency_p95_ms'])} ms, mean confidence {_fmt(s['mean_confidence'])}"
        )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


@telemetry_app.command("outbox")
def outbox_cmd(
    state: Path = typer.Argument(
        ..., help="agent state directory (holding outbox.sqlite) or the SQLite file"
    ),
    peek: int = typer.Option(0, help="also list the next N items in upload order"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Show what waits in a device's outbox, what was dropped and why, and whether the file is sound."""
    from rich.table import Table

    from edgefleet.telemetry import Outbox

    path = state / "outbox.sqlite" if state.is_dir() else state
    if not path.is_file():
        raise NotFoundError(
            f"no outbox at {path}", hint="pass the agent's --state directory or its outbox.sqlite"
        )
    with Outbox(path) as ob:
        st = ob.stats()
        problems = ob.check()
        items = ob.peek(peek) if peek else []
    if as_json:
        st["problems"] = problems
        st["next"] = [
            {"id": i.id, "kind": i.kind, "priority": i.priority, "size": i.size, "created": i.created_wall}
            for i in items
        ]
        print_json(st)
        return
    console.print(
        f"{path}: {st['items']} items, {st['bytes']} / {st['max_bytes']} bytes (file {st['file_bytes']} bytes)"
    )
    t = Table(title="by kind", title_justify="left")
    for col in (
        "kind",
        "queued",
        "bytes",
        "oldest (s)",
        "sent",
        "evicted",
        "rejected",
        "expired",
        "disk full",
    ):
        t.add_column(col)
    kinds = sorted(set(st["by_kind"]) | set(st["counters"]))
    for k in kinds:
        q = st["by_kind"].get(k, {})
        c = st["counters"].get(k, {})
        t.add_row(
            k,
            str(q.get("items", 0)),
            str(q.get("bytes", 0)),
            str(q.get("oldest_age_s", "-")),
            *(
                str(c.get(r, {}).get("items", 0))
                for r in ("sent", "evicted", "rejected", "expired", "disk_full")
            ),
        )
    console.print(t)
    for i in items:
        console.print(f"  #{i.id} {i.kind} priority {i.priority} {i.size} B")
    console.print("[green]consistent[/]" if not problems else f"[red]problems:[/] {problems}")
