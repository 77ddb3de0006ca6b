"""Serving a repository over plain HTTP and fetching a verified bundle with python-tuf's ngclient."""

from __future__ import annotations

import functools
import logging
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgefleet._fs import fsync_dir
from edgefleet.errors import NotFoundError, VerificationError
from edgefleet.registry._published import target_path_for

__all__ = ["RepositoryServer", "fetch_target", "fetch_bundle"]

log = logging.getLogger(__name__)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s " + format, self.address_string(), *args)


class RepositoryServer:
    """A static HTTP server for a repository directory (``metadata/`` and ``targets/`` under ``url``).

    Any static server works; this one exists for tests, benchmarks and ``edgefleet registry serve``.
    Use as a context manager; ``port=0`` picks a free port.
    """

    def __init__(self, directory: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = Path(directory)
        handler = functools.partial(_QuietHandler, directory=str(self.directory))
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.url}/targets/"

    def start(self) -> RepositoryServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="edgefleet-repo-http", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> RepositoryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fetch_target(
    base_url: str,
    root: bytes | str | os.PathLike[str],
    target_path: str,
    dest: str | os.PathLike[str],
    *,
    state_dir: str | os.PathLike[str],
) -> Path:
    """Download one target through python-tuf (refresh, look up, download, verify) into ``dest``.

    Args:
        base_url: URL the repository directory is served at (``metadata/`` and ``targets/`` below it).
        root: the pinned root metadata (bytes or a path), the trust anchor.
        target_path: e.g. ``digits/1.0.0/cpu.tar``.
        dest: output file; written only after verification (tmp + rename).
        state_dir: where the client keeps its trusted metadata between runs (rollback protection).

    Raises:
        VerificationError: python-tuf refused the metadata or the target (the cause is attached).
        NotFoundError: the verified metadata does not list ``target_path``.
    """
    from tuf.api import exceptions as tuf_exc
    from tuf.ngclient import Updater

    pinned = root if isinstance(root, bytes) else Path(root).read_bytes()
    state = Path(state_dir)
    (state / "metadata").mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    tmp: Path | None = None
    try:
        updater = Updater(
            metadata_dir=str(state / "metadata"),
            metadata_base_url=f"{base}/metadata/",
            target_base_url=f"{base}/targets/",
            bootstrap=pinned,
        )
        updater.refresh()
        info = updater.get_targetinfo(target_path)
        if info is None:
            raise NotFoundError(
                f"{target_path} is not listed in the repository's signed targets",
                hint="check the name/version/variant with `edgefleet registry list`",
                target=target_path,
            )
        out = Path(dest)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        updater.download_target(info, filepath=str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise VerificationError(
            f"TUF verification of {target_path} from {base} failed: {type(e).__name__}: {e}",
            hint="the server is stale, frozen or tampered with, or the pinned root is wrong; "
            "nothing was installed",
            target=target_path,
            cause=type(e).__name__,
        ) from e
    log.info("downloaded and verified %s (%d bytes)", target_path, info.length)
    return out


def fetch_bundle(
    base_url: str,
    root: bytes | str | os.PathLike[str],
    name: str,
    version: str,
    variant: str,
    dest_dir: str | os.PathLike[str],
    *,
    state_dir: str | os.PathLike[str],
) -> Path:
    """``fetch_target`` for a bundle by name, version and variant; returns ``dest_dir/<variant>.tar``."""
    tpath = target_path_for(name, version, variant)
    return fetch_target(
        base_url, root, tpath, Path(dest_dir) / f"{name}-{version}-{variant}.tar", state_dir=state_dir
    )
