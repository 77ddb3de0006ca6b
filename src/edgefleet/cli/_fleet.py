"""``edgefleet fleet``: fleet health, drift, outliers, alerts and retraining requests of a running control plane."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cli._common import console, print_json
from edgefleet.cli._server import JsonOpt, ServerOpt, TokenFileOpt, TokenOpt, _api, _duration

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


@fleet_app.command("overview")
def overview(
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Devices by status, version, class, region and health; open alerts; pending retraining."""
    ov = _api(server, token, token_file)("GET", "/v1/fleet/overview")
    if json_out:
        print_json(ov)
        return
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


@fleet_app.command("drift")
def drift(
    by: str = typer.Option(
        "device_class,region", "--by", help="Group keys: device_id, device_class, region, release."
    ),
    range_: str = RangeOpt,
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Drift per release and group against each release's bundle reference."""
    body = _api(server, token, token_file)(
        "GET", "/v1/fleet/drift", params={"by": by, "range_s": _duration(range_)}
    )
    if json_out:
        print_json(body)
        return
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


@fleet_app.command("outliers")
def outliers(
    range_: str = RangeOpt,
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Devices whose latency, confidence or error rate sits far from their class."""
    body = _api(server, token, token_file)("GET", "/v1/fleet/outliers", params={"range_s": _duration(range_)})
    if json_out:
        print_json(body)
        return
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


@fleet_app.command("alerts")
def alerts(
    state: str = typer.Option("open", "--state", help="open, resolved or all"),
    evaluate: bool = typer.Option(False, "--evaluate", help="Evaluate the rules now first (deployer role)."),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Alerts: drift, outliers, silent devices, error rates."""
    api = _api(server, token, token_file)
    if evaluate:
        api("POST", "/v1/fleet/alerts/evaluate")
    rows = api("GET", "/v1/fleet/alerts", params={"state": state})
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    t = Table("severity", "rule", "state", "message", "seen")
    for a in rows:
        t.add_row(a["severity"], a["rule"], a["state"], a["message"], f"{a['evaluations']}x")
    console.print(t if rows else f"no {state} alerts")


@fleet_app.command("maintain")
def maintain(
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Apply telemetry retention and downsampling now (admin)."""
    rep = _api(server, token, token_file)("POST", "/v1/fleet/maintenance")
    if json_out:
        print_json(rep)
        return
    console.print(
        f"{rep['rolled_up']} raw windows rolled up into {rep['rollups_written']} rollups; "
        f"{rep['rollups_deleted']} rollups expired; {rep['unreadable']} unreadable rows left"
    )


@retrain_app.command("list")
def retrain_list(
    status: str | None = typer.Option(None, "--status", help="pending, approved, rejected, fired or failed"),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Retraining requests, newest first."""
    rows = _api(server, token, token_file)(
        "GET", "/v1/fleet/retrain-requests", params={"status": status} if status else None
    )
    if json_out:
        print_json(rows)
        return
    from rich.table import Column, Table

    t = Table(Column("id", no_wrap=True), "status", "model", "reason", "decided by", "error")
    for r in rows:
        t.add_row(r["id"], r["status"], r["model"], r["reason"], r["decided_by"] or "-", r["error"] or "-")
    console.print(t if rows else "no retraining requests")


def _decide(action: str):  # noqa: ANN202
    def cmd(
        request_id: str = typer.Argument(..., help="Request id (see `edgefleet fleet retrain list`)."),
        server: str = ServerOpt,
        token: str | None = TokenOpt,
        token_file: Path | None = TokenFileOpt,
        json_out: bool = JsonOpt,
    ) -> None:
        r = _api(server, token, token_file)("POST", f"/v1/fleet/retrain-requests/{request_id}/{action}")
        if json_out:
            print_json(r)
            return
        console.print(f"request {r['id']}: {r['status']}" + (f" ({r['error']})" if r.get("error") else ""))

    cmd.__doc__ = (
        "Approve a pending request and run the retraining hook (admin)."
        if action == "approve"
        else "Reject a pending request (admin)."
    )
    return cmd


for _a in ("approve", "reject"):
    retrain_app.command(_a)(_decide(_a))
