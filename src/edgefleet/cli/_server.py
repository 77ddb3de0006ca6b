"""``edgefleet server``, ``edgefleet rollout``, ``edgefleet devices`` and ``edgefleet release``.

``server run|migrate|token`` work on the local state directory; the other groups drive a running
control plane over its HTTP API with an operator token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import console, daemon_logging, print_json
from edgefleet.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    ValidationError,
)

server_app = typer.Typer(
    help="Run and administer the control plane (local state directory).", no_args_is_help=True
)
token_app = typer.Typer(
    help="Operator tokens in the local database (bootstrap and recovery).", no_args_is_help=True
)
rollout_app = typer.Typer(help="Create and drive gated rollouts.", no_args_is_help=True)
devices_app = typer.Typer(help="The fleet: devices, their state, enrollment tokens.", no_args_is_help=True)
dtokens_app = typer.Typer(
    help="Enrollment tokens (one-time, expiring, scoped to tags).", no_args_is_help=True
)
release_app = typer.Typer(
    help="Releases the control plane knows (registered from the repository).", no_args_is_help=True
)

DEFAULT_URL = "http://127.0.0.1:8700"


def register(app: typer.Typer) -> None:
    server_app.add_typer(token_app, name="token")
    devices_app.add_typer(dtokens_app, name="tokens")
    app.add_typer(server_app, name="server")
    app.add_typer(rollout_app, name="rollout")
    app.add_typer(devices_app, name="devices")
    app.add_typer(release_app, name="release")


# --- shared options ----------------------------------------------------------------------------

DataOpt = typer.Option(
    Path("edgefleet-server"),
    "--data",
    envvar="EDGEFLEET_SERVER_DATA_DIR",
    help="State directory (SQLite database, blobs, admin token).",
)
DbOpt = typer.Option(
    None,
    "--db",
    envvar="EDGEFLEET_SERVER_DB_URL",
    help="Database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in --data).",
)
ServerOpt = typer.Option(DEFAULT_URL, "--server", envvar="EDGEFLEET_SERVER_URL", help="Control plane URL.")
TokenOpt = typer.Option(None, "--token", envvar="EDGEFLEET_TOKEN", help="Operator token (efo_...).")
TokenFileOpt = typer.Option(
    None,
    "--token-file",
    envvar="EDGEFLEET_TOKEN_FILE",
    help="File holding the operator token (default: edgefleet-server/admin-token if present).",
)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        v = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise InputError(
            f"cannot read duration {text!r}", hint="use e.g. 30s, 10m, 2h or plain seconds"
        ) from None
    if v < 0:
        raise InputError(f"duration {text!r} is negative", hint="use e.g. 10m")
    return v


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            raise InputError(f"{what} {item!r} is not key=value", hint=f"e.g. --{what} region=eu-west")
        out[k] = v
    return out


class _Api:
    """A small client of the operator API that turns error bodies into edgefleet errors."""

    _ERRORS = {
        400: InputError,
        401: AuthError,
        403: ForbiddenError,
        404: NotFoundError,
        409: ConflictError,
        413: PayloadTooLargeError,
        422: ValidationError,
    }

    def __init__(self, url: str, token: str | None, token_file: Path | None) -> None:
        import httpx

        self.url = url.rstrip("/")
        tok = token or _read_token(token_file)
        self.client = httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {tok}"})

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.client.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ServerError(
                f"cannot reach the control plane at {self.url}: {e}",
                hint="start it with `edgefleet server run`, or pass --server URL",
            ) from e
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"message": r.text[:300]}
            cls = self._ERRORS.get(r.status_code, ServerError)
            raise cls(body.get("message") or f"HTTP {r.status_code}", hint=body.get("hint"))
        return r.json() if r.content else None


def _read_token(token_file: Path | None) -> str:
    candidates = [token_file] if token_file else [Path("edgefleet-server") / "admin-token"]
    for p in candidates:
        if p is not None and p.is_file():
            tok = p.read_text().strip()
            if tok:
                return tok
    raise AuthError("no operator token", hint="pass --token, set EDGEFLEET_TOKEN, or --token-file PATH")


def _api(server: str, token: str | None, token_file: Path | None) -> _Api:
    return _Api(server, token, token_file)


def _ago(t: float | None) -> str:
    import time

    if t is None:
        return "-"
    s = time.time() - t
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


# --- server ------------------------------------------------------------------------------------


def _config(data: Path, db: str | None, **kw: Any):  # noqa: ANN202
    from edgefleet.server import ServerConfig

    return ServerConfig(data_dir=data, db_url=db, **{k: v for k, v in kw.items() if v is not None})


@server_app.command("run")
def server_run(
    data: Path = DataOpt,
    db: str | None = DbOpt,
    repo: Path | None = typer.Option(
        None, "--repo", help="TUF repository to serve (default: DATA/repository)."
    ),
    keys: Path | None = typer.Option(
        None, "--keys", help="Online keys (timestamp, snapshot); default DATA/keys."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8700, "--port"),
    mqtt: str | None = typer.Option(
        None,
        "--mqtt",
        envvar="EDGEFLEET_SERVER_MQTT_URL",
        help="MQTT broker for nudges, e.g. mqtt://127.0.0.1:1883.",
    ),
    poll_interval: float | None = typer.Option(
        None, "--poll-interval", help="Seconds between device heartbeats."
    ),
    repository_url: str | None = typer.Option(
        None, "--repository-url", help="Repository URL sent to devices."
    ),
) -> None:
    """Run the control plane (migrates the database first; refuses one from a newer edgefleet)."""
    import uvicorn

    from edgefleet.server import create_app

    daemon_logging()
    cfg = _config(
        data,
        db,
        repo_dir=repo,
        keys_dir=keys,
        mqtt_url=mqtt,
        poll_interval_s=poll_interval,
        repository_url=repository_url,
    )
    app = create_app(cfg)
    console.print(f"edgefleet control plane on http://{host}:{port} (OpenAPI at /docs)")
    console.print(f"database: {app.state.ctx.db.dialect}; admin token file: {cfg.admin_token_path}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=30)


@server_app.command("migrate")
def server_migrate(data: Path = DataOpt, db: str | None = DbOpt, json_out: bool = JsonOpt) -> None:
    """Bring the database schema up to date (the server also does this on start)."""
    from edgefleet.server import Database

    cfg = _config(data, db)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(cfg.database_url)
    before = database.current_revision()
    after = database.upgrade()
    if json_out:
        print_json({"from": before, "to": after})
    else:
        console.print(f"database schema: {before or 'empty'} -> {after}")


@token_app.command("create")
def token_create(
    name: str = typer.Option(..., "--name", help="Who or what uses the token."),
    role: str = typer.Option("deployer", "--role", help="viewer, deployer or admin."),
    data: Path = DataOpt,
    db: str | None = DbOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create an operator token directly in the database (printed once)."""
    import time

    from edgefleet.server import Database, Role
    from edgefleet.server._auth import create_operator_token
    from edgefleet.server._rollouts import audit

    cfg = _config(data, db)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(cfg.database_url)
    database.upgrade()
    with database.write() as s:
        row, token = create_operator_token(
            s, name=name, role=Role.parse(role), created_by="cli", now=time.time()
        )
        audit(s, "token.created", actor="cli", now=time.time(), token_id=row.id, name=name, role=role)
    if json_out:
        print_json({"id": row.id, "name": name, "role": role, "token": token})
    else:
        console.print(f"token {row.id} ({role}) for {name} — shown once, keep it in a 0600 file:")
        print(token)


