"""The server side of a job: Flower's SuperLink as a managed process, and the job's run submitted to it.

The job folder holds everything: ``job.json`` (the spec), the initial head, the server's held-out set,
the Flower App (a ``pyproject.toml`` and two one-line modules pointing at edgefleet's ServerApp and
ClientApp; Flower ships it to the SuperNodes as a FAB), ``progress.jsonl`` written by the ServerApp, the
final head, and the processes' logs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import ConfigError, EdgefleetError, NotFoundError
from edgefleet.federated._head import SoftmaxHead
from edgefleet.federated._process import (
    ManagedProcess,
    flower_command,
    flower_env,
    flwr_json,
    free_port,
    wait_for_port,
)
from edgefleet.federated._security import FlowerTLS, register_node_key
from edgefleet.federated._spec import (
    EVAL_DATA,
    FEATURE_MODEL,
    FINAL_HEAD,
    INITIAL_HEAD,
    PROGRESS_FILE,
    JobSpec,
)

START_TIMEOUT_S = 120.0

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgefleet-fl"
version = "1.0.0"
description = "edgefleet federated job {job_id}"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "edgefleet"

[tool.flwr.app.components]
serverapp = "edgefleet_fl.server:app"
clientapp = "edgefleet_fl.client:app"

[tool.flwr.app.config]
job-dir = {job_dir}
"""


class JobFailed(EdgefleetError):
    code = "federated_job_failed"
    status_code = 500


def write_flower_app(app_dir: Path, spec: JobSpec, job_dir: Path) -> Path:
    """The Flower App for the job: its config names the job folder; its modules are edgefleet's apps."""
    package = app_dir / "edgefleet_fl"
    package.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(
        _PYPROJECT.format(job_id=spec.job_id, job_dir=json.dumps(str(job_dir))), encoding="utf-8"
    )
    (package / "__init__.py").write_text("", encoding="utf-8")
    client_app = "dp_app" if spec.privacy is not None else "app"
    for module, source, attribute in (
        ("server", "_server_app", "app"),
        ("client", "_client_app", client_app),
    ):
        (package / f"{module}.py").write_text(
            f"from edgefleet.federated import {source}\n\napp = {source}.{attribute}\n", encoding="utf-8"
        )
    return app_dir


def read_progress(job_dir: Path) -> list[dict[str, Any]]:
    """The ServerApp's events so far (a torn last line, being written, is skipped)."""
    path = Path(job_dir) / PROGRESS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def job_state(events: list[dict[str, Any]]) -> str:
    kinds = {e.get("event") for e in events}
    if "failed" in kinds:
        return "failed"
    if "finished" in kinds:
        return "finished"
    return "running" if events else "starting"


