"""``edgefleet serve BUNDLE_OR_MODEL``: the on-device runtime over a local HTTP API (or a Unix socket)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import err_console
from edgefleet.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def _read_token(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(
            f"cannot read token file {path}: {e.strerror}", hint="create it with mode 0600"
        ) from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"chmod 600 {path}",
        )
    token = path.read_text().strip()
    if not token:
        raise ConfigError(f"token file {path} is empty", hint="write the token into it")
    return token


def serve(
    source: Path = typer.Argument(
        ..., help="Bundle archive, extracted bundle directory, or .onnx/.tflite model."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8080, help="TCP port (0: any free port)."),
    uds: Path | None = typer.Option(None, help="Serve on this Unix socket (mode 0600) instead of TCP."),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="File (mode 0600) holding the bearer token clients must send."
    ),
    token: str | None = typer.Option(
        None,
        envvar="EDGEFLEET_API_TOKEN",
        help="Bearer token (prefer --token-file: argv is visible to others).",
    ),
    backup: Path | None = typer.Option(None, help="Backup model or bundle answering when the primary fails."),
    large: Path | None = typer.Option(None, help="Larger model or bundle for low-confidence escalations."),
    cloud_url: str | None = typer.Option(
        None, help="HTTP endpoint for escalations (behind a circuit breaker)."
    ),
    outbox: Path | None = typer.Option(None, help="SQLite outbox where unsent escalations wait."),
    threshold: float | None = typer.Option(None, help="Escalate when confidence is below this."),
    max_batch_size: int | None = typer.Option(None, help="Most rows per model call."),
    max_delay_ms: float | None = typer.Option(None, help="Longest wait for more rows in a batch."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Run each request on its own."),
    cache: bool = typer.Option(False, "--cache", help="Cache answers of repeated inputs."),
    rate_limit: float | None = typer.Option(None, help="Requests per second allowed per client."),
    threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads."),
    trigger: str | None = typer.Option(
        None,
        "--trigger",
        help="A cheap gate in front of the model: energy:-40dBFS[:HANGOVER_CHUNKS]. Inputs it rejects are "
        "answered triggered=false without running the model.",
    ),
    trigger_input: str | None = typer.Option(
        None, "--trigger-input", help="Input the trigger looks at (default: the model's first float input)."
    ),
    watts: float | None = typer.Option(
        None, "--watts", help="The device's CPU power figure in W: estimates the energy the trigger saves."
    ),
    profile: Path | None = typer.Option(
        None,
        "--profile",
        help="Device profile (edgefleet device probe): its power figure (RAPL-measured watts, else "
        "device.cpu_watts) when --watts is not given.",
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", envvar="EDGEFLEET_API_TLS_CERT", help="PEM certificate: serve HTTPS."
    ),
    tls_key: Path | None = typer.Option(
        None, "--tls-key", envvar="EDGEFLEET_API_TLS_KEY", help="PEM private key of --tls-cert (mode 0600)."
    ),
    tls_client_ca: Path | None = typer.Option(
        None, "--tls-client-ca", help="Require client certificates signed by this CA (mutual TLS)."
    ),
    insecure_http: bool = typer.Option(
        False, "--insecure-http", help="Allow plain HTTP off loopback (only behind a TLS-terminating proxy)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="Processes sharing the TCP port (SO_REUSEPORT), each with its own copy of the model and its own "
        "batcher: more requests per second where cores allow, at that much more memory; /metrics counts "
        "the process that answers the scrape.",
    ),
) -> None:
    """Serve a model: POST /v1/predict, GET /v1/model, /healthz, /metrics, and the Open Inference
    Protocol (KServe v2: /v2/health/live and ready, /v2/models/NAME, its /ready and /infer); OpenAPI
    at /docs."""
    import logging

    from edgefleet.runtime import RuntimeConfig

    cfg = RuntimeConfig()
    api = cfg.api.model_copy(
        update={
            "host": host,
            "port": port,
            "uds": str(uds) if uds else None,
            "tls_cert": str(tls_cert) if tls_cert else None,
            "tls_key": str(tls_key) if tls_key else None,
            "tls_client_ca": str(tls_client_ca) if tls_client_ca else None,
            "insecure_http": insecure_http,
        }
    )
    if not uds:
        from edgefleet.tls import check_listen

        check_listen(host, tls=bool(tls_cert), insecure_http=insecure_http, what="edgefleet serve")
    if token_file is not None:
        api.token = _read_token(token_file)
    elif token:
        api.token = token
    if rate_limit is not None:
        api.rate_limit_rps = rate_limit
    updates: dict = {"api": api}
    if max_batch_size is not None or max_delay_ms is not None or no_batching:
        b = cfg.batcher.model_copy()
        if max_batch_size is not None:
            b.max_batch_size = max_batch_size
        if max_delay_ms is not None:
            b.max_delay_ms = max_delay_ms
        b.enabled = not no_batching
        updates["batcher"] = b
    if cache:
        updates["cache"] = cfg.cache.model_copy(update={"enabled": True})
    if threshold is not None:
        updates["escalation"] = cfg.escalation.model_copy(update={"threshold": threshold})
    if threads is not None:
        updates["engine"] = cfg.engine.model_copy(update={"intra_op_threads": threads})
    if trigger is not None:
        from edgefleet.power._trigger import parse_trigger

        parse_trigger(trigger)  # a bad spec is a clear error before the model loads
        updates["trigger"] = trigger
    if trigger_input is not None:
        updates["trigger_input"] = trigger_input
    if watts is not None:
        if watts <= 0:
            raise ConfigError(f"--watts {watts:g} must be positive", hint="e.g. --watts 4.5")
        updates["power_watts"] = watts
    elif profile is not None:
        from edgefleet.optimize import DeviceProfile
        from edgefleet.power._fit import power_figure

        fig = power_figure(DeviceProfile.from_yaml(profile).device)
        if fig is None:
            raise ConfigError(
                f"device profile {profile} has no power figure",
                hint="add device.cpu_watts to it, or pass --watts",
            )
        updates["power_watts"] = fig[0]
    cfg = cfg.model_copy(update=updates)

    from edgefleet.runtime._server import ServeJob, serve_workers

    job = ServeJob(
        source,
        cfg,
        backup=backup,
        large=large,
        cloud_url=cloud_url,
        outbox=outbox,
        log_level="info" if logging.getLogger().level <= logging.INFO else "warning",
    )
    os.environ.pop("EDGEFLEET_API_TOKEN", None)
    if workers > 1:
        code = serve_workers(job, workers, ready=lambda rt, url: _announce(rt, url, api, host, uds, workers))
        raise typer.Exit(code)
    job.serve(ready=lambda rt, server: _announce(rt, server.url, api, host, uds))


def _announce(rt: Any, where: str, api: Any, host: str, uds: Path | None, workers: int = 1) -> None:
    m = rt.manifest
    err_console.print(f"serving [bold]{m.key}[/] on {where} (OpenAPI at /docs)", highlight=False)
    if workers > 1:
        err_console.print(f"{workers} processes share the port, each with its own copy of the model")
    if rt.trigger is not None:
        err_console.print(
            f"trigger: {rt.trigger.gate!r} on input {rt.trigger.watched(m)!r}; gated inputs answer "
            "triggered=false (counts in GET /v1/model and /metrics)",
            highlight=False,
        )
    if api.token is None and not uds and host not in ("127.0.0.1", "::1", "localhost"):
        err_console.print(
            "[yellow]warning:[/] no token and not on loopback: anyone on the network can call it"
        )
