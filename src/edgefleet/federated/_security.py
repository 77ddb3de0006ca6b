"""Transport security of a job: Flower's TLS with edgefleet's CA, and Flower's SuperNode authentication.

The SuperLink serves Flower's Fleet, Control and Runtime APIs over HTTPS on one port (``--ssl-*``) with a
server certificate from the control plane's CA (``edgefleet certs``); SuperNodes verify it against that CA
(``--root-certificates``: an agent uses the CA it pinned at enrollment). With TLS on, the SuperLink runs
``--enable-supernode-auth``: it refuses every SuperNode whose public key was not registered through its Control
API (``flwr supernode register``). Each device makes a per-job node key (ECDSA P-256, OpenSSH format, 0600 in
the job's folder on the device) and sends the public half to the control plane over its authenticated
channel; ``fl start`` registers the keys of the devices the job selected.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write
from edgefleet.errors import ConfigError, EdgefleetError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "CLEAR_TEXT_WARNING",
    "FlowerTLS",
    "NodeKeyRegistrar",
    "NodeKeyRejected",
    "check_node_public_key",
    "issue_superlink_cert",
    "node_key",
    "register_node_key",
    "superlink_hosts",
]

MAX_PUBLIC_KEY = 1024
REGISTER_TIMEOUT_S = 120.0
CLEAR_TEXT_WARNING = (
    "the job's Flower traffic (SuperLink <-> SuperNodes) runs in clear text without SuperNode "
    "authentication (--insecure): any host that reaches the SuperLink can join the job"
)


@dataclass(frozen=True)
class FlowerTLS:
    """The SuperLink's certificate, its key, and the CA that issued it (what SuperNodes verify it with)."""

    certfile: Path
    keyfile: Path
    ca_certfile: Path

    @classmethod
    def from_files(cls, certfile: Path, keyfile: Path, ca_certfile: Path) -> FlowerTLS:
        for what, path in (
            ("--ssl-certfile", certfile),
            ("--ssl-keyfile", keyfile),
            ("--ssl-ca-certfile", ca_certfile),
        ):
            if not Path(path).is_file():
                raise InputError(f"{what} {path} does not exist", hint="give the PEM file's path")
        return cls(Path(certfile).resolve(), Path(keyfile).resolve(), Path(ca_certfile).resolve())

    def superlink_args(self) -> list[str]:
        return [
            "--ssl-certfile", str(self.certfile),
            "--ssl-keyfile", str(self.keyfile),
            "--ssl-ca-certfile", str(self.ca_certfile),
        ]  # fmt: skip


def superlink_hosts(host: str, advertise: str | None = None) -> list[str]:
    """The names the SuperLink's certificate must carry: the advertised host devices dial, the bind host
    unless it is a wildcard, and loopback (Flower's own SuperExec and ServerApp connect there)."""
    names: list[str] = []
    if advertise:
        h = advertise.rsplit(":", 1)[0].strip("[]")
        names.append(h)
    if host not in ("0.0.0.0", "::", ""):
        names.append(host.strip("[]"))
    names += ["127.0.0.1", "localhost"]
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def issue_superlink_cert(
    ca_dir: Path, hosts: list[str], out_dir: Path, *, passphrase: bytes | None = None
) -> FlowerTLS:
    """A server certificate for the SuperLink from edgefleet's CA (``certs init``'s folder), valid for
    ``hosts`` and for a week (a job's longest run); key 0600 in ``out_dir``."""
    from edgefleet.tls import CA_CERT, CertificateAuthority

    ca = CertificateAuthority.load(Path(ca_dir), passphrase=passphrase)
    for h in hosts:
        try:
            ipaddress.ip_address(h)
        except ValueError:
            if not h or any(c.isspace() for c in h):
                raise InputError(f"{h!r} is not a host name", hint="--advertise HOST:PORT") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_server(hosts, days=8)
    cert, key = out_dir / "superlink.crt", out_dir / "superlink.key"
    issued.write(cert, key)
    return FlowerTLS(cert.resolve(), key.resolve(), (Path(ca_dir) / CA_CERT).resolve())


