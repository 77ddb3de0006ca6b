"""``ApiServer``: the local API on uvicorn (TCP with optional TLS, or a 0600 Unix socket), in the foreground
or a background thread."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgefleet.errors import (
    ConfigError,
)
from edgefleet.runtime._api import create_app
from edgefleet.runtime._config import ApiConfig, RuntimeConfig
from edgefleet.runtime._runtime import Runtime

__all__ = ["ApiServer", "ServeJob", "serve_workers", "tls_options"]

log = logging.getLogger("edgefleet.runtime._api")


def tls_options(cfg: ApiConfig) -> dict[str, Any]:
    """uvicorn's TLS settings for ``cfg`` (empty without a certificate), checked so errors say what to fix."""
    if not cfg.tls_cert and not cfg.tls_key:
        if cfg.tls_client_ca:
            raise ConfigError("a client CA needs TLS", hint="give --tls-cert and --tls-key too")
        return {}
    import ssl

    from edgefleet.tls import server_context

    server_context(cfg.tls_cert, cfg.tls_key, client_ca=cfg.tls_client_ca)  # fails early, with a hint
    opts: dict[str, Any] = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key}
    if cfg.tls_client_ca:
        opts |= {"ssl_ca_certs": cfg.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return opts


def _bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); ConfigError when the address is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror}", hint="choose another --port"
        ) from e
    return sock


class ApiServer:
    """Runs the API with uvicorn on a TCP port or a Unix socket, in the foreground or a thread.

    The socket is bound before uvicorn starts, so ``port=0`` picks a free port (see ``.url``) and a
    Unix socket gets owner-only permissions (0600) before anyone can connect.
    """

    def __init__(
        self,
        runtime: Runtime,
        config: ApiConfig | None = None,
        *,
        log_level: str = "warning",
        reuse_port: bool = False,
    ) -> None:
        import uvicorn

        self.runtime = runtime
        self.config = cfg = config or runtime.config.api
        self.app = create_app(runtime, cfg)
        if cfg.uds:
            path = Path(cfg.uds)
            if path.exists():
                if not path.is_socket():
                    raise ConfigError(f"{path} exists and is not a socket", hint="choose another --uds path")
                path.unlink()  # a stale socket from a previous run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            self.url = f"http+unix://{path}"
        else:
            from edgefleet.tls import check_listen

            check_listen(cfg.host, tls=bool(cfg.tls_cert), insecure_http=cfg.insecure_http, what="the API")
            # reuse_port: one of several processes serving this port (serve_workers)
            sock = _bind_tcp(cfg.host, cfg.port, reuse_port=reuse_port)
            host, port = sock.getsockname()[:2]
            self.port = port
            scheme = "https" if cfg.tls_cert else "http"
            self.url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        sock.listen(2048)
        self._sock = sock
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=5,
                lifespan="off",
                **tls_options(cfg),
            )
        )
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM, then shut down gracefully and return."""
        import signal

        previous = {}
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the stop signal once it has shut down; a graceful stop is not an error
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: None)
        try:
            self._server.run(sockets=[self._sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._cleanup()

    def start(self, timeout: float = 10.0) -> ApiServer:
        """Serve in a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        t0 = time.monotonic()
        while not self._server.started:
            if time.monotonic() - t0 > timeout or not self._thread.is_alive():
                raise ConfigError("the API server did not start", hint="see the log")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        if self.config.uds:
            Path(self.config.uds).unlink(missing_ok=True)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ServeJob:
    """What ``edgefleet serve`` serves: the model and its companions, the settings (``config.api``: where
    to listen). Picklable, so that worker processes can build the same runtime."""

    source: Path
    config: RuntimeConfig
    backup: Path | None = None
    large: Path | None = None
    cloud_url: str | None = None
    outbox: Path | None = None
    log_level: str = "warning"

    def runtime(self) -> tuple[Runtime, Any]:
        """The runtime and its outbox (None without one): the caller closes both."""
        box = None
        if self.outbox is not None:
            from edgefleet.telemetry import Outbox

            box = Outbox(self.outbox)
        try:
            rt = Runtime.from_bundle(
                self.source,
                self.config,
                backup=self.backup,
                large=self.large,
                cloud_url=self.cloud_url,
                outbox=box,
            )
        except BaseException:
            if box is not None:
                box.close()
            raise
        return rt, box

    def serve(self, *, reuse_port: bool = False, ready: Any = None) -> None:
        """Serve in the foreground until SIGTERM/SIGINT; ``ready(runtime, server)`` once it is listening."""
        rt, box = self.runtime()
        try:
            server = ApiServer(rt, self.config.api, log_level=self.log_level, reuse_port=reuse_port)
            if ready is not None:
                ready(rt, server)
            server.run()
        finally:
            rt.close()
            if box is not None:
                box.close()


def serve_workers(job: ServeJob, workers: int, *, ready: Any = None) -> int:
    """Serve ``job`` from ``workers`` processes sharing one TCP port (``SO_REUSEPORT``: the kernel
    spreads new connections across them), until SIGTERM/SIGINT; the exit code to return.

    Each process loads its own copy of the model and runs its own batcher, so memory grows with
    ``workers`` and a batch only gathers requests that reached the same process; ``/metrics`` and
    ``GET /v1/model`` count the requests of the process that answers them. With ``port`` 0 a free port
    is chosen here and held (bound, not listening) while the workers serve it. The model is loaded once
    here first, so that one that cannot load is one clear error; ``ready(runtime, url)`` is then called
    with it before it is closed and the workers start.
    """
    import multiprocessing

    from edgefleet._processes import supervise

    api = job.config.api
    if api.uds:
        raise ConfigError(
            "--workers serves a TCP port; a Unix socket is served by one process",
            hint="drop --uds, or --workers",
        )
    tls_options(api)  # a bad certificate is one clear error here, not one per worker
    hold = _bind_tcp(api.host, api.port, reuse_port=True)
    try:
        port = hold.getsockname()[1]
        rt, box = job.runtime()
        try:
            if ready is not None:
                host = api.host if ":" not in api.host else f"[{api.host}]"
                ready(rt, f"{'https' if api.tls_cert else 'http'}://{host}:{port}")
        finally:
            rt.close()
            if box is not None:
                box.close()
        job = replace(
            job, config=job.config.model_copy(update={"api": api.model_copy(update={"port": port})})
        )
        mp = multiprocessing.get_context("spawn")
        procs = [
            mp.Process(target=_serve_worker, args=(job, os.getpid()), name=f"edgefleet-serve-{i}")
            for i in range(workers)
        ]
        return supervise(procs, what="serve")
    finally:
        hold.close()


def _serve_worker(job: ServeJob, parent: int) -> None:
    from edgefleet._processes import stop_when_orphaned

    stop_when_orphaned(parent)
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    job.serve(reuse_port=True)
