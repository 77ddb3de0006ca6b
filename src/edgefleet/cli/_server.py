"""``edgefleet server run|migrate|token``: the control plane on its local state directory.

The groups that drive a running control plane over its HTTP API are ``_rollout`` (rollout, release)
and ``_devices`` (devices, enrollment tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import CaFile, JsonOut, ServerUrl, console, daemon_logging, emit
from edgefleet.client import DEFAULT_URL

server_app = typer.Typer(
    help="Run and administer the control plane (local state directory).", no_args_is_help=True
)
token_app = typer.Typer(
    help="Operator tokens in the local database (bootstrap and recovery).", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    server_app.add_typer(token_app, name="token")
    app.add_typer(server_app, name="server")


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


# --- server ------------------------------------------------------------------------------------


def _config(data: Path, db: str | None, **kw: Any):  # noqa: ANN202
    from pydantic import ValidationError

    from edgefleet.errors import InputError
    from edgefleet.server import ServerConfig

    try:
        return ServerConfig(data_dir=data, db_url=db, **{k: v for k, v in kw.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise InputError(
            f"invalid server setting {where}: {first.get('msg')}",
            hint="see 'edgefleet server run --help' (or the EDGEFLEET_SERVER_* variables)",
        ) from None


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
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", envvar="EDGEFLEET_SERVER_TLS_CERT", help="PEM server certificate: serve HTTPS."
    ),
    tls_key: Path | None = typer.Option(
        None, "--tls-key", envvar="EDGEFLEET_SERVER_TLS_KEY", help="PEM key of --tls-cert."
    ),
    ca: Path | None = typer.Option(
        None,
        "--ca",
        envvar="EDGEFLEET_SERVER_CA_DIR",
        help="CA folder (ca.crt, ca.key) that signs and verifies device certificates "
        "(default DATA/ca, created at first start when TLS is on).",
    ),
    device_auth: str | None = typer.Option(
        None,
        "--device-auth",
        envvar="EDGEFLEET_SERVER_DEVICE_AUTH",
        help="either (client certificate or device token), mtls, or token.",
    ),
    blob_url: str | None = typer.Option(
        None,
        "--blob-url",
        envvar="EDGEFLEET_SERVER_BLOB_URL",
        help="s3://bucket/prefix: keep samples and other blobs in an S3-compatible bucket (the s3 extra; "
        "credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); default files in DATA/blobs.",
    ),
    blob_endpoint: str | None = typer.Option(
        None,
        "--blob-endpoint",
        envvar="EDGEFLEET_SERVER_BLOB_S3_ENDPOINT_URL",
        help="Endpoint of the S3-compatible service of --blob-url (MinIO, Ceph...); default AWS.",
    ),
    insecure_http: bool = typer.Option(
        False, "--insecure-http", help="Allow clear text off loopback (a TLS-terminating proxy in front)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="Server processes sharing the port (SO_REUSEPORT); one of them runs the periodic jobs.",
    ),
    jobs_process: bool = typer.Option(
        True,
        "--jobs-process/--jobs-in-process",
        help="Where the periodic jobs (rollout engine, timestamp refresh, alerts, retention) run: by default "
        "in a process of their own that serves no requests, so a large fleet's rollout ticks do not hold "
        "the request threads' interpreter lock (docs/benchmarks.md: heartbeat p99 83 ms against 4.8 s "
        "during a 5,000-device rollout); --jobs-in-process runs them in a thread of a request process "
        "(one process fewer).",
    ),
) -> None:
    """Run the control plane (migrates the database first; refuses one from a newer edgefleet)."""
    import uvicorn

    from edgefleet.server import create_app
    from edgefleet.server._runner import uvicorn_tls
    from edgefleet.tls import check_listen, server_context

    daemon_logging()
    cfg = _config(
        data,
        db,
        repo_dir=repo,
        keys_dir=keys,
        mqtt_url=mqtt,
        poll_interval_s=poll_interval,
        repository_url=repository_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        ca_dir=ca,
        device_auth=device_auth,
        blob_url=blob_url,
        blob_s3_endpoint_url=blob_endpoint,
    )
    if cfg.tls_cert is not None or cfg.tls_key is not None:
        server_context(cfg.tls_cert, cfg.tls_key)  # both given, readable and a pair, before anything starts
    check_listen(host, tls=cfg.tls, insecure_http=insecure_http)
    app = create_app(cfg)
    tls = uvicorn_tls(app)
    scheme = "https" if tls else "http"
    console.print(f"edgefleet control plane on {scheme}://{host}:{port} (OpenAPI at /docs)")
    console.print(f"database: {app.state.ctx.db.dialect}; admin token file: {cfg.admin_token_path}")
    if cfg.blob_url:
        console.print(
            f"blobs: {cfg.blob_url}" + (f" at {cfg.blob_s3_endpoint_url}" if cfg.blob_s3_endpoint_url else "")
        )
    if tls:
        console.print(
            f"device CA: {tls['ssl_ca_certs']} (devices enroll with --ca <the CA of the server certificate>); "
            f"device auth: {cfg.device_auth}"
        )
    if workers > 1 or jobs_process:
        from edgefleet.server._runner import serve_workers

        jobs = " and one for the periodic jobs" if jobs_process else " (the periodic jobs in one of them)"
        console.print(f"{workers} server process{'es' if workers > 1 else ''} on port {port}{jobs}")
        app.state.ctx.db.dispose()  # migrated, keys and CA made: the workers start from there
        raise typer.Exit(serve_workers(cfg, host=host, port=port, workers=workers, jobs_process=jobs_process))
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=30, **tls
    )


@server_app.command("wait")
def server_wait(
    server: ServerUrl = DEFAULT_URL,
    ca: CaFile = None,
    timeout: float = typer.Option(60.0, min=0.1, help="Give up after this many seconds."),
) -> None:
    """Wait until a control plane answers /healthz (for scripts that just started one)."""
    import time

    import httpx

    from edgefleet.errors import ServerError

    verify: Any = True
    if ca is not None and server.startswith("https:"):
        from edgefleet.tls import client_context

        verify = client_context(ca)
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(base_url=server.rstrip("/"), verify=verify, timeout=5) as c:
        while True:
            try:
                r = c.get("/healthz")
                if r.status_code == 200:
                    console.print(f"{server} is up", highlight=False)
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = str(e) or type(e).__name__
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"{server} did not answer /healthz within {timeout:g}s ({last})",
                    hint="check the server's log, its URL, and --ca for an https server",
                )
            time.sleep(0.25)


@server_app.command("migrate")
def server_migrate(data: Path = DataOpt, db: str | None = DbOpt, json_out: JsonOut = False) -> None:
    """Bring the database schema up to date (the server also does this on start)."""
    from edgefleet.server import Database

    cfg = _config(data, db)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(cfg.database_url)
    before = database.current_revision()
    after = database.upgrade()
    emit(
        {"from": before, "to": after},
        json_out,
        lambda r: console.print(f"database schema: {r['from'] or 'empty'} -> {r['to']}"),
    )


@token_app.command("create")
def token_create(
    name: str = typer.Option(..., "--name", help="Who or what uses the token."),
    role: str = typer.Option("deployer", "--role", help="viewer, deployer or admin."),
    data: Path = DataOpt,
    db: str | None = DbOpt,
    json_out: JsonOut = False,
) -> None:
    """Create an operator token directly in the database (printed once)."""
    import time

    from edgefleet.server import Database, Role
    from edgefleet.server._audit import audit
    from edgefleet.server._auth import create_operator_token

    cfg = _config(data, db)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(cfg.database_url)
    database.upgrade()
    with database.write() as s:
        row, token = create_operator_token(
            s, name=name, role=Role.parse(role), created_by="cli", now=time.time()
        )
        audit(s, "token.created", actor="cli", now=time.time(), token_id=row.id, name=name, role=role)
    emit({"id": row.id, "name": name, "role": role, "token": token}, json_out, _show_token)


@token_app.command("list")
def token_list(data: Path = DataOpt, db: str | None = DbOpt, json_out: JsonOut = False) -> None:
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
    emit(rows, json_out, _show_tokens)


def _show_token(t: dict[str, Any]) -> None:
    console.print(f"token {t['id']} ({t['role']}) for {t['name']} — shown once, keep it in a 0600 file:")
    print(t["token"])


def _show_tokens(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("id", "name", "role", "revoked")
    for r in rows:
        t.add_row(r["id"], r["name"], r["role"], "yes" if r["revoked"] else "")
    console.print(t)
