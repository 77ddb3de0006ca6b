"""Back to the fleet: the job's final head written into the base model, with the job's lineage.

The lineage names the job, its rounds, strategy, ε and δ when DP was on, and how many devices took part —
never which: Flower's node ids stay inside the ServerApp.

``release_from_job`` makes the federated model a release of the base: for each variant the base release
published, the model goes through the optimizer with that variant's budget (the code the retraining job
uses, ``registry._successor``), is bundled with the base's contracts and the job's lineage, and is signed
into the repository; registering it and the gated rollout are the usual ``release register`` / ``rollout``.
``bundle_model`` is the path for a base model that is not a published release: one fp32 bundle, no
optimizer (there is no base budget to apply).
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


_CALIB_ROWS = 128


def _job_tags(lineage: dict[str, Any]) -> dict[str, str]:
    tags = {k: str(v) for k, v in lineage.items() if v is not None}
    eps = f", epsilon {lineage['epsilon']:.2f}" if lineage.get("epsilon") is not None else ""
    tags["trained"] = (
        f"federated job {lineage['federated_job']}: {lineage['rounds']} rounds of {lineage['strategy']}, "
        f"{lineage['participants']} devices{eps}"
    )[:200]
    return tags


def release_from_job(
    job_dir: Path,
    model: Path,
    *,
    repo_dir: Path,
    keys_dir: Path,
    name: str,
    version: str,
    parent_version: str | None = None,
    golden_inputs: Any = None,
    work_dir: Path | None = None,
    settings: Any = None,
    publish: bool = True,
) -> dict[str, Any]:
    """The federated ``model`` (from ``export_model``) as release ``name`` ``version`` of the base release
    (``parent_version``, default the newest published) in ``repo_dir``: optimized per base variant with
    that variant's budget, bundled with the job's lineage, and (``publish``) signed into the repository
    with the publisher's targets key in ``keys_dir``.

    The optimizer scores on the job's held-out set (model inputs) and calibrates on ``golden_inputs`` (raw,
    through the base's preprocessing contract) or the held-out set; the bundles' golden set and drift
    reference are ``golden_inputs``, which a base with a preprocessing contract needs (the held-out set
    is in the model's input space).

    Returns ``{"name", "version", "parent_version", "lineage", "variants": [{variant, chosen, accuracy,
    size_bytes, candidates, archive, target, bytes}]}``.
    """
    import numpy as np

    from edgefleet.registry import KeyStore, Repository
    from edgefleet.registry._successor import ParentRelease, optimize_and_bundle

    lineage = job_lineage(job_dir)
    eval_path = Path(job_dir) / EVAL_DATA
    if not eval_path.exists():
        raise InputError(
            f"job {lineage['federated_job']} has no held-out set to score the optimizer's variants on",
            hint="start the job with --eval-data",
        )
    with np.load(eval_path, allow_pickle=False) as npz:
        x, y = npz["x"], npz["y"]
    repo = Repository(repo_dir, KeyStore(keys_dir))
    parent = ParentRelease.find(repo, name, parent_version)
    work = Path(work_dir) if work_dir is not None else Path(job_dir) / "release"
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    with parent.open_float() as base:
        manifest = base.manifest
        preprocess = [s.model_dump(mode="json") for s in manifest.preprocess]
        if preprocess and golden_inputs is None:
            raise InputError(
                f"{name} {parent.version} has a preprocessing contract: the release needs raw golden inputs",
                hint="pass --golden-data (an .npz whose x holds raw inputs)",
            )
        if len(manifest.inputs) != 1:
            raise InputError(
                f"{name} {parent.version} has {len(manifest.inputs)} inputs; a federated head trains on one"
            )
        input_name = manifest.inputs[0].name
        raw = np.asarray(golden_inputs) if golden_inputs is not None else x
        calib = (
            base.model_inputs(raw[:_CALIB_ROWS])
            if golden_inputs is not None
            else {input_name: x[:_CALIB_ROWS]}
        )
        np.savez(data / "calib.npz", **calib)
        np.savez(data / "eval.npz", **{input_name: x, "labels": y})
    runs = optimize_and_bundle(
        parent,
        model,
        version=version,
        work_dir=work,
        calib=data / "calib.npz",
        eval=data / "eval.npz",
        inputs_raw=raw[:16],
        reference_raw=raw,
        preprocess=preprocess,
        tags=_job_tags(lineage),
        settings=settings,
    )
    if publish:
        for r in runs:
            pub = repo.publish(r["archive"])
            r.update(target=pub.target_path, bytes=pub.length, sha256=pub.sha256)
    return {
        "name": name,
        "version": version,
        "parent_version": parent.version,
        "lineage": lineage,
        "published": publish,
        "variants": runs,
    }
