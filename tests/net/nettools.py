"""Real test hosts on one machine: a network namespace joined to this one by a veth pair.

The namespace code lives in ``edgefleet.sim._netns`` (``edgefleet sim`` partitions a region with it);
``netns_host`` here skips the test, saying why, where namespaces cannot be made (no root, no iproute2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from edgefleet.sim import _netns
from edgefleet.sim._netns import NetnsHost, why_no_netns

__all__ = ["NetnsHost", "netns_host", "why_no_netns"]


@contextlib.contextmanager
def netns_host() -> Iterator[NetnsHost]:
    """A fresh namespace on a random 10.213.x.y/30 link; removed (with its processes' sockets) on exit."""
    why = why_no_netns()
    if why:
        pytest.skip(why)
    with _netns.netns_host() as host:
        yield host
