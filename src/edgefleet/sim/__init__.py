"""Fleet simulator: lightweight simulated devices speaking the real HTTP protocol to a real server.

    fleet = Fleet(url, Scenario(behaviors={"3.0.0": ReleaseBehavior(error_rate=0.3)}), size=1000,
                  admin_token=token)
    asyncio.run(fleet.enroll())
    asyncio.run(fleet.run(until=lambda f: f.count_on("2.0.0") == 1000, timeout=120))

Used by the containment tests and ``benchmarks/server_bench.py``; ``run_heartbeat_load`` is the lean
load generator the throughput benchmark runs in its own process.
"""

from edgefleet.sim._demo import run_demo
from edgefleet.sim._fleet import Fleet, ReleaseBehavior, Scenario, SimDevice
from edgefleet.sim._loadgen import LoadResult, heartbeat_body, run_heartbeat_load

__all__ = [
    "Fleet",
    "LoadResult",
    "ReleaseBehavior",
    "Scenario",
    "SimDevice",
    "heartbeat_body",
    "run_demo",
    "run_heartbeat_load",
]
