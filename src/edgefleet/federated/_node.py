"""The device side: a Flower SuperNode, started only while a job wants the device and its state allows.

The SuperNode connects to the job's SuperLink, receives the job's Flower App (edgefleet's ClientApp) and
runs it on each training message; the ClientApp reads the device's dataset folder (``data-dir``) and sends
back only head weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.federated._process import ManagedProcess, flower_command, flower_env, free_port
from edgefleet.power import DeviceState


@dataclass(frozen=True)
class TrainingPolicy:
    """Gboard-style rule over the device state source of ``edgefleet.power`` (sysfs, or a scripted trace):
    train only when idle (CPU pressure below a level), on power or with battery above a level, and not on
    a metered link. What the device cannot tell (``None``) does not block training."""

    min_battery_percent: float = 50.0
    max_cpu_pressure: float = 20.0  # PSI "some" avg10, percent
    allow_metered: bool = False

    def allows(self, state: DeviceState) -> tuple[bool, str]:
        if state.cpu_pressure is not None and state.cpu_pressure > self.max_cpu_pressure:
            return False, f"busy (CPU pressure {state.cpu_pressure:.0f}%)"
        if state.link == "metered" and not self.allow_metered:
            return False, "metered link"
        on_battery = state.power_source == "battery"
        if (
            on_battery
            and state.battery_percent is not None
            and state.battery_percent < self.min_battery_percent
        ):
            return False, f"on battery at {state.battery_percent:.0f}% (< {self.min_battery_percent:.0f}%)"
        return True, "ok"


class SuperNode:
    """One Flower SuperNode process for one job on one device.

    ``insecure``: clear text (``--insecure``), for a SuperLink that runs without TLS (the default when
    neither ``root_certificates`` nor ``auth_key`` is given; the agent and ``fl join`` say which). Otherwise TLS, the
    SuperLink's certificate checked against ``root_certificates`` (the CA; the system's store when None),
    and ``auth_key`` (an OpenSSH EC private key whose public half the job registered) signs its requests."""

    def __init__(
        self,
        superlink: str,
        data_dir: Path,
        work_dir: Path,
        *,
        train_delay_s: float = 0.0,
        root_certificates: Path | None = None,
        auth_key: Path | None = None,
        insecure: bool | None = None,
    ) -> None:
        if insecure is None:  # library default: clear text only when given no TLS material at all
            insecure = root_certificates is None and auth_key is None
        if insecure and (root_certificates is not None or auth_key is not None):
            raise ValueError("a clear-text SuperNode takes no CA and no node key")
        self.superlink = superlink
        self.root_certificates = root_certificates
        self.auth_key = auth_key
        self.insecure = insecure
        self.data_dir = Path(data_dir).resolve()
        self.work_dir = Path(work_dir)
        self.train_delay_s = train_delay_s
        self._proc: ManagedProcess | None = None

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        node_config = f"data-dir={_toml_string(str(self.data_dir))}"
        if self.train_delay_s:
            node_config += f" train-delay-s={float(self.train_delay_s)}"
        security = ["--insecure"] if self.insecure else []
        if self.root_certificates is not None:
            security += ["--root-certificates", str(Path(self.root_certificates).resolve())]
        if self.auth_key is not None:
            security += ["--auth-supernode-private-key", str(Path(self.auth_key).resolve())]
        self._proc = ManagedProcess(
            [
                flower_command("flower-supernode"),
                *security,
                "--superlink",
                self.superlink,
                "--port",
                str(free_port()),
                "--node-config",
                node_config,
            ],
            env=flower_env(self.work_dir / "flwr-home"),
            log_path=self.work_dir / "supernode.log",
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def failure(self) -> str | None:
        """Why the SuperNode exited, in one line from Flower's log (TLS refused, node key not registered)."""
        if self._proc is None or self._proc.alive():
            return None
        return supernode_failure(self._proc.log_tail(4000))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def kill(self) -> None:
        """The device dies: SIGKILL to the SuperNode and whatever it runs."""
        if self._proc is not None:
            self._proc.kill()


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def supernode_failure(log: str) -> str:
    """One line saying why a SuperNode's connection failed, from its log (Flower's exit-code message)."""
    if "CERTIFICATE_VERIFY_FAILED" in log or "handshake" in log.lower():
        return (
            "TLS refused: the SuperLink's certificate is not signed by the CA this SuperNode trusts "
            "(--root-certificates), or it runs without TLS"
        )
    if "Failed to activate SuperNode" in log or "2004" in log:
        return "the SuperLink refused this SuperNode: its node key is not registered for the job"
    if "WRONG_VERSION_NUMBER" in log or "record layer" in log:
        return "TLS failed: the SuperLink does not speak TLS (started --insecure?)"
    for line in reversed(log.splitlines()):
        if line.strip() and "INFO" not in line:
            return line.strip()[-300:]
    return "the SuperNode exited"
