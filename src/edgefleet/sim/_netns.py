"""Real test hosts on one machine: a network namespace joined to this one by a veth pair.

Traffic to or from the namespace really crosses an interface, and setting the host side of the link down
is a real partition (no RST: packets are dropped, TCP retransmits until the link returns). Needs root
(CAP_NET_ADMIN) and iproute2: :func:`why_no_netns` says why not where either is missing. ``edgefleet sim``
puts a partitioned region's devices in one (``tests/net`` uses it for servers on another host).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["NetnsHost", "enter_netns", "netns_host", "remove_stale", "why_no_netns"]

PREFIX = "efsim"  # namespaces made here are named efsim<pid>x<tag>: a dead pid's are removed on the next run
CLONE_NEWNET = 0x40000000


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
        """Set the host side of the link down: the namespace is cut off (packets dropped, no reset)."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")


def why_no_netns() -> str | None:
    """None where namespaces can be made here, else why not (one line)."""
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"efprobe{secrets.token_hex(3)}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.strip() or 'ip netns add failed'}"
    _ip("netns", "del", probe, check=False)
    return None


def remove_stale() -> list[str]:
    """Delete namespaces (and their veth links) left by runs whose process is gone (kill -9)."""
    r = _ip("netns", "list", check=False)
    gone = []
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX) or "x" not in name[len(PREFIX) :]:
            continue
        pid, _, tag = name[len(PREFIX) :].partition("x")
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _ip("link", "del", f"efh{tag}", check=False)
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


@contextlib.contextmanager
def netns_host(prefix: str = "ef") -> Iterator[NetnsHost]:
    """A fresh namespace on a random 10.213.x.y/30 link; removed (with its veth pair) on every exit.

    Raises:
        OSError: namespaces cannot be made here (see :func:`why_no_netns`).
    """
    why = why_no_netns()
    if why:
        raise OSError(why)
    tag = secrets.token_hex(3)
    name = f"{PREFIX}{os.getpid()}x{tag}" if prefix == PREFIX else f"{prefix}{tag}"
    host_if, ns_if = f"efh{tag}", f"efn{tag}"
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


def enter_netns(name: str) -> None:
    """Move the calling thread (call it first thing in a fresh process) into namespace ``name``: the
    sockets it and the threads it starts open from now on live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
