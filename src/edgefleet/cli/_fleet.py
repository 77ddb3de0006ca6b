"""``edgefleet fleet``: fleet health, drift, outliers, alerts and retraining requests (running control plane)."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli._common import console, operator_command, parse_duration
from edgefleet.client import Client

fleet_app = typer.Typer(
    help="Fleet health, drift, outliers, alerts and retraining requests.", no_args_is_help=True
)
retrain_app = typer.Typer(
    help="Retraining requests proposed by sustained drift (approve to run the hook).", no_args_is_help=True
)

RangeOpt = typer.Option("1h", "--range", help="How far back to look, e.g. 30m, 6h, 7d.")


def register(app: typer.Typer) -> None:
    fleet_app.add_typer(retrain_app, name="retrain")
    app.add_typer(fleet_app, name="fleet")


def _fmt(x: object, nd: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def _show_overview(ov: dict[str, Any]) -> None:
    from rich.table import Table

    d = ov["devices"]
    console.print(
        f"[bold]{d['total']}[/] devices, {ov['alerts']['open']} open alerts, "
        f"{ov['retrain']['pending']} retraining requests pending"
    )
    t = Table("by", "counts")
    for k in ("status", "version", "class", "region", "health"):
        t.add_row(k, ", ".join(f"{name}: {n}" for name, n in d[f"by_{k}"].items()) or "-")
    console.print(t)


@operator_command(fleet_app, "overview", show=_show_overview)
def overview(api: Client) -> dict[str, Any]:
    """Devices by status, version, class, region and health; open alerts; pending retraining."""
    return api.fleet_overview()


def _show_drift(body: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table("release", "group", "devices", "rows", "score", "strongest")
    for g in body["groups"]:
        score = f"[red]{g['score']:.2f} drifted[/]" if g["drifted"] else f"{g['score']:.2f}"
        t.add_row(
            g["release"],
            " / ".join(g["group"].values()),
            str(g["devices"]),
            str(g["rows"]),
            score,
            ", ".join(g["fired"][:3]) or "-",
        )
    console.print(t)
    for s in body["skipped"]:
        console.print(f"[yellow]{s['release']}: {s['reason']}[/]")


@operator_command(fleet_app, "drift", show=_show_drift)
def drift(
    api: Client,
    by: str = typer.Option(
        "device_class,region", "--by", help="Group keys: device_id, device_class, region, release."
    ),
    range_: str = RangeOpt,
) -> dict[str, Any]:
    """Drift per release and group against each release's bundle reference."""
    return api.fleet_drift(by=by, range_s=parse_duration(range_))


def _show_outliers(body: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table("device", "group", "metric", "value", "median", "robust z")
    for o in body["outliers"]:
        t.add_row(
            o["device_id"],
            " / ".join(o["group"].values()),
            o["metric"],
            _fmt(o["value"]),
            _fmt(o["median"]),
            _fmt(o["robust_z"]),
        )
    console.print(t if body["outliers"] else "no outlier devices")


@operator_command(fleet_app, "outliers", show=_show_outliers)
def outliers(api: Client, range_: str = RangeOpt) -> dict[str, Any]:
    """Devices whose latency, confidence or error rate sits far from their class."""
    return api.fleet_outliers(range_s=parse_duration(range_))


def _show_alerts(rows: list[dict[str, Any]], state: str) -> None:
    from rich.table import Table

    t = Table("severity", "rule", "state", "message", "seen")
    for a in rows:
        t.add_row(a["severity"], a["rule"], a["state"], a["message"], f"{a['evaluations']}x")
    console.print(t if rows else f"no {state} alerts")


@operator_command(fleet_app, "alerts", show=_show_alerts)
def alerts(
    api: Client,
    state: str = typer.Option("open", "--state", help="open, resolved or all"),
    evaluate: bool = typer.Option(False, "--evaluate", help="Evaluate the rules now first (deployer role)."),
) -> list[dict[str, Any]]:
    """Alerts: drift, outliers, silent devices, error rates."""
    if evaluate:
        api.evaluate_alerts()
    return api.alerts(state=state)


def _show_maintenance(rep: dict[str, Any]) -> None:
    console.print(
        f"{rep['rolled_up']} raw windows rolled up into {rep['rollups_written']} rollups; "
        f"{rep['rollups_deleted']} rollups expired; {rep['unreadable']} unreadable rows left"
    )


@operator_command(fleet_app, "maintain", show=_show_maintenance)
def maintain(api: Client) -> dict[str, Any]:
    """Apply telemetry retention and downsampling now (admin)."""
    return api.maintain()


def _show_requests(rows: list[dict[str, Any]]) -> None:
    from rich.table import Column, Table

    t = Table(Column("id", no_wrap=True), "status", "model", "reason", "decided by", "error")
    for r in rows:
        t.add_row(r["id"], r["status"], r["model"], r["reason"], r["decided_by"] or "-", r["error"] or "-")
    console.print(t if rows else "no retraining requests")


@operator_command(retrain_app, "list", show=_show_requests)
def retrain_list(
    api: Client,
    status: str | None = typer.Option(None, "--status", help="pending, approved, rejected, fired or failed"),
) -> list[dict[str, Any]]:
    """Retraining requests, newest first."""
    return api.retrain_requests(status=status)


def _show_decided(r: dict[str, Any]) -> None:
    console.print(f"request {r['id']}: {r['status']}" + (f" ({r['error']})" if r.get("error") else ""))


_DECISIONS = {
    "approve": "Approve a pending request and run the retraining hook (admin).",
    "reject": "Reject a pending request (admin).",
}


def _decide(decision: str) -> None:
    def decide(
        api: Client,
        request_id: str = typer.Argument(..., help="Request id (see `edgefleet fleet retrain list`)."),
    ) -> dict[str, Any]:
        return api.decide_retrain(request_id, decision)  # type: ignore[arg-type]

    decide.__name__ = f"retrain_{decision}"
    operator_command(retrain_app, decision, show=_show_decided, doc=_DECISIONS[decision])(decide)


for _d in _DECISIONS:
    _decide(_d)
