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
from edgefleet.federated._spec import EVAL_DATA, JobSpec


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


def bundle_model(
    job_dir: Path,
    model: Path,
    out: Path,
    *,
    name: str,
    version: str,
    variant: str = "fp32",
    parent_version: str | None = None,
    preprocess: list[dict[str, Any]] | None = None,
    golden_inputs: Any = None,
    device_classes: str | None = None,
) -> Path:
    """A bundle of the federated ``model`` (from ``export_model``) whose lineage tags carry the job's lineage;
    the golden and reference inputs are the server's held-out inputs, or ``golden_inputs`` (the release's
    raw inputs, before ``preprocess``: the held-out set is in the model's input space). ``device_classes``
    (e.g. ``gateway,sensor``) is recorded like the demo's releases record theirs. Publish, register and roll
    it out like any bundle (``registry publish``, ``release register``, ``rollout``)."""
    import numpy as np

    from edgefleet.bundle import create_bundle
    from edgefleet.protocol import Lineage, Metrics

    lineage = job_lineage(job_dir)
    eval_path = Path(job_dir) / EVAL_DATA
    if not eval_path.exists():
        raise InputError(
            f"job {lineage['federated_job']} has no held-out inputs for the bundle's golden set",
            hint="start the job with --eval-data",
        )
    if golden_inputs is not None:
        x = np.asarray(golden_inputs)
    else:
        with np.load(eval_path, allow_pickle=False) as npz:
            x = npz["x"]
    tags = {k: str(v) for k, v in lineage.items() if v is not None}
    if device_classes:
        tags["device_classes"] = device_classes
    return create_bundle(
        model,
        out,
        name=name,
        version=version,
        variant=variant,
        inputs_raw=x[:16],
        reference_raw=x,
        preprocess=preprocess,
        metrics=Metrics(accuracy=lineage["accuracy_final"]),
        lineage=Lineage(parent_version=parent_version, tags=tags),
    )
