"""A stand-in control plane for agent tests: director endpoints + the static TUF repository, with faults.

A real HTTP server (http.server on 127.0.0.1, ephemeral port) speaking the control plane's contract:
``POST /v1/enroll``, ``POST /v1/devices/{id}/heartbeat``, ``POST /v1/devices/{id}/telemetry`` (JSON bodies
are ``edgefleet.protocol`` types) and ``GET /repository/metadata/...``, ``GET /repository/targets/...``
with HTTP Range (python's SimpleHTTPRequestHandler has none). Faults are injected on target downloads: connection reset
after N bytes, truncation, bit flips, a slow link, Range ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgefleet.protocol import Assignment, EnrollRequest, GateThresholds, Heartbeat, TelemetryBatch

ENROLL_TOKEN = "enroll-token-0123456789"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients killed with SIGKILL or cut by fault injection reset their connections


class StandIn:
    """Director + repository server. Mutate ``assignment``, ``commands``, ``faults`` from tests."""

    def __init__(self, repo_dir: Path, *, port: int = 0, poll_interval_s: float = 0.2) -> None:
        self.repo_dir = Path(repo_dir)
        self.port = port
        self.poll_interval_s = poll_interval_s
        self.assignment: dict[str, Any] | None = None
        self.commands: list[str] = []
        self.tokens = {ENROLL_TOKEN}
        self.devices: dict[str, str] = {}  # device_id -> token
        self.heartbeats: list[dict[str, Any]] = []
        self.telemetry: list[dict[str, Any]] = []
        self.batch_ids: set[str] = set()
        self.enrollments: list[dict[str, Any]] = []
        self.faults: dict[str, Any] = {}
        self.target_bytes_sent = 0
        self.target_requests: list[tuple[str, str | None]] = []
        self.heartbeat_status = 200
        self.telemetry_status = 200  # anything else: the telemetry endpoint fails with that status
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> StandIn:
        handler = _make_handler(self)
        srv = _QuietServer(("127.0.0.1", self.port), handler, bind_and_activate=False)
        srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.server_bind()
        srv.server_activate()
        srv.daemon_threads = True
        self._httpd = srv
        self.port = srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        # Keep-alive connections outlive the listening socket: cut them, as a crashed server would.
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def repository_url(self) -> str:
        return f"{self.url}/repository/"

    # --- helpers for tests -----------------------------------------------------------------------

    def assign(
        self,
        target_path: str,
        *,
        gates: GateThresholds | None = None,
        length: int | None = None,
        sha256: str | None = None,
        name: str | None = None,
        version: str | None = None,
        variant: str | None = None,
    ) -> Assignment:
        """Assign a published target, reading its length and sha256 from the signed metadata."""
        info = self.signed_target(target_path)
        n, ver, var = (
            target_path.split("/")[0],
            target_path.split("/")[1],
            target_path.split("/")[2].rsplit(".", 1)[0],
        )
        a = Assignment(
            rollout_id="test-rollout",
            name=name or n,
            version=version or ver,
            variant=variant or var,
            target_path=target_path,
            length=length if length is not None else info["length"],
            hashes={"sha256": sha256 or info["hashes"]["sha256"]},
            gates=gates or GateThresholds(watch_window_s=0.5),
        )
        self.assignment = a.model_dump(mode="json")
        return a

    def signed_target(self, target_path: str) -> dict[str, Any]:
        md = self.repo_dir / "metadata"
        latest = max(md.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
        targets = json.loads(latest.read_text())["signed"]["targets"]
        return targets[target_path]

    def last_heartbeat(self) -> dict[str, Any] | None:
        with self._lock:
            return self.heartbeats[-1] if self.heartbeats else None

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            out = [e for hb in self.heartbeats for e in hb.get("events", [])]
            out += [e.get("payload", e) for t in self.telemetry for e in t.get("events", [])]
            return out


def _make_handler(s: StandIn) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with s._lock:
                s._conns.add(self.connection)

        def finish(self) -> None:
            with s._lock:
                s._conns.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def _json(self, code: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def _device(self, device_id: str) -> bool:
            auth = self.headers.get("Authorization", "")
            if s.devices.get(device_id) is None or auth != f"Bearer {s.devices[device_id]}":
                self._json(401, {"error": "unauthorized", "message": "bad device token"})
                return False
            return True

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            path = self.path
            if path == "/v1/enroll":
                req = EnrollRequest.model_validate(self._body())
                if req.token not in s.tokens:
                    return self._json(401, {"error": "unauthorized", "message": "unknown enrollment token"})
                s.tokens.discard(req.token)  # one-time
                dev = f"dev-{secrets.token_hex(4)}"
                tok = secrets.token_urlsafe(24)
                s.devices[dev] = tok
                s.enrollments.append(req.model_dump(mode="json"))
                root = (s.repo_dir / "metadata" / "root.json").read_bytes()  # the newest, as the server
                return self._json(
                    200,
                    {
                        "device_id": dev,
                        "device_token": tok,
                        "poll_interval_s": s.poll_interval_s,
                        "repository_url": s.repository_url,
                        "root_json_sha256": hashlib.sha256(root).hexdigest(),
                    },
                )
            m = re.fullmatch(r"/v1/devices/([^/]+)/(heartbeat|telemetry)", path)
            if not m:
                return self._json(404, {"error": "not_found", "message": path})
            if not self._device(m.group(1)):
                return None
            if m.group(2) == "heartbeat":
                if s.heartbeat_status != 200:
                    return self._json(s.heartbeat_status, {"error": "server", "message": "injected"})
                hb = Heartbeat.model_validate(self._body())
                with s._lock:
                    s.heartbeats.append(hb.model_dump(mode="json"))
                    cmds, s.commands = s.commands, []
                return self._json(
                    200, {"assignment": s.assignment, "poll_interval_s": s.poll_interval_s, "commands": cmds}
                )
            if s.telemetry_status != 200:
                return self._json(s.telemetry_status, {"error": "server", "message": "injected"})
            batch = TelemetryBatch.model_validate(self._body())
            with s._lock:
                dup = batch.batch_id in s.batch_ids
                if not dup:
                    s.batch_ids.add(batch.batch_id)
                    s.telemetry.append(batch.model_dump(mode="json"))
            return self._json(200, {"accepted": not dup, "duplicate": dup})

        def do_GET(self) -> None:  # noqa: N802
            if not self.path.startswith("/repository/"):
                return self._json(404, {"error": "not_found", "message": self.path})
            rel = self.path[len("/repository/") :].split("?", 1)[0]
            f = (s.repo_dir / rel).resolve()
            if s.repo_dir.resolve() not in f.parents or not f.is_file():
                return self._json(404, {"error": "not_found", "message": rel})
            data = f.read_bytes()
            is_target = rel.startswith("targets/")
            start = 0
            rng = self.headers.get("Range")
            honour = not s.faults.get("ignore_range")
            if is_target:
                with s._lock:
                    s.target_requests.append((rel, rng))
            if rng and honour:
                mm = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                if not mm or int(mm.group(1)) >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                start = int(mm.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            if is_target and s.faults.get("flip_at") is not None:
                i = s.faults["flip_at"] - start
                if 0 <= i < len(body):
                    body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]
                    if s.faults.get("flip_once"):
                        s.faults.pop("flip_at")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not is_target:
                self.wfile.write(body)
                return None
            # Faults: reset the connection after N bytes (total over the file), truncate, slow link.
            cut = s.faults.get("reset_at")
            rate = s.faults.get("rate")
            sent = 0
            chunk = 8192
            pos = start
            while sent < len(body):
                piece = body[sent : sent + chunk]
                if cut is not None and pos + len(piece) > cut and pos <= cut:
                    piece = piece[: cut - pos]
                    self.wfile.write(piece)
                    with s._lock:
                        s.target_bytes_sent += len(piece)
                        if s.faults.get("reset_once"):
                            s.faults.pop("reset_at", None)
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                try:
                    self.wfile.write(piece)
                except OSError:
                    return None
                with s._lock:
                    s.target_bytes_sent += len(piece)
                sent += len(piece)
                pos += len(piece)
                if rate:
                    time.sleep(len(piece) / rate)
            return None

    return H
