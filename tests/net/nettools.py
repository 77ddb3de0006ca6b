"""Real test hosts on one machine: a network namespace joined to this one by a veth pair.

Traffic to the namespace's address really crosses an interface, and setting the link down is a real
partition. Needs root (CAP_NET_ADMIN) and iproute2; ``netns_host`` skips, saying why, where either is missing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class NetnsHost:
    """One namespace: ``addr`` inside it, ``peer_addr`` on this side; ``prefix`` runs a command inside."""

    name: str
    addr: str
    peer_addr: str
    host_if: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def partition(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")


def why_no_netns() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"efprobe{secrets.token_hex(3)}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@contextlib.contextmanager
def netns_host() -> Iterator[NetnsHost]:
    """A fresh namespace on a random 10.213.x.y/30 link; removed (with its processes' sockets) on exit."""
    why = why_no_netns()
    if why:
        pytest.skip(why)
    tag = secrets.token_hex(3)
    name, host_if, ns_if = f"ef{tag}", f"efh{tag}", f"efn{tag}"
    b = int(tag[:2], 16)
    c = (int(tag[2:4], 16) // 4) * 4
    peer, addr = f"10.213.{b}.{c + 1}", f"10.213.{b}.{c + 2}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{peer}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{addr}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield NetnsHost(name, addr, peer, host_if)
    finally:
        _ip("link", "del", host_if, check=False)
        _ip("netns", "del", name, check=False)
