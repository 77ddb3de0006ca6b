"""``edgefleet agent``: enroll a device, run the agent, show its state, roll back."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from edgefleet.cli._common import console, daemon_logging, err_console, print_json

agent_app = typer.Typer(help="Device agent: enroll, run, status, rollback.", no_args_is_help=True)

_STATE = typer.Option(
    None, "--state", "-s", help="State directory (default: $EDGEFLEET_AGENT_STATE_DIR or /var/lib/edgefleet)."
)


F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    """Bad input becomes an edgefleet error (one line and a hint, exit 1 in ``main``), never a traceback:
    pydantic validation (options, ``EDGEFLEET_AGENT_*`` variables, the enrollment request) and OS errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from edgefleet.errors import ConfigError, InputError

        try:
            return fn(*args, **kwargs)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or e.title
            more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
            raise InputError(
                f"invalid {where}: {first.get('msg', 'invalid value')}{more}",
                hint=_HINTS.get(where, "check the option or its EDGEFLEET_AGENT_* environment variable"),
            ) from None
        except OSError as e:
            raise ConfigError(
                f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}",
                hint="pass a state directory this user can write with --state (or EDGEFLEET_AGENT_STATE_DIR)",
            ) from None

    return wrapper  # type: ignore[return-value]


_HINTS = {
    "token": "pass the one-time token an operator created (`edgefleet devices tokens create`)",
    "api_port": "a TCP port, 0-65535 (0: any free port)",
    "name": "a device name of at most the allowed length",
}


def _config(state: Path | None, **overrides: object):
    from edgefleet.agent import AgentConfig

    kw = {k: v for k, v in overrides.items() if v is not None}
    if state is not None:
        kw["state_dir"] = state
    return AgentConfig(**kw)


