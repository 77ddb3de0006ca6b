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

from edgefleet._processes import stop_when_orphaned
from edgefleet.errors import ServerError
from edgefleet.server._config import ServerConfig

__all__ = [
    "ServerHandle",
    "serve_workers",
    "start_server",
    "start_server_process",
    "free_port",
    "uvicorn_tls",
]

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

    def kill(self) -> int:
        """SIGKILL the server's processes (the supervisor and its workers, one process group): a crash, no
        shutdown. Returns the pid that was the server."""
        import signal

        if self.process is None:
            raise ServerError("kill() needs a server started as a process", hint="use start_server_process")
        try:
            if os.getpgid(self.process.pid) == self.process.pid:  # a supervisor and its workers
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
        except ProcessLookupError:
            pass
        self.process.wait(15)
        return self.process.pid

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
    workers: int = 1,
    jobs_process: bool = True,
) -> ServerHandle:
    """Run the control plane as ``edgefleet server run`` does, in subprocesses configured through
    EDGEFLEET_SERVER_*: ``workers`` request processes sharing the port and, with ``jobs_process`` (the
    default, as for ``server run``), one more for the periodic jobs (``serve_workers``); with
    ``jobs_process=False`` and one worker, one plain ``uvicorn`` process running both.

    A supervisor and its workers form a process group of their own (``ServerHandle.kill`` ends them all
    at once) and stop when the program that started them is gone.
    """
    port = port or free_port(host)
    env = dict(os.environ)
    for k, v in config.model_dump(exclude_none=True).items():
        env[f"EDGEFLEET_SERVER_{k.upper()}"] = str(v)
    env.update(extra_env or {})
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    supervised = workers > 1 or jobs_process
    if supervised:
        cmd = [sys.executable, "-m", "edgefleet.server._runner", host, str(port), str(workers)]
        cmd += ["jobs-process"] if jobs_process else []
    else:
        cmd = [
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
        ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        # the supervisor and its workers in a group of their own, for kill(); it stops them when its
        # starter is gone (_main), as a terminal's ^C would have
        start_new_session=supervised,
    )
    url = f"http://{host}:{port}"
    try:
        _wait_healthy(url, timeout, proc)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return ServerHandle(url, config, process=proc)


# --- several processes on one port -----------------------------------------------------------------


def serve_workers(
    config: ServerConfig, *, host: str, port: int, workers: int, jobs_process: bool = False
) -> int:
    """Serve with ``workers`` processes on one port until SIGTERM/SIGINT; the exit code to return.

    Each process binds the port with ``SO_REUSEPORT`` (the kernel spreads new connections across them)
    and runs the whole app; the periodic jobs run in whichever holds the database's leader lease.
    ``jobs_process``: the periodic jobs (rollout engine ticks, timestamp refresh, alerts and retention) run
    in one more process that serves no requests, and the request processes run none, so a tick's Python
    never holds a request thread's GIL. The database should be migrated first (``create_app`` in this
    process does it). When one process dies, the others are stopped: a supervisor (systemd, Kubernetes)
    restarts the whole server. ``edgefleet server run`` serves this way with ``jobs_process`` by default.
    """
    import multiprocessing

    from edgefleet._processes import supervise

    mp = multiprocessing.get_context("spawn")
    serving = config.model_copy(update={"engine_enabled": False}) if jobs_process else config
    procs = [
        mp.Process(target=_worker, args=(serving, host, port, os.getpid()), name=f"edgefleet-server-{i}")
        for i in range(workers)
    ]
    if jobs_process:
        procs.append(mp.Process(target=_jobs_worker, args=(config, os.getpid()), name="edgefleet-jobs"))
    return supervise(procs, what="server")


def _worker(config: ServerConfig, host: str, port: int, parent: int) -> None:
    import uvicorn

    from edgefleet.server._app import create_app

    stop_when_orphaned(parent)
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    app = create_app(config)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_keep_alive=30,
            **uvicorn_tls(app),
        )
    )
    server.run(sockets=[sock])


def _jobs_worker(config: ServerConfig, parent: int) -> None:
    """The process of ``serve_workers(jobs_process=True)`` that runs the app's periodic jobs and serves
    nothing: the app's lifespan (which starts them, under the leader lease) until SIGTERM/SIGINT."""
    import asyncio
    import signal

    from edgefleet.server._app import create_app

    stop_when_orphaned(parent)
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    app = create_app(config)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with app.router.lifespan_context(app):
            await stop.wait()

    asyncio.run(run())


def _main(argv: list[str]) -> int:
    """``python -m edgefleet.server._runner HOST PORT WORKERS [jobs-process]``, settings from
    EDGEFLEET_SERVER_*."""
    from edgefleet.server._app import create_app

    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    # started by start_server_process in a session of its own: stop (and stop the workers) when the
    # program that started it is gone, as a terminal's ^C would have done
    stop_when_orphaned(os.getppid())
    cfg = ServerConfig()
    create_app(cfg).state.ctx.db.dispose()  # migrate once, before the workers start
    jobs = argv[3:4] == ["jobs-process"]
    return serve_workers(cfg, host=argv[0], port=int(argv[1]), workers=int(argv[2]), jobs_process=jobs)


if __name__ == "__main__":
    from edgefleet.server import _runner  # the importable module, so workers unpickle its _worker

    sys.exit(_runner._main(sys.argv[1:]))
