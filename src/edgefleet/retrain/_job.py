"""The retraining job: parent release + labelled snapshot -> trained, optimized, bundled, signed, registered, proposed.

Steps (each one recorded on the control plane as an audit entry when a client is given, and in
``WORK/job.json`` always): ``started`` -> ``trained`` (with the parent's and the new model's accuracy on a
held-out part of the labelled samples) -> ``optimized`` (per variant, with the parent variant's budget) ->
``published`` (bundles with lineage, signed by the publisher's targets key) -> ``registered`` ->
``rollout_proposed`` (waits for an operator's approval) or ``rollout_started`` (policy ``auto``). A failure
is recorded as ``failed`` with its message, and nothing is published after it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet._fs import atomic_write
from edgefleet.errors import EdgefleetError, InputError, OptimizeError
from edgefleet.retrain._snapshot import DataSnapshot, load_snapshot
from edgefleet.retrain._trainer import Trainer, write_training_folder

__all__ = ["RetrainJob", "RetrainSpec"]

log = logging.getLogger(__name__)

_CALIB_ROWS = 128
_BASE_EVAL_ROWS = 500


@dataclass
class RetrainSpec:
    """What a retraining job does.

    Args:
        repo: the TUF repository folder the parent is published in (and the new release goes to).
        keys: the publisher's key folder (targets key).
        name: model name.
        snapshot: the labelled data snapshot folder.
        parent_version: the release to start from (default: the newest published).
        version: the new release's version (default: the parent's next patch).
        base_data: the parent's training data to replay beside the samples (a snapshot folder or an
            ``.npz`` with ``x``/``y``, raw inputs); the release's training lineage.
        trainer: how to train (default: the built-in head retrainer).
        work_dir: where the job's files go (training folder, optimize runs, bundles, job.json).
        holdout: share of the snapshot kept out of training to compare parent and new model.
        min_gain: points of accuracy on the held-out samples the new model must gain over the parent.
        rollout: rollout settings for the proposal (``selector``, ``waves``, ``soak_s``, ``gates``...).
        auto_rollout: start the rollout at once instead of proposing it for approval.
        request_id: the drift alert's retraining request this job answers.
        optimize_settings: an ``OptimizeConfig`` for the optimizer (default: its defaults).
        mlflow_uri: an MLflow tracking URI to log the job and its optimize runs to.
    """

    repo: Path
    keys: Path
    name: str
    snapshot: Path
    work_dir: Path
    parent_version: str | None = None
    version: str | None = None
    base_data: Path | None = None
    trainer: Trainer = field(default_factory=Trainer)
    holdout: float = 0.25
    min_gain: float = 0.0
    rollout: dict[str, Any] = field(default_factory=dict)
    auto_rollout: bool = False
    request_id: str | None = None
    optimize_settings: Any = None
    mlflow_uri: str | None = None
    seed: int = 0


class RetrainJob:
    """Runs one :class:`RetrainSpec`; ``client`` (an operator ``Client``) registers and proposes on a server.

    ``on_step(step, record)`` is called after each step (the CLI prints it).
    """

    def __init__(
        self,
        spec: RetrainSpec,
        client: Any = None,
        *,
        on_step: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.spec = spec
        self.client = client
        self.on_step = on_step
        self.id = secrets.token_hex(8)
        self.record: dict[str, Any] = {"id": self.id, "name": spec.name, "steps": [], "status": "running"}
        self.tracker: Any = None

    # --- recording -----------------------------------------------------------------------------

    def _step(self, step: str, **details: Any) -> None:
        entry = {"step": step, "at": time.time(), **details}
        self.record["steps"].append(entry)
        self.record["status"] = {"failed": "failed", "rollout_proposed": "proposed"}.get(
            step, "completed" if step == "rollout_started" else "running"
        )
        self.spec.work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.spec.work_dir / "job.json", json.dumps(self.record, indent=1, default=str).encode())
        if self.client is not None:
            self.client.retrain_job_step(self.id, step, details)
        if self.tracker is not None:
            self.tracker.step(step, details)
        if self.on_step:
            self.on_step(step, entry)

    # --- the job -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run every step; returns the job record.

        Raises:
            EdgefleetError: the failing step's error (recorded as ``failed`` first).
        """
        try:
            return self._run()
        except EdgefleetError as e:
            self._step("failed", error=e.message, hint=e.hint)
            raise
        finally:
            if self.tracker is not None:
                self.tracker.close(self.record["status"])

    def _run(self) -> dict[str, Any]:
        from edgefleet.registry import KeyStore, Repository
        from edgefleet.registry._published import next_patch
        from edgefleet.registry._successor import ParentRelease

        sp = self.spec
        repo = Repository(sp.repo, KeyStore(sp.keys))
        parent_release = ParentRelease.find(repo, sp.name, sp.parent_version)
        parent = parent_release.version
        version = sp.version or next_patch(parent)
        snap = load_snapshot(sp.snapshot)
        if sp.mlflow_uri:
            from edgefleet.retrain._mlflow import JobTracker

            self.tracker = JobTracker(sp.mlflow_uri, self.id, sp.name)
        if self.client is not None:
            self.client.create_retrain_job(
                self.id,
                name=sp.name,
                parent_version=parent,
                version=version,
                snapshot=snap.summary(),
                trainer=sp.trainer.describe(),
                request_id=sp.request_id,
                rollout=sp.rollout,
                auto_rollout=sp.auto_rollout,
            )
        self.record.update(parent_version=parent, version=version, snapshot=snap.summary())
        self._step(
            "started",
            parent=f"{sp.name} {parent}",
            version=version,
            snapshot_sha256=snap.sha256,
            labels=snap.labels,
            trainer=sp.trainer.describe(),
            request_id=sp.request_id,
        )
        with parent_release.open_float() as bundle:
            manifest = bundle.manifest
            model, _ = self._train(bundle, manifest, snap)
            preprocess = [s.model_dump(mode="json") for s in manifest.preprocess]
            archives = self._optimize_and_bundle(parent_release, model, snap, version, preprocess)
        self._publish(repo, archives, version)
        return self.record

    # --- training ------------------------------------------------------------------------------

    def _split(self, snap: DataSnapshot) -> tuple[np.ndarray, np.ndarray]:
        n = len(snap)
        idx = np.random.default_rng(self.spec.seed).permutation(n)
        k = int(round(n * self.spec.holdout)) if n >= 4 else 0
        return idx[k:], idx[:k]

    def _base(self) -> tuple[np.ndarray, np.ndarray] | None:
        p = self.spec.base_data
        if p is None:
            return None
        if Path(p).is_dir():
            b = load_snapshot(p)
            return b.x, b.y
        try:
            with np.load(p, allow_pickle=False) as d:
                return d["x"], d["y"]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(
                f"cannot read the base data {p}: {e}", hint="a snapshot folder or an .npz with x and y"
            ) from None

    def _train(self, bundle: Any, manifest: Any, snap: DataSnapshot) -> tuple[Path, dict[str, Any]]:
        sp = self.spec
        train_idx, hold_idx = self._split(snap)
        xs, ys = snap.x[train_idx], snap.y[train_idx]
        base = self._base()
        if base is not None:
            if base[0].shape[1:] != snap.x.shape[1:]:
                raise InputError(
                    f"base data rows have shape {base[0].shape[1:]}, the samples {snap.x.shape[1:]}",
                    hint="replay data and samples must be the same raw inputs",
                )
            xs = np.concatenate([base[0].astype(snap.x.dtype, copy=False), xs])
            ys = np.concatenate([base[1].astype(np.int64), ys.astype(np.int64)])
        manifest_json = json.loads((snap.path / "manifest.json").read_bytes())
        folder = write_training_folder(
            sp.work_dir / "training",
            x=xs,
            y=ys,
            snapshot_manifest=manifest_json,
            preprocess=[s.model_dump(mode="json") for s in manifest.preprocess],
            parent_model=bundle.model_path,
        )
        out = sp.work_dir / "trained" / "model.onnx"
        info = sp.trainer.train(folder, out, bundle.model_inputs)
        xh, yh = snap.x[hold_idx], snap.y[hold_idx]
        before = _accuracy(bundle.model_path, bundle.model_inputs, xh, yh)
        after = _accuracy(out, bundle.model_inputs, xh, yh)
        figures = {
            "train_rows": len(ys),
            "sample_rows": len(train_idx),
            "holdout_rows": len(hold_idx),
            "parent_holdout_accuracy": before,
            "new_holdout_accuracy": after,
            **{k: v for k, v in info.items() if isinstance(v, (int, float, str))},
        }
        self._step("trained", **figures)
        if before is not None and after is not None and (after - before) * 100 < sp.min_gain:
            raise OptimizeError(
                f"the retrained model scores {after:.1%} on {len(hold_idx)} held-out samples, the parent "
                f"{before:.1%}: less than the {sp.min_gain} points gain asked for",
                hint="label more samples, or lower --min-gain",
            )
        self._eval_sets(bundle, snap, hold_idx, base, xs)
        return out, figures

    def _eval_sets(
        self,
        bundle: Any,
        snap: DataSnapshot,
        hold_idx: np.ndarray,
        base: tuple[np.ndarray, np.ndarray] | None,
        train_x: np.ndarray,
    ) -> None:
        """Calibration and evaluation .npz files (model inputs) for the optimizer."""
        ex, ey = snap.x[hold_idx], snap.y[hold_idx]
        if base is not None:
            ex = np.concatenate([ex, base[0][:_BASE_EVAL_ROWS].astype(ex.dtype, copy=False)])
            ey = np.concatenate([ey.astype(np.int64), base[1][:_BASE_EVAL_ROWS].astype(np.int64)])
        if len(ey) == 0:
            ex, ey = snap.x, snap.y
        d = self.spec.work_dir / "data"
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "calib.npz", **bundle.model_inputs(train_x[:_CALIB_ROWS]))
        np.savez(d / "eval.npz", **bundle.model_inputs(ex), labels=ey)

    # --- optimize, bundle, publish -------------------------------------------------------------

    def _optimize_and_bundle(
        self, parent: Any, model: Path, snap: DataSnapshot, version: str, preprocess: list[dict[str, Any]]
    ) -> list[Path]:
        """Optimize with each parent variant's budget and bundle (``registry._successor``, shared with the
        federated export)."""
        from edgefleet.registry._successor import optimize_and_bundle

        sp = self.spec
        tags = {
            "data_snapshot": snap.sha256,
            "labels_used": str(len(snap)),
            "label_counts": json.dumps(snap.labels, separators=(",", ":"))[:500],
            "retrain_job": self.id,
            "trainer": sp.trainer.describe(),
            "trained": f"retrained from {parent.version} on {len(snap)} labelled samples",
        }
        if sp.request_id:
            tags["retrain_request"] = sp.request_id
        if self.tracker is not None and self.tracker.run_id:
            tags["mlflow_run_id"] = self.tracker.run_id
        d = sp.work_dir / "data"
        runs = optimize_and_bundle(
            parent,
            model,
            version=version,
            work_dir=sp.work_dir,
            calib=d / "calib.npz",
            eval=d / "eval.npz",
            inputs_raw=snap.x[:16],
            reference_raw=snap.x,
            preprocess=preprocess,
            tags=tags,
            dataset_sha256=snap.sha256,
            settings=sp.optimize_settings,
            on_report=self.tracker.optimize_run if self.tracker is not None else None,
        )
        self._step("optimized", runs=[{k: v for k, v in r.items() if k != "archive"} for r in runs])
        return [Path(r["archive"]) for r in runs]

    def _publish(self, repo: Any, archives: list[Path], version: str) -> None:
        sp = self.spec
        targets = []
        for a in archives:
            pub = repo.publish(a)
            targets.append({"target": pub.target_path, "bytes": pub.length, "sha256": pub.sha256})
        self._step("published", version=version, targets=targets)
        if self.client is None:  # no control plane: the job ends with the release published
            self.record["status"] = "published"
            atomic_write(sp.work_dir / "job.json", json.dumps(self.record, indent=1, default=str).encode())
            return
        rel = self.client.register_release(sp.name, version)
        self._step(
            "registered", release=f"{sp.name} {version}", variants=[v["variant"] for v in rel["variants"]]
        )
        out = self.client.propose_retrain_rollout(self.id, sp.rollout, start=sp.auto_rollout)
        if out.get("rollout_id"):
            self.record["rollout_id"] = out["rollout_id"]
            self.record["status"] = "completed"
            if self.tracker is not None:
                self.tracker.step("rollout_started", {"rollout_id": out["rollout_id"]})
            if self.on_step:
                self.on_step("rollout_started", out)
        else:
            self.record["status"] = "proposed"
            if self.on_step:
                self.on_step("rollout_proposed", out)
        atomic_write(sp.work_dir / "job.json", json.dumps(self.record, indent=1, default=str).encode())


def _accuracy(
    model: Path, feeds: Callable[[np.ndarray], dict[str, np.ndarray]], x: np.ndarray, y: np.ndarray
) -> float | None:
    """Top-1 accuracy of ``model`` (its first float output with one score per class) on raw ``x``."""
    if len(y) == 0:
        return None
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds(x))
    scores = next((o for o in outs if o.dtype.kind == "f" and o.ndim == 2 and o.shape[1] > 1), None)
    if scores is None:
        return None
    return round(float(np.mean(np.argmax(scores, axis=1) == y)), 4)