class Coordinator:
    """One job's SuperLink and run. ``start()`` returns once the run is submitted; devices join
    ``address`` with their SuperNodes. With ``tls`` the SuperLink serves HTTPS with that certificate and
    authenticates SuperNodes: only keys given to ``register_node`` may join (Flower needs TLS for it);
    without, it runs ``--insecure`` (clear text, any SuperNode). With ``feature_model`` (see ``head_of_model``) the head trains on
    that model's features of the devices' raw inputs, and ``eval_data`` holds raw inputs too."""

    def __init__(
        self,
        job_dir: Path,
        spec: JobSpec,
        head: SoftmaxHead,
        *,
        eval_data: tuple[np.ndarray, np.ndarray] | None = None,
        feature_model: bytes | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: FlowerTLS | None = None,
    ) -> None:
        self.job_dir = Path(job_dir).resolve()
        self.spec = spec
        self.head = head
        self.eval_data = eval_data
        self.feature_model = feature_model
        self.host = host
        self.port = port or free_port()
        self.tls = tls
        self.run_id: str | None = None
        self._superlink: ManagedProcess | None = None
        self._env: dict[str, str] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def control_address(self) -> str:
        """Where this host reaches the SuperLink (loopback when it listens on every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"

    def register_node(self, public_key: str, *, name: str) -> int:
        """Let the SuperNode holding ``public_key`` (OpenSSH line) join this job; its Flower node id."""
        if self.tls is None or self._env is None:
            raise ConfigError(
                "SuperNode authentication needs the SuperLink to run TLS",
                hint="start the job with a certificate (--tls-ca-dir or --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile)",
            )
        return register_node_key(public_key, self._env, self.job_dir / "node-keys", name=name)

    def start(self) -> None:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.spec.save(self.job_dir)
        np.savez(self.job_dir / INITIAL_HEAD, W=self.head.W, b=self.head.b)
        if self.eval_data is not None:
            np.savez(self.job_dir / EVAL_DATA, x=self.eval_data[0], y=self.eval_data[1])
        if self.feature_model is not None:
            (self.job_dir / FEATURE_MODEL).write_bytes(self.feature_model)
        app_dir = write_flower_app(self.job_dir / "app", self.spec, self.job_dir)
        env = self._env = flower_env(self.job_dir / "flwr-home")
        # flwr run / flwr supernode register reach the SuperLink's Control API on loopback
        trust = (
            f"root-certificates = {json.dumps(str(self.tls.ca_certfile))}\n"
            if self.tls is not None
            else "insecure = true\n"
        )
        (self.job_dir / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "edgefleet"\n\n[superlink.edgefleet]\n'
            f'address = "{self.control_address}"\n{trust}',
            encoding="utf-8",
        )
        security = (
            [*self.tls.superlink_args(), "--enable-supernode-auth"]
            if self.tls is not None
            else ["--insecure"]
        )
        self._superlink = ManagedProcess(
            [
                flower_command("flower-superlink"),
                *security,
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            env=env,
            log_path=self.job_dir / "superlink.log",
        )
        try:
            wait_for_port(
                self.control_address.rsplit(":", 1)[0],
                self.port,
                timeout_s=START_TIMEOUT_S,
                proc=self._superlink,
            )
            self.run_id = self._submit(app_dir, env)
        except BaseException:
            self.stop()
            raise

    def _submit(self, app_dir: Path, env: dict[str, str]) -> str:
        try:
            answer, output = flwr_json(["run", str(app_dir)], env=env, timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise ConfigError("flwr run did not return within two minutes") from e
        if not answer.get("success"):
            raise ConfigError(
                f"Flower refused the job's run: {answer.get('error-message') or output[-600:]}",
                hint=f"see {self.job_dir / 'superlink.log'}",
            )
        return str(answer["run-id"])

    def alive(self) -> bool:
        """Whether the job's SuperLink still runs."""
        return self._superlink is not None and self._superlink.alive()

    def events(self) -> list[dict[str, Any]]:
        return read_progress(self.job_dir)

    def state(self) -> str:
        return job_state(self.events())

    def wait(self, timeout_s: float) -> list[dict[str, Any]]:
        """Block until the job finished (its events) or failed (JobFailed); ``timeout_s`` bounds it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.events()
            state = job_state(events)
            if state == "finished":
                return events
            if state == "failed":
                raise JobFailed(f"federated job {self.spec.job_id} failed: {events[-1].get('error')}")
            if self._superlink is not None and not self.alive():
                raise JobFailed(f"the SuperLink exited: {self._superlink.log_tail(600)}")
            time.sleep(0.25)
        raise JobFailed(
            f"federated job {self.spec.job_id} did not finish within {timeout_s:.0f} s",
            hint="too few devices joined? see `edgefleet fl status`",
        )

    def final_head(self) -> SoftmaxHead:
        return load_final_head(self.job_dir)

    def stop(self) -> None:
        if self._superlink is not None:
            self._superlink.stop()


def load_final_head(job_dir: Path) -> SoftmaxHead:
    path = Path(job_dir) / FINAL_HEAD
    if not path.exists():
        raise NotFoundError(f"job folder {job_dir} has no final head yet", hint="wait for the job to finish")
    with np.load(path, allow_pickle=False) as npz:
        return SoftmaxHead.from_arrays([npz["W"], npz["b"]])