@token_app.command("list")
def token_list(data: Path = DataOpt, db: str | None = DbOpt, json_out: bool = JsonOpt) -> None:
    """List operator tokens (never their secrets)."""
    from sqlalchemy import select

    from edgefleet.server import Database
    from edgefleet.server._models import OperatorToken

    database = Database(_config(data, db).database_url)
    with database.read() as s:
        rows = [
            {"id": t.id, "name": t.name, "role": t.role, "revoked": t.revoked_at is not None}
            for t in s.scalars(select(OperatorToken).order_by(OperatorToken.created_at))
        ]
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    t = Table("id", "name", "role", "revoked")
    for r in rows:
        t.add_row(r["id"], r["name"], r["role"], "yes" if r["revoked"] else "")
    console.print(t)


# --- releases ----------------------------------------------------------------------------------


@release_app.command("register")
def release_register(
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    classes: list[str] = typer.Option(None, "--classes", help="variant=class1,class2 (repeatable)."),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Register a published name+version: the server reads its variants from the TUF targets."""
    body: dict[str, Any] = {"name": name, "version": version}
    if classes:
        body["device_classes"] = {k: v.split(",") for k, v in _pairs(classes, "classes").items()}
    rel = _api(server, token, token_file)("POST", "/v1/releases", json=body)
    if json_out:
        print_json(rel)
        return
    console.print(f"[green]registered[/] {name} {version}:")
    for v in rel["variants"]:
        rt = v["runtime"]
        console.print(
            f"  {v['variant']:<12} classes {','.join(v['device_classes']):<16} "
            f"onnxruntime {rt.get('onnxruntime')}  ram>={rt.get('min_ram_mb') or '-'}  "
            f"isa {','.join(rt.get('isa_flags') or []) or '-'}"
        )


@release_app.command("list")
def release_list(
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Registered releases."""
    rels = _api(server, token, token_file)("GET", "/v1/releases")
    if json_out:
        print_json(rels)
        return
    from rich.table import Table

    t = Table("name", "version", "variants", "registered")
    for r in rels:
        t.add_row(
            r["name"], r["version"], ", ".join(v["variant"] for v in r["variants"]), _ago(r["registered_at"])
        )
    console.print(t)


# --- rollouts ----------------------------------------------------------------------------------


@rollout_app.command("create")
def rollout_create(
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
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Start a rollout of NAME VERSION through gated waves."""
    try:
        wave_list = [float(w) for w in waves.split(",") if w.strip()]
    except ValueError:
        raise InputError(
            f"--waves {waves!r} is not a list of numbers", hint="e.g. --waves 1,5,25,100"
        ) from None
    soaks = [_duration(x) for x in soak.split(",")]
    gates: dict[str, Any] = {k: float(v) for k, v in _pairs(gate, "gate").items()}
    if min_devices is not None:
        gates["min_devices"] = min_devices
    if min_requests is not None:
        gates["min_requests"] = min_requests
    for k in ("min_devices", "min_requests", "min_control_requests"):
        if k in gates:
            gates[k] = int(gates[k])
    body = {
        "name": name,
        "version": version,
        "selector": selector,
        "waves": wave_list,
        "soak_s": soaks[0] if len(soaks) == 1 else soaks,
        "policy": policy,
        "on_fail": on_fail,
        "gates": gates,
    }
    out = _api(server, token, token_file)("POST", "/v1/rollouts", json=body)
    if json_out:
        print_json(out)
        return
    console.print(
        f"[green]rollout {out['id']}[/] {name} {version} to '{out['selector']}': wave 1 "
        f"({out['wave_percent']:g}%) admitted {out['members'].get('admitted', 0)} devices"
        + (f", {out['members']['does_not_fit']} do not fit" if out["members"].get("does_not_fit") else "")
    )


@rollout_app.command("list")
def rollout_list(
    state: str | None = typer.Option(None, "--state"),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Rollouts, newest first."""
    rows = _api(server, token, token_file)("GET", "/v1/rollouts", params={"state": state} if state else None)
    if json_out:
        print_json(rows)
        return
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


@rollout_app.command("show")
def rollout_show(
    rollout_id: str = typer.Argument(...),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """A rollout's state, the current wave's gates with their figures, and devices that do not fit."""
    r = _api(server, token, token_file)("GET", f"/v1/rollouts/{rollout_id}")
    if json_out:
        print_json(r)
        return
    from rich.table import Table

    console.print(
        f"[bold]{r['id']}[/] {r['name']} {r['version']}  selector '{r['selector']}'  [bold]{r['state']}[/]"
        f"  wave {r['wave']}/{len(r['waves'])} ({r['wave_percent']:g}%)  policy {r['policy']}, "
        f"on fail {r['on_fail']}"
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
    for x in r.get("does_not_fit", [])[:20]:
        console.print(f"[yellow]does not fit[/] {x['device_id']}: {x['reason']}")


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _action(action: str):  # noqa: ANN202
    def cmd(
        rollout_id: str = typer.Argument(...),
        reason: str | None = typer.Option(None, "--reason"),
        server: str = ServerOpt,
        token: str | None = TokenOpt,
        token_file: Path | None = TokenFileOpt,
        json_out: bool = JsonOpt,
    ) -> None:
        out = _api(server, token, token_file)(
            "POST", f"/v1/rollouts/{rollout_id}/{action}", json={"reason": reason}
        )
        if json_out:
            print_json(out)
        else:
            console.print(f"rollout {out['id']}: {out['state']} (wave {out['wave']}/{len(out['waves'])})")

    cmd.__doc__ = {
        "pause": "Pause: no new devices, gates keep being measured, the soak clock stops.",
        "resume": "Resume a paused rollout.",
        "abort": "Stop: devices on the release keep it, admitted ones not yet on it keep their old one.",
        "rollback": "Roll every admitted device back to the release it ran before.",
        "approve": "Open the next wave of a rollout waiting for approval.",
    }[action]
    return cmd


for _a in ("pause", "resume", "abort", "rollback", "approve"):
    rollout_app.command(_a)(_action(_a))


@rollout_app.command("audit")
def rollout_audit(
    rollout_id: str = typer.Argument(...),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Every transition of a rollout, with who did it and the figures behind it."""
    rows = _api(server, token, token_file)("GET", f"/v1/rollouts/{rollout_id}/audit")
    if json_out:
        print_json(rows)
        return
    import datetime as dt

    for a in rows:
        when = dt.datetime.fromtimestamp(a["at"]).strftime("%H:%M:%S")
        states = f"{a['from_state'] or ''} -> {a['to_state']}" if a["to_state"] else ""
        d = a["details"]
        extra = d.get("reason") or (f"wave {d['wave']}" if "wave" in d else "")
        console.print(f"{when} {a['actor']:<18} {a['action']:<26} {states:<26} {extra}")


# --- devices -----------------------------------------------------------------------------------


@devices_app.command("list")
def devices_list(
    selector: str | None = typer.Option(None, "--selector", "-s"),
    status: str | None = typer.Option(None, "--status", help="online, stale, offline or revoked."),
    limit: int = typer.Option(100, "--limit"),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Devices, filtered by selector and status."""
    params: dict[str, Any] = {"limit": limit}
    if selector:
        params["selector"] = selector
    if status:
        params["status"] = status
    out = _api(server, token, token_file)("GET", "/v1/devices", params=params)
    if json_out:
        print_json(out)
        return
    from rich.table import Column, Table

    t = Table("name", "class", "tags", "status", "seen", "active", "state")
    t.columns.insert(0, Column("id", no_wrap=True))
    for d in out["devices"]:
        a = d["active"]
        t.add_row(
            d["id"],
            d["name"] or "",
            d["class"],
            " ".join(f"{k}={v}" for k, v in d["tags"].items()),
            d["status"],
            _ago(d["last_seen"]),
            f"{a['name']} {a['version']}" if a else "-",
            d["state"] or "",
        )
    console.print(t)
    console.print(f"{out['total']} devices")


@devices_app.command("show")
def devices_show(
    device_id: str = typer.Argument(...),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """One device: hardware, tags, active model, health, assignment."""
    d = _api(server, token, token_file)("GET", f"/v1/devices/{device_id}")
    if json_out:
        print_json(d)
        return
    console.print_json(data=d)


@devices_app.command("revoke")
def devices_revoke(
    device_id: str = typer.Argument(...),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
) -> None:
    """Revoke a device's token (it must enroll again)."""
    _api(server, token, token_file)("POST", f"/v1/devices/{device_id}/revoke")
    console.print(f"revoked {device_id}")


@devices_app.command("tag")
def devices_tag(
    device_id: str = typer.Argument(...),
    tags: list[str] = typer.Argument(..., help="key=value ..."),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
) -> None:
    """Replace a device's tags."""
    d = _api(server, token, token_file)(
        "PATCH", f"/v1/devices/{device_id}", json={"tags": _pairs(tags, "tag")}
    )
    console.print(f"{device_id}: " + " ".join(f"{k}={v}" for k, v in d["tags"].items()))


@dtokens_app.command("create")
def dtokens_create(
    tag: list[str] = typer.Option(
        None, "--tag", help="key=value every device enrolled with it gets (repeatable)."
    ),
    expires: str = typer.Option("24h", "--expires", help="Lifetime, e.g. 1h."),
    count: int = typer.Option(1, "--count", min=1, max=10_000, help="How many tokens (one per device)."),
    out: Path | None = typer.Option(None, "--out", help="Write the tokens to this file (mode 0600)."),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create one-time enrollment tokens."""
    api = _api(server, token, token_file)
    body = {"tags": _pairs(tag, "tag"), "expires_in_s": _duration(expires)}
    toks = [api("POST", "/v1/enrollment-tokens", json=body) for _ in range(count)]
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(t["token"] + "\n" for t in toks))
    if json_out:
        print_json(toks)
    elif out is not None:
        console.print(f"wrote {count} enrollment tokens to {out}")
    else:
        for t in toks:
            print(t["token"])


@dtokens_app.command("list")
def dtokens_list(
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Enrollment tokens and whether they are still usable."""
    rows = _api(server, token, token_file)("GET", "/v1/enrollment-tokens")
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    t = Table("id", "tags", "usable", "used by", "expires")
    for r in rows:
        t.add_row(
            r["id"],
            " ".join(f"{k}={v}" for k, v in r["tags"].items()),
            "yes" if r["usable"] else "no",
            r["used_by"] or "",
            _ago(r["expires_at"]).replace(" ago", " ago (expired)") if not r["usable"] else "",
        )
    console.print(t)


@dtokens_app.command("revoke")
def dtokens_revoke(
    token_id: str = typer.Argument(...),
    server: str = ServerOpt,
    token: str | None = TokenOpt,
    token_file: Path | None = TokenFileOpt,
) -> None:
    """Revoke an unused enrollment token."""
    _api(server, token, token_file)("DELETE", f"/v1/enrollment-tokens/{token_id}")
    console.print(f"revoked {token_id}")
