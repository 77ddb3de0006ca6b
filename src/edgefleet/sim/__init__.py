"""Fleet simulator: lightweight simulated devices speaking the real HTTP protocol to a real server.

    fleet = Fleet(url, Scenario(behaviors={"3.0.0": ReleaseBehavior(error_rate=0.3)}), size=1000,
                  admin_token=token)
    asyncio.run(fleet.enroll())
    asyncio.run(fleet.run(until=lambda f: f.count_on("2.0.0") == 1000, timeout=120))

Used by the containment tests and ``benchmarks/server_bench.py``, which runs the lean heartbeat load
generator as ``python -m edgefleet.sim._loadgen`` in its own process. ``run_demo`` is ``edgefleet demo``.
"""

from edgefleet.sim._demo import run_demo
from edgefleet.sim._fleet import Fleet, ReleaseBehavior, Scenario, SimDevice

__all__ = ["Fleet", "ReleaseBehavior", "Scenario", "SimDevice", "run_demo"]
