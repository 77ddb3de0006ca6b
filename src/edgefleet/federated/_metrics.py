"""Prometheus metrics of federated jobs, read from their job folders on each scrape.

``edgefleet fl start --metrics-port`` serves them; any process can register ``JobCollector`` with its own
registry. Labels: the job id, and for client counts the state (selected, answered, late, dropped).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from edgefleet.federated._coordinator import job_state, read_progress
from edgefleet.federated._spec import JobSpec


class JobCollector:
    """A ``prometheus_client`` collector over the job folders it is given."""

    def __init__(self, *job_dirs: Path) -> None:
        self.job_dirs = [Path(d) for d in job_dirs]

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rounds = CounterMetricFamily(
            "edgefleet_fl_rounds", "Rounds a federated job has closed", labels=["job"]
        )
        aggregated = CounterMetricFamily(
            "edgefleet_fl_rounds_aggregated", "Rounds whose answers made a new global model", labels=["job"]
        )
        clients = GaugeMetricFamily(
            "edgefleet_fl_round_clients",
            "Devices in the last closed round, by state",
            labels=["job", "state"],
        )
        payload = CounterMetricFamily(
            "edgefleet_fl_payload_bytes",
            "Payload bytes sent to and from devices",
            labels=["job", "direction"],
        )
        accuracy = GaugeMetricFamily(
            "edgefleet_fl_accuracy", "Global model accuracy on the server's held-out set", labels=["job"]
        )
        epsilon = GaugeMetricFamily("edgefleet_fl_epsilon", "DP epsilon spent so far", labels=["job"])
        running = GaugeMetricFamily("edgefleet_fl_running", "1 while the job runs", labels=["job"])
        for job_dir in self.job_dirs:
            job = JobSpec.load(job_dir).job_id
            events = read_progress(job_dir)
            closed = [e for e in events if e.get("event") == "round"]
            rounds.add_metric([job], len(closed))
            aggregated.add_metric([job], sum(1 for e in closed if e["aggregated"]))
            payload.add_metric([job, "down"], sum(e["bytes_down"] for e in closed))
            payload.add_metric([job, "up"], sum(e["bytes_up"] for e in closed))
            running.add_metric([job], 1.0 if job_state(events) in ("starting", "running") else 0.0)
            if closed:
                last = closed[-1]
                for state in ("selected", "answered", "late", "dropped"):
                    clients.add_metric([job, state], last[state])
                if last.get("accuracy") is not None:
                    accuracy.add_metric([job], last["accuracy"])
                if last.get("epsilon") is not None:
                    epsilon.add_metric([job], last["epsilon"])
        yield from (rounds, aggregated, clients, payload, accuracy, epsilon, running)
