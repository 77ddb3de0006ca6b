"""MLflow interop (optional extra ``mlflow``; imported only when used).

- :class:`JobTracker`: a retraining job as an MLflow run (its steps as tags and metrics) with one nested
  run per optimize run.
- :func:`log_optimize_run`: an optimize run's params, metrics per variant, and ``report.json``,
  ``report.md`` and ``plot.png`` as artifacts.
- :func:`import_registered_model`: a registered model version (``models:/NAME/VERSION``) as an ONNX file,
  with the run id and source it came from, to start a release from.

The tracking URI is ``--mlflow-uri`` or ``MLFLOW_TRACKING_URI`` (a file store path, ``sqlite:///...``, or a
tracking server's ``http://...``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import ConfigError, InputError, ModelLoadError, NotFoundError

__all__ = ["EXPERIMENT", "JobTracker", "import_registered_model", "log_optimize_run", "tracking_uri"]

EXPERIMENT = "edgefleet"
_MODEL_URI = re.compile(r"^models:/([^/]{1,256})/([0-9]{1,9})$")


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("MLflow is not installed", hint="pip install 'edgefleet[mlflow]'") from None
    return mlflow


def tracking_uri(uri: str | None) -> str | None:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else None (no tracking)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def _client(uri: str) -> Any:
    return _mlflow().MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment(client: Any, name: str = EXPERIMENT) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def _numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)) and np.isfinite(v):
            out[re.sub(r"[^A-Za-z0-9_./ -]", "_", f"{prefix}{k}")[:250]] = float(v)
    return out


def log_optimize_run(
    uri: str, report: Any, out_dir: Path, *, parent_run_id: str | None = None, run_name: str | None = None
) -> str:
    """Log one optimize run (an ``OptimizeReport`` written to ``out_dir``); returns the MLflow run id."""
    c = _client(uri)
    tags = {"edgefleet.kind": "optimize"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(_experiment(c), run_name=run_name or f"optimize {report.chosen or 'none'}", tags=tags)
    rid = run.info.run_id
    params = {
        "objective": report.objective,
        "max_drop": report.budget.max_drop,
        "metric": report.metric,
        "profile": report.profile.name,
        "chosen": report.chosen or "none",
        "variants": ",".join(r.name for r in report.variants)[:500],
    }
    for k, v in params.items():
        c.log_param(rid, k, v)
    for r in report.variants:
        lat = r.bench.latency if r.bench else None
        figures = {
            "size_bytes": r.size_bytes,
            "p50_ms": lat.p50_ms if lat else None,
            "quality": r.quality.score if r.quality else None,
            "drop": r.drop,
        }
        for k, v in _numbers(figures, prefix=f"{r.name}.").items():
            c.log_metric(rid, k, v)
    chosen = report.variant(report.chosen) if report.chosen else None
    if chosen is not None and chosen.quality is not None:
        c.log_metric(rid, "chosen.quality", float(chosen.quality.score))
    for f in ("report.json", "report.md", "plot.png"):
        if (out_dir / f).is_file():
            c.log_artifact(rid, str(out_dir / f))
    c.set_terminated(rid, "FINISHED")
    return rid


class JobTracker:
    """A retraining job as an MLflow run; optimize runs nest under it."""

    def __init__(self, uri: str, job_id: str, name: str) -> None:
        self.uri = uri
        self.client = _client(uri)
        run = self.client.create_run(
            _experiment(self.client),
            run_name=f"retrain {name} {job_id}",
            tags={"edgefleet.kind": "retrain", "edgefleet.job": job_id, "edgefleet.model": name},
        )
        self.run_id: str = run.info.run_id

    def step(self, step: str, details: dict[str, Any]) -> None:
        c, rid = self.client, self.run_id
        c.set_tag(rid, "edgefleet.step", step)
        for k, v in details.items():
            if isinstance(v, str) and k in ("parent", "version", "snapshot_sha256", "trainer", "request_id"):
                c.log_param(rid, k, v[:500])
            elif k == "labels" and isinstance(v, dict):
                c.log_param(rid, "labels", json.dumps(v)[:500])
        for k, v in _numbers(details).items():
            c.log_metric(rid, k, v)
        if step == "failed":
            c.set_tag(rid, "edgefleet.error", str(details.get("error"))[:500])

    def optimize_run(self, variant: str, report: Any, out_dir: Path) -> str:
        return log_optimize_run(
            self.uri, report, out_dir, parent_run_id=self.run_id, run_name=f"optimize {variant}"
        )

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if status == "failed" else "FINISHED")


def import_registered_model(
    uri: str, model_uri: str, out_dir: Path, *, example: np.ndarray | None = None
) -> dict[str, Any]:
    """Fetch ``models:/NAME/VERSION`` from the registry at ``uri`` into ``out_dir/model.onnx``.

    An ONNX flavor's file is copied as is; a scikit-learn flavor is converted with skl2onnx (``example``:
    one input row). Returns ``{"model": path, "run_id", "source", "name", "version", "flavor"}``.

    Raises:
        InputError: ``model_uri`` is not ``models:/NAME/VERSION``.
        NotFoundError: the registry has no such version.
        ModelLoadError: the version holds neither an ONNX nor a scikit-learn model.
    """
    m = _MODEL_URI.match(model_uri)
    if not m:
        raise InputError(
            f"{model_uri!r} is not a registered model version", hint="write it as models:/NAME/VERSION"
        )
    name, version = m.groups()
    mlflow = _mlflow()
    c = _client(uri)
    try:
        mv = c.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as e:
        raise NotFoundError(
            f"MLflow at {uri} has no model version {name}/{version}: {e.message[:200]}",
            hint="list them in the MLflow UI, or check --mlflow-uri",
        ) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp, tracking_uri=uri)
        )
        onnx_files = sorted(local.rglob("*.onnx"))
        mlmodel = local / "MLmodel"
        flavors = mlmodel.read_text() if mlmodel.is_file() else ""
        if onnx_files:
            shutil.copyfile(onnx_files[0], dst)
            flavor = "onnx"
        elif "sklearn" in flavors:
            if example is None:
                raise InputError(
                    f"{model_uri} is a scikit-learn model; converting it needs an example input",
                    hint="pass --inputs NPZ (its first row is the example)",
                )
            from edgefleet.optimize._convert import load_source

            est = mlflow.sklearn.load_model(str(local))
            src = load_source(est, Path(tmp) / "convert", example_inputs=example[:1])
            shutil.copyfile(src.path, dst)
            flavor = "sklearn"
        else:
            raise ModelLoadError(
                f"{model_uri} holds neither an ONNX nor a scikit-learn model",
                hint="log the model with mlflow.onnx or mlflow.sklearn",
            )
    return {
        "model": str(dst),
        "name": name,
        "version": version,
        "run_id": mv.run_id,
        "source": mv.source,
        "flavor": flavor,
        "model_uri": model_uri,
    }