@agent_app.command("enroll")
@_one_line_errors
def enroll_cmd(
    server: str = typer.Option(..., "--server", help="Control plane URL, e.g. http://10.0.0.5:8000"),
    token: str = typer.Option(
        ..., "--token", envvar="EDGEFLEET_ENROLL_TOKEN", help="One-time enrollment token."
    ),
    root: Path = typer.Option(
        ..., "--root", help="A root.json of the repository (any version: newer ones are followed)."
    ),
    repository_url: str | None = typer.Option(
        None, "--repository-url", help="Where the repository is served (default: SERVER/repository/)."
    ),
    state: Path | None = _STATE,
    name: str | None = typer.Option(None, help="Device name shown in the control plane."),
    device_class: str | None = typer.Option(None, "--device-class", help="Override the detected class."),
    tag: list[str] = typer.Option([], "--tag", help="key=value tag (repeatable), e.g. --tag region=eu"),
    ca: Path | None = typer.Option(
        None, "--ca", help="The control plane's CA certificate (ca.crt), pinned for every connection."
    ),
    system_ca: bool = typer.Option(
        False, "--system-ca", help="Trust the system store for an https server (no --ca)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Exchange an enrollment token for device credentials (stored 0600 in the state directory)."""
    from edgefleet.agent import enroll
    from edgefleet.errors import InputError

    try:
        root_bytes = root.read_bytes()
    except OSError as e:
        raise InputError(
            f"cannot read --root {root}: {e.strerror or e}",
            hint="pass the repository's root.json (from `edgefleet registry init`)",
        ) from None
    tags = {}
    for t in tag:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise InputError(f"tag {t!r} is not key=value", hint="e.g. --tag region=eu")
        tags[k] = v
    cfg = _config(state)
    creds = enroll(
        cfg,
        token=token,
        root_json=root_bytes,
        server_url=server,
        repository_url=repository_url,
        name=name,
        device_class=device_class,
        tags=tags,
        ca=ca,
        system_ca=system_ca,
    )
    out = {
        "device_id": creds.device_id,
        "state_dir": str(cfg.state_dir),
        "repository_url": creds.repository_url,
    }
    if as_json:
        print_json(out)
    else:
        console.print(
            f"enrolled as [bold]{creds.device_id}[/]; credentials in {cfg.state_dir}/credentials.json"
        )


@agent_app.command("run")
@_one_line_errors
def run_cmd(
    state: Path | None = _STATE,
    api_port: int | None = typer.Option(
        None, "--api-port", help="Serve the local inference API on this port."
    ),
    api_host: str | None = typer.Option(
        None, "--api-host", help="Address of the local API (default 127.0.0.1)."
    ),
    api_tls_cert: Path | None = typer.Option(
        None, "--api-tls-cert", help="PEM certificate: serve the local API over HTTPS."
    ),
    api_tls_key: Path | None = typer.Option(None, "--api-tls-key", help="PEM key of --api-tls-cert."),
    api_insecure_http: bool = typer.Option(
        False,
        "--api-insecure-http",
        help="Allow the local API in clear text off loopback (behind a TLS proxy).",
    ),
    mqtt: str | None = typer.Option(None, "--mqtt", help="mqtt://host:port for nudges (poll now)."),
    max_rate: float | None = typer.Option(None, "--max-rate", help="Download byte-rate cap in bytes/s."),
    once: bool = typer.Option(False, "--once", help="Run one loop pass and exit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar while downloading."),
) -> None:
    """Run the agent in the foreground (logs to stderr; SIGTERM or Ctrl-C stops it cleanly)."""
    import signal

    from edgefleet._tracing import configure_from_env
    from edgefleet.agent import Agent

    daemon_logging()
    configure_from_env("edgefleet-agent")  # update steps as spans when OTEL_TRACES_EXPORTER is set
    cfg = _config(
        state,
        api_port=api_port,
        api_host=api_host,
        api_tls_cert=str(api_tls_cert) if api_tls_cert else None,
        api_tls_key=str(api_tls_key) if api_tls_key else None,
        api_insecure_http=api_insecure_http or None,
        mqtt_url=mqtt,
        max_rate_bytes_per_s=max_rate,
    )
    bar = _ProgressBar() if progress and err_console.is_terminal else None
    agent = Agent(cfg, on_progress=bar.update if bar else None)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    try:
        agent.run(max_iterations=1 if once else None)
    except KeyboardInterrupt:
        agent.stop_event.set()
    finally:
        if bar:
            bar.stop()


class _ProgressBar:
    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self.p = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err_console,
            transient=True,
        )
        self.task = None

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            self.p.start()
            self.task = self.p.add_task("downloading", total=total)
        self.p.update(self.task, completed=done, total=total)
        if done >= total:
            self.stop()

    def stop(self) -> None:
        if self.task is not None:
            self.p.stop()
            self.task = None


@agent_app.command("status")
@_one_line_errors
def status_cmd(
    state: Path | None = _STATE,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print the state directory's view: active and kept versions, update in flight, journal, errors."""
    from rich.table import Table

    from edgefleet.agent import agent_status

    cfg = _config(state)
    st = agent_status(cfg.state_dir)
    if as_json:
        print_json(st)
        return
    dev = st["device"]
    console.print(f"state: {st['state_dir']}  device: {dev['device_id'] if dev else '[red]not enrolled[/]'}")
    t = Table("", "version", "name", "variant", "sha256", "activated")
    for m in st["kept"]:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m["activated_at"]))
            if m["activated_at"]
            else "-"
        )
        t.add_row("*" if m["current"] else "", m["version"], m["name"], m["variant"], m["sha256"][:12], when)
    console.print(t)
    if st["pending"]:
        p = st["pending"]
        console.print(
            f"update in flight: {p['assignment']['version']} step={p['step']} "
            f"downloaded={p['bytes_downloaded']}/{p['assignment']['length']}"
        )
    if st["watch"]:
        w = st["watch"]
        looks = f"; {w['looks']} latency looks, last ratio {w['last_ratio']}" if w.get("looks") else ""
        console.print(f"watching {w['sha256'][:12]} since {time.ctime(w['started_at'])}{looks}")
    for sha, why in st["failed"].items():
        console.print(f"[yellow]refused {sha[:12]}[/]: {why}")
    if st["last_error"]:
        console.print(f"[red]last error:[/] {st['last_error']}")
    for ev in st["history"][-10:]:
        console.print(
            f"  {time.strftime('%H:%M:%S', time.localtime(ev['t']))} {ev['event']} "
            + " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("t", "event")),
            highlight=False,
        )


@agent_app.command("rollback")
@_one_line_errors
def rollback_cmd(
    state: Path | None = _STATE,
    version: str | None = typer.Option(
        None, "--version", help="Kept version to switch to (default: previous)."
    ),
    wait: float = typer.Option(30.0, help="Seconds to wait for a running agent to carry it out."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Switch to a kept version now (no download). A running agent is asked through the state dir."""
    from edgefleet.agent import Agent, request_rollback
    from edgefleet.errors import AgentError

    cfg = _config(state)
    try:
        agent = Agent(cfg, host=_NoHost())
        agent._lock()
    except AgentError:
        result = request_rollback(cfg.state_dir, version, wait_s=wait)
    else:
        try:
            agent.replay()
            m = agent.rollback(version, reason="operator command (edgefleet agent rollback)")
            result = {"rolled_back_to": m.version, "sha256": m.sha256, "via": "direct"}
        finally:
            agent.close()
    if as_json:
        print_json(result)
    else:
        console.print(f"active version is now [bold]{result['rolled_back_to']}[/] ({result['sha256'][:12]})")


class _NoHost:
    """A running agent is not there to hot swap; the next start loads `current`."""

    loaded = None

    def load(self, bundle_dir: Path) -> None:
        pass

    def close(self) -> None:
        pass


@agent_app.command("unit")
def unit_cmd() -> None:
    """Print the systemd unit file shipped with edgefleet (see docs/agent.md)."""
    from edgefleet.agent import SYSTEMD_UNIT

    print(SYSTEMD_UNIT.read_text(), end="")


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")


__all__ = ["register"]
