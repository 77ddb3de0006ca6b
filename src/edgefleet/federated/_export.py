"""Back to the fleet: the job's final head written into the base model, with the job's lineage.

The lineage names the job, its rounds, strategy, ε and δ when DP was on, and how many devices took part —
never which: Flower's node ids stay inside the ServerApp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write
from edgefleet.errors import InputError
from edgefleet.federated._coordinator import job_state, load_final_head, read_progress
from edgefleet.federated._model_head import write_head
from edgefleet.federated._spec import JobSpec


def job_lineage(job_dir: Path) -> dict[str, Any]:
    """What a release made by the job in ``job_dir`` records about it (no device ids)."""
    spec = JobSpec.load(job_dir)
    events = read_progress(job_dir)
    if job_state(events) != "finished":
        raise InputError(
            f"federated job {spec.job_id} has not finished", hint="wait for `edgefleet fl status` to say so"
        )
    rounds = [e for e in events if e["event"] == "round"]
    epsilons = [r["epsilon"] for r in rounds if r.get("epsilon") is not None]
    return {
        "federated_job": spec.job_id,
        "strategy": spec.strategy,
        "rounds": len(rounds),
        "rounds_aggregated": sum(1 for r in rounds if r["aggregated"]),
        "participants": events[-1].get("participants"),
        "epsilon": epsilons[-1] if epsilons else None,
        "delta": spec.privacy.delta if spec.privacy else None,
        "accuracy_base": events[0].get("accuracy"),
        "accuracy_final": events[-1].get("accuracy"),
    }


def export_model(job_dir: Path, base_model: Path, out: Path) -> dict[str, Any]:
    """Write ``base_model`` with the job's final head to ``out`` and its lineage beside it (``.lineage.json``)."""
    lineage = job_lineage(job_dir)
    write_head(base_model, load_final_head(job_dir), out)
    atomic_write(out.with_suffix(".lineage.json"), json.dumps(lineage, indent=1).encode())
    return {"model": str(out), "lineage": lineage}
