"""Start a control plane in this process (a uvicorn thread) or as a subprocess, on embedded defaults."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from edgefleet.errors import ServerError
from edgefleet.server._config import ServerConfig

__all__ = ["ServerHandle", "start_server", "start_server_process", "free_port", "uvicorn_tls"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerHandle:
    """A running control plane: ``url``, ``admin_token`` and ``stop()`` (also a context manager)."""

    def __init__(
        self,
        url: str,
        config: ServerConfig,
        *,
        server: Any = None,
        thread: Any = None,
        process: subprocess.Popen | None = None,
        app: Any = None,
    ) -> None:
        self.url = url
        self.config = config
        self.app = app
        self._server = server
        self._thread = thread
        self.process = process

    @property
    def admin_token(self) -> str:
        return self.config.admin_token_path.read_text().strip()

    def stop(self, timeout: float = 15.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            self._server = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def uvicorn_tls(app: Any) -> dict[str, Any]:
    """uvicorn settings for the app's TLS: its certificate, and client certificates (mutual TLS) asked for
    (not demanded: tokens stay a fallback) and verified against the device CA, exposed to the app."""
    import ssl

    from edgefleet.tls import peer_cert_protocol

    cfg: ServerConfig = app.state.ctx.config
    if not cfg.tls:
        return {}
    return {
        "ssl_certfile": str(cfg.tls_cert),
        "ssl_keyfile": str(cfg.tls_key),
        "ssl_ca_certs": str(app.state.ctx.devices.identity.ca_cert_file),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "http": peer_cert_protocol(),
    }


def _wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(
                f"server process exited with code {process.returncode} during start",
                hint="run it by hand to see its log",
            )
        try:
            # a liveness probe of our own listener: its certificate is checked by the real clients
            if httpx.get(url + "/healthz", timeout=2, verify=False).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.1)
    raise ServerError(
        f"server at {url} did not become healthy within {timeout:g}s ({last})",
        hint="check the database URL and the server log",
    )


def start_server(
    config: ServerConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 30.0,
    **app_kwargs: Any,
) -> ServerHandle:
    """Run the control plane in a background thread of this process (for the demo and tests).

    With ``config.tls_cert`` it serves HTTPS and asks devices for their client certificates.
    """
    import uvicorn

    from edgefleet.server._app import create_app

    cfg = config or ServerConfig()
    app = create_app(cfg, **app_kwargs)
    port = port or free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_keep_alive=30,
            **uvicorn_tls(app),
        )
    )
    thread = threading.Thread(target=server.run, name="edgefleet-server", daemon=True)
    thread.start()
    url = f"{'https' if cfg.tls else 'http'}://{host}:{port}"
    _wait_healthy(url, timeout)
    return ServerHandle(url, cfg, server=server, thread=thread, app=app)


def start_server_process(
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 60.0,
    log_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> ServerHandle:
    """Run the control plane as a real ``uvicorn`` subprocess configured through EDGEFLEET_SERVER_*."""
    port = port or free_port(host)
    env = dict(os.environ)
    for k, v in config.model_dump(exclude_none=True).items():
        env[f"EDGEFLEET_SERVER_{k.upper()}"] = str(v)
    env.update(extra_env or {})
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "edgefleet.server:app_from_env",
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-keep-alive",
            "30",
        ],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{host}:{port}"
    try:
        _wait_healthy(url, timeout, proc)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return ServerHandle(url, config, process=proc)
