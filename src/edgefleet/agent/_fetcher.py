"""The agent's network seam: a python-tuf ``FetcherInterface`` on httpx.

Metadata goes through :meth:`HttpxFetcher.fetch` (what ``tuf.ngclient.Updater`` calls). Targets go
through :meth:`HttpxFetcher.download_resumable`, which appends to a ``.part`` file with HTTP Range
requests, so an interrupted download (dropped link, reset, kill -9, reboot) continues where it stopped.
Both honour a byte-rate cap and report progress.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import tenacity
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from edgefleet.errors import DiskSpaceError, DownloadError

__all__ = ["HttpxFetcher", "RateLimiter", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``."""

_FSYNC_EVERY = 1 << 20


class RateLimiter:
    """Token bucket: at most ``rate`` bytes per second on average, bursts up to ``burst`` bytes."""

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else (rate or 0) / 4
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int, cancel: threading.Event | None = None) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            if cancel is not None:
                cancel.wait(wait)
            else:
                time.sleep(wait)


class HttpxFetcher(FetcherInterface):
    """httpx-based fetcher with Range resume, a byte-rate cap, retries with backoff (tenacity) and progress.

    Args:
        max_rate: byte-rate cap in bytes/s (None: uncapped), shared by metadata and targets.
        retries: failed attempts without progress before giving up on a target download.
        backoff: first wait between retries in seconds (doubles up to ``backoff_max``).
        chunk: read size in bytes.
        timeout: connect/read timeout in seconds.
        transport: an httpx transport (tests inject faults here); default: real sockets.
        cancel: set this event to abort a download promptly (the ``.part`` file is kept).
    """

    def __init__(
        self,
        *,
        max_rate: float | None = None,
        retries: int = 10,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        chunk: int = 64 * 1024,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        cancel: threading.Event | None = None,
        headers: dict[str, str] | None = None,
        max_metadata_bytes: int = 8 << 20,
        verify: Any = True,
    ) -> None:
        self.max_metadata_bytes = max_metadata_bytes
        self.limiter = RateLimiter(max_rate)
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.chunk = chunk
        self.cancel = cancel or threading.Event()
        self.bytes_received = 0  # every body byte that came over the wire (for figures)
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            verify=verify,  # the pinned CA and the device certificate (DeviceIdentity.verify)
            follow_redirects=True,
            headers={"User-Agent": "edgefleet-agent", "Accept-Encoding": "identity", **(headers or {})},
        )

    def close(self) -> None:
        self.client.close()

    # --- FetcherInterface (metadata) -------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        # Read eagerly so the connection is released even if the caller stops early.
        try:
            with self.client.stream("GET", url) as r:
                if r.status_code >= 400:
                    raise tuf_exc.DownloadHTTPError(f"GET {url} returned {r.status_code}", r.status_code)
                chunks, total = [], 0
                for chunk in r.iter_raw():
                    self._account(len(chunk))
                    total += len(chunk)
                    if total > self.max_metadata_bytes:
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"GET {url} sent more than {self.max_metadata_bytes} bytes of metadata"
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as e:
            raise tuf_exc.DownloadError(f"GET {url} failed: {e!r}") from e
        return iter(chunks)

    # --- targets -----------------------------------------------------------------------------------

    def download_resumable(self, url: str, part: Path, length: int, progress: Progress | None = None) -> Path:
        """Download ``url`` into ``part`` (appending to what is there) until it holds ``length`` bytes.

        A failed attempt (reset, timeout, 5xx, short read) is retried with a Range request from where the
        file ends, after an exponential backoff (tenacity). An attempt that added bytes starts the count
        and the backoff again: only ``retries`` attempts in a row without progress give up. Hashes are not
        checked here; the caller verifies the finished file against signed metadata.

        Raises:
            DownloadError: the server kept failing, sent more than ``length`` bytes, or ``cancel`` was set.
            DiskSpaceError: the disk filled up (the ``.part`` file is kept for a later resume).
        """
        part = Path(part)
        part.parent.mkdir(parents=True, exist_ok=True)
        stalled = 0  # failed attempts in a row that added no byte

        def attempt() -> None:
            nonlocal stalled
            have = part.stat().st_size if part.exists() else 0
            if have > length:
                log.warning("%s holds %d bytes, more than the %d expected; starting over", part, have, length)
                part.unlink()
                have = 0
            if progress:
                progress(have, length)
            if have == length:
                return
            if self.cancel.is_set():
                raise DownloadError(
                    f"download of {url} cancelled at {have}/{length} bytes",
                    hint="it resumes from the .part file on the next attempt",
                )
            try:
                self._get_range(url, part, have, length, progress)
            except _TRANSIENT:
                stalled = 1 if _size(part) > have else stalled + 1
                raise
            if progress:
                progress(length, length)

        def log_retry(rs: tenacity.RetryCallState) -> None:
            log.info(
                "download of %s interrupted at %d/%d bytes (%s); retry %d/%d in %.1fs",
                url,
                _size(part),
                length,
                rs.outcome.exception() if rs.outcome else None,
                stalled,
                self.retries,
                rs.next_action.sleep if rs.next_action else 0.0,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_TRANSIENT),
            stop=lambda rs: stalled > self.retries,
            wait=lambda rs: min(self.backoff * 2 ** (stalled - 1), self.backoff_max),
            sleep=self.cancel.wait,  # a cancel ends the wait; the next attempt then stops
            before_sleep=log_retry,
        )
        try:
            retrying(attempt)
        except tenacity.RetryError as e:
            err = e.last_attempt.exception()
            now = _size(part)
            raise DownloadError(
                f"download of {url} failed {stalled} times in a row at {now}/{length} bytes: {err}",
                hint="check the link to the repository; the .part file is kept and resumes later",
                url=url,
                bytes=now,
                length=length,
            ) from err
        return part

    def _get_range(self, url: str, part: Path, have: int, length: int, progress: Progress | None) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.client.stream("GET", url, headers=headers) as r:
            if r.status_code == 416:
                # Our .part does not fit the file on the server: it cannot be resumed.
                part.unlink(missing_ok=True)
                raise _Retry("server refused the range (416); restarting from zero")
            if r.status_code == 404:
                raise DownloadError(
                    f"{url} is not on the repository (404)",
                    hint="the target was removed; the director should assign another",
                    url=url,
                )
            if r.status_code >= 400:
                raise _Retry(f"server answered {r.status_code}")
            mode = "ab"
            if have and r.status_code == 206:
                start = _content_range_start(r.headers.get("content-range", ""))
                if start != have:
                    raise _Retry(f"server sent range starting at {start}, asked for {have}")
            elif have:
                log.info("server ignored the Range header for %s; downloading from zero", url)
                mode = "wb"
                have = 0
            written = have
            since_sync = 0
            try:
                with open(part, mode) as f:
                    # Raw bytes as they arrive: a buffered chunk would be lost on a reset.
                    for chunk in r.iter_raw():
                        if self.cancel.is_set():
                            raise _Retry("cancelled")
                        written += len(chunk)
                        if written > length:
                            f.truncate(length)
                            part.unlink(missing_ok=True)
                            raise DownloadError(
                                f"{url} sent more than the {length} bytes the signed metadata allows",
                                hint="the repository serves a different file than it signed",
                                url=url,
                            )
                        f.write(chunk)
                        self._account(len(chunk))
                        since_sync += len(chunk)
                        if since_sync >= _FSYNC_EVERY:
                            f.flush()
                            os.fsync(f.fileno())
                            since_sync = 0
                        if progress:
                            progress(written, length)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                if e.errno == 28:  # ENOSPC
                    raise DiskSpaceError(
                        f"disk full while downloading {url} at {written}/{length} bytes",
                        hint="free space in the state directory",
                    ) from e
                raise
            if written < length:
                raise _Retry(f"connection closed at {written}/{length} bytes")

    def _account(self, n: int) -> None:
        self.bytes_received += n
        self.limiter.consume(n, self.cancel)


class _Retry(Exception):
    """A recoverable download failure: retry (resuming) after a backoff."""


# What a resumed attempt may fix. DiskSpaceError and DownloadError (404, oversize) are not among them.
_TRANSIENT = (httpx.HTTPError, OSError, _Retry)


def _size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _content_range_start(value: str) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, rng = value.split(" ", 1)
        return int(rng.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None