def node_key(path: Path) -> str:
    """The node key at ``path`` (made when missing: P-256, OpenSSH private format, 0600, as
    ``flower-supernode --auth-supernode-private-key`` reads it); returns its OpenSSH public key line."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    if path.is_file():
        try:
            key = s.load_ssh_private_key(path.read_bytes(), None)
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"{path} is not an OpenSSH private key: {e}", hint="remove it to make a new one"
            ) from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path} is not an EC key", hint="make one with `edgefleet fl keygen`")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path, key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()), mode=0o600
        )
    return key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode("ascii")


def check_node_public_key(text: str, where: str = "node public key") -> str:
    """``text`` as one OpenSSH public key line on a NIST curve (what Flower registers), or InputError."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec

    line = text.strip()
    if not line or len(line) > MAX_PUBLIC_KEY or "\n" in line:
        raise InputError(
            f"{where} is not one OpenSSH public key line", hint="e.g. 'ecdsa-sha2-nistp256 AAAA...'"
        )
    try:
        key = s.load_ssh_public_key(line.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise InputError(
            f"{where} is not an OpenSSH public key: {e}", hint="make one with `edgefleet fl keygen`"
        ) from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise InputError(
            f"{where} is not an ECDSA key on a NIST curve",
            hint="Flower's SuperNode keys are EC P-256/384/521",
        )
    return " ".join(line.split()[:2])


class NodeKeyRejected(ConfigError):
    code = "federated_node_key_rejected"


def register_node_key(public_key: str, flwr_env: dict[str, str], work_dir: Path, *, name: str) -> int:
    """Register one SuperNode public key with the job's SuperLink through Flower's CLI (``flwr supernode
    register``, the SuperLink connection in ``flwr_env``'s FLWR_HOME); its Flower node id."""
    from edgefleet.federated._process import flwr_json

    line = check_node_public_key(public_key)
    import hashlib

    key_file = work_dir / f"{hashlib.sha256(line.encode()).hexdigest()[:16]}.pub"
    work_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(line + "\n", encoding="ascii")
    try:
        answer, output = flwr_json(
            ["supernode", "register", str(key_file), "--name", name[:64]],
            env=flwr_env,
            timeout=REGISTER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        raise NodeKeyRejected("flwr supernode register did not return within two minutes") from e
    if not answer.get("success"):
        raise NodeKeyRejected(
            f"Flower refused the node key of {name}: {answer.get('error-message') or output[-400:]}",
            hint="see the SuperLink's log",
        )
    return int(answer["node-id"])


def clear_text_allowed(host: str) -> bool:
    from edgefleet.tls import is_loopback

    return is_loopback(host)


class NodeKeyRegistrar:
    """``fl start --server`` with TLS: registers the node keys the job's selected devices sent to the control
    plane with the job's SuperLink (Flower's ``flwr supernode register``), then tells the control plane, so
    each device starts its SuperNode once its key is accepted. Polls every ``interval_s`` in a thread."""

    def __init__(self, api: Any, job_id: str, coordinator: Any, *, interval_s: float = 1.0) -> None:
        import threading

        self.api, self.job_id, self.coordinator, self.interval_s = api, job_id, coordinator, interval_s
        self.registered: dict[str, str] = {}  # device id -> the key registered for it
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fl-node-keys", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except EdgefleetError as e:  # the control plane is away: try again
                self._note(f"could not read the job's node keys: {e.message}")

    def step(self) -> int:
        """One pass: register the keys not registered yet; how many were."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [
            k
            for k in self.api.fl_node_keys(self.job_id)
            if not k.get("registered") and self.registered.get(k["device_id"]) != k["public_key"]
        ]
        if not todo:
            return 0

        def one(k: dict[str, Any]) -> dict[str, str] | None:
            try:
                self.coordinator.register_node(k["public_key"], name=k["device_id"])
            except EdgefleetError as e:
                if "already" not in e.message.lower():  # a key Flower holds already is registered
                    self._note(f"device {k['device_id']}: {e.message}")
                    return None
            return {"device_id": k["device_id"], "public_key": k["public_key"]}

        with ThreadPoolExecutor(max_workers=4) as pool:
            done = [d for d in pool.map(one, todo) if d is not None]
        if done:
            self.api.fl_node_keys_registered(self.job_id, done)
            for d in done:
                self.registered[d["device_id"]] = d["public_key"]
        return len(done)

    def _note(self, message: str) -> None:
        if message not in self.errors[-5:]:
            self.errors.append(message)
            log.warning("%s", message)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
