"""``edgefleet retrain``: labelled samples -> retrained, optimized, signed, registered and proposed release.

``retrain run`` runs the job where the publisher's targets key is. Started by a drift alert's retraining
request, it reads the request on stdin: set the server's ``EDGEFLEET_FLEET_RETRAIN_COMMAND`` to e.g.
``edgefleet retrain run --request - --repo REPO --keys KEYS --base-data train.npz`` and approving the
request runs the job on the labelled samples of the alert's release and region.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import (
    DEFAULT_URL,
    CaFile,
    JsonOut,
    ServerUrl,
    Token,
    TokenFile,
    ago,
    console,
    emit,
    operator_command,
)
from edgefleet.client import Client
from edgefleet.errors import InputError

retrain_app = typer.Typer(
    help="Retrain a release on labelled samples and propose the new release's rollout.", no_args_is_help=True
)
import_app = typer.Typer(help="Start a release from a model another tool registered.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(retrain_app, name="retrain")
    app.add_typer(import_app, name="import")


def _read_request(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read(1 << 20) if source == "-" else Path(source).read_text(encoding="utf-8")
        req = json.loads(text)
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot read the retraining request {source}: {e}", hint="pass the request JSON"
        ) from None
    if not isinstance(req, dict) or not isinstance(req.get("id"), str):
        raise InputError(
            "the retraining request has no id", hint="pass a request as the server's hook sends it"
        )
    return req


_INT_GATES = ("min_devices", "min_requests", "min_control_requests", "min_labelled")


def _rollout(
    selector: str | None,
    waves: str | None,
    soak: str | None,
    policy: str,
    gate: list[str] | None = None,
    device_gate: list[str] | None = None,
) -> dict[str, Any]:
    from edgefleet.cli._common import parse_duration, parse_numbers

    out: dict[str, Any] = {"policy": policy}
    gates = parse_numbers(gate, "gate")
    out.update({"gates": {k: int(v) if k in _INT_GATES else v for k, v in gates.items()}} if gates else {})
    device = parse_numbers(device_gate, "device-gate")
    out.update({"device_gates": device} if device else {})
    if selector:
        out["selector"] = selector
    if waves:
        try:
            out["waves"] = [float(w) for w in waves.split(",")]
        except ValueError:
            raise InputError(f"cannot read waves {waves!r}", hint="e.g. --waves 10,50,100") from None
    if soak:
        out["soak_s"] = parse_duration(soak)
    return out


@retrain_app.command("run")
def retrain_run(
    repo: Path = typer.Option(..., "--repo", help="The TUF repository the parent is published in."),
    keys: Path = typer.Option(..., "--keys", help="The publisher's key folder (targets key)."),
    name: str = typer.Option(None, "--name", help="Model name (default: the request's model)."),
    snapshot: Path = typer.Option(
        None, "--snapshot", help="Labelled data snapshot folder (default: the server's labelled samples)."
    ),
    parent: str = typer.Option(None, "--parent", help="Parent version (default: newest published)."),
    version: str = typer.Option(None, "--version", help="New version (default: parent's next patch)."),
    base_data: Path = typer.Option(
        None, "--base-data", help="The parent's training data to replay (.npz with x, y or a snapshot)."
    ),
    trainer: str = typer.Option("head", "--trainer", help="'head' (built in) or module:function."),
    trainer_command: str = typer.Option(
        None, "--trainer-command", help="A command run with {data} and {out} (instead of --trainer)."
    ),
    work: Path = typer.Option(None, "--work", help="Job folder (default: ./retrain-JOBID)."),
    release: str = typer.Option(None, "--release", help="Samples of this release (name@version)."),
    region: str = typer.Option(None, "--region", help="Samples of this region only."),
    classes: str = typer.Option(None, "--classes", help="Class names in index order (labels -> indices)."),
    min_gain: float = typer.Option(0.0, "--min-gain", help="Accuracy points the new model must gain."),
    selector: str = typer.Option(None, "--selector", help="Rollout selector (default: all devices)."),
    gate: list[str] = typer.Option(
        None, "--gate", help="A gate of the proposed rollout, e.g. min_labelled=20 (live accuracy)."
    ),
    device_gate: list[str] = typer.Option(
        None, "--device-gate", help="A device-side watch-window gate, e.g. min_confidence_ratio=0."
    ),
    waves: str = typer.Option(None, "--waves", help="Rollout waves, e.g. 10,50,100."),
    soak: str = typer.Option(None, "--soak", help="Soak time per wave, e.g. 10m."),
    auto_rollout: bool = typer.Option(
        False, "--auto-rollout", help="Start the rollout at once instead of waiting for approval."
    ),
    request: str = typer.Option(
        None, "--request", help="A drift alert's retraining request (JSON file or -)."
    ),
    mlflow_uri: str = typer.Option(None, "--mlflow-uri", envvar="MLFLOW_TRACKING_URI", help="Log to MLflow."),
    offline: bool = typer.Option(False, "--offline", help="Publish only: no control plane to register on."),
    server: ServerUrl = DEFAULT_URL,
    token: Token = None,
    token_file: TokenFile = None,
    ca: CaFile = None,
    json_out: JsonOut = False,
) -> None:
    """Retrain, optimize with the parent's budget, bundle with lineage, publish, register, propose a rollout."""
    import secrets

    from edgefleet.retrain import RetrainJob, RetrainSpec, Trainer

    req = _read_request(request) if request else None
    subject = (req or {}).get("subject") or {}
    name = name or (req or {}).get("model")
    if not name or name == "-":
        raise InputError("which model? no --name and no model in the request", hint="pass --name NAME")
    release = release or subject.get("release")
    region = region or subject.get("region")
    client = None if offline else Client(server, token=token, token_file=token_file, ca_file=ca)
    try:
        work = work or Path(f"retrain-{secrets.token_hex(4)}")
        if snapshot is None:
            if client is None:
                raise InputError("--offline needs --snapshot", hint="pass a snapshot folder")
            from edgefleet.retrain._collect import snapshot_from_server

            snapshot = work / "snapshot"
            _snap, counts = snapshot_from_server(
                client,
                snapshot,
                release=release,
                region=region,
                classes=classes.split(",") if classes else None,
            )
            if not json_out:
                console.print(f"snapshot: {counts['used']} labelled samples with inputs ({counts})")
        spec = RetrainSpec(
            repo=repo,
            keys=keys,
            name=name,
            snapshot=snapshot,
            work_dir=work,
            parent_version=parent or (release.partition("@")[2] if release and "@" in release else None),
            version=version,
            base_data=base_data,
            trainer=Trainer(None if trainer_command else trainer, command=trainer_command),
            min_gain=min_gain,
            rollout=_rollout(selector, waves, soak, "auto", gate, device_gate),
            auto_rollout=auto_rollout,
            request_id=(req or {}).get("id"),
            mlflow_uri=mlflow_uri,
        )

        def on_step(step: str, entry: dict[str, Any]) -> None:
            if not json_out:
                figures = ", ".join(
                    f"{k} {v}"
                    for k, v in entry.items()
                    if k not in ("at", "step") and not isinstance(v, (dict, list))
                )
                console.print(f"[green]{step}[/] {figures}"[:400], highlight=False)

        record = RetrainJob(spec, client, on_step=on_step).run()
    finally:
        if client is not None:
            client.close()
    emit(record, json_out, _show_job)


def _show_job(rec: dict[str, Any]) -> None:
    console.print(
        f"job {rec['id']}: {rec['name']} {rec.get('parent_version')} -> {rec.get('version')}: {rec['status']}"
        + (f", rollout {rec['rollout_id']}" if rec.get("rollout_id") else "")
    )
    if rec.get("status") == "proposed":
        console.print(f"approve the rollout: edgefleet retrain approve {rec['id']}")


def _show_jobs(jobs: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("job", "release", "from", "status", "last step", "rollout", "created")
    for j in jobs:
        last = j["steps"][-1]["step"] if j.get("steps") else "-"
        t.add_row(
            j["id"],
            f"{j['name']} {j['version']}",
            j["parent_version"],
            j["status"],
            last,
            j.get("rollout_id") or "-",
            ago(j.get("created_at")),
        )
    console.print(t)


@operator_command(retrain_app, "status", show=_show_jobs)
def retrain_status(
    api: Client, job: str = typer.Argument(None, help="One job's id.")
) -> list[dict[str, Any]]:
    """Retraining jobs the control plane recorded (newest first), or one job."""
    return [api.retrain_job(job)] if job else api.retrain_jobs()


@operator_command(retrain_app, "approve", show=_show_job)
def retrain_approve(api: Client, job: str = typer.Argument(...)) -> dict[str, Any]:
    """Approve a job's proposed rollout: it starts."""
    return api.approve_retrain_job(job)


@operator_command(retrain_app, "reject", show=_show_job)
def retrain_reject(api: Client, job: str = typer.Argument(...)) -> dict[str, Any]:
    """Reject a job's proposed rollout."""
    return api.reject_retrain_job(job)


@retrain_app.command("snapshot")
def retrain_snapshot(
    out: Path = typer.Argument(..., help="New snapshot folder."),
    release: str = typer.Option(None, "--release", help="Samples of this release (name@version)."),
    region: str = typer.Option(None, "--region", help="Samples of this region only."),
    classes: str = typer.Option(None, "--classes", help="Class names in index order."),
    server: ServerUrl = DEFAULT_URL,
    token: Token = None,
    token_file: TokenFile = None,
    ca: CaFile = None,
    json_out: JsonOut = False,
) -> None:
    """Write the server's labelled samples (with stored inputs) as a data snapshot folder."""
    from edgefleet.retrain._collect import snapshot_from_server

    with Client(server, token=token, token_file=token_file, ca_file=ca) as api:
        snap, counts = snapshot_from_server(
            api, out, release=release, region=region, classes=classes.split(",") if classes else None
        )
    emit(
        {**snap.summary(), "counts": counts},
        json_out,
        lambda s: console.print(
            f"snapshot {s['path']}: {s['rows']} rows, sha256 {s['sha256'][:16]}..., {s['counts']}"
        ),
    )


@import_app.command("mlflow")
def import_mlflow(
    model_uri: str = typer.Argument(..., help="models:/NAME/VERSION"),
    out: Path = typer.Option(..., "--out", help="The bundle archive to write."),
    name: str = typer.Option(..., "--name", help="edgefleet model name."),
    version: str = typer.Option(..., "--version", help="edgefleet release version."),
    variant: str = typer.Option("cpu", "--variant"),
    inputs: Path = typer.Option(
        ..., "--inputs", help=".npz whose first array's first rows are the golden inputs."
    ),
    preprocess: Path = typer.Option(None, "--preprocess", help="Preprocessing contract (JSON/YAML list)."),
    mlflow_uri: str = typer.Option(
        None, "--mlflow-uri", envvar="MLFLOW_TRACKING_URI", help="Tracking/registry URI."
    ),
    json_out: JsonOut = False,
) -> None:
    """Bundle a model version from an MLflow registry, keeping its run id in the bundle's lineage."""
    import numpy as np

    from edgefleet.bundle import create_bundle
    from edgefleet.cli._common import load_preprocess
    from edgefleet.protocol import Lineage
    from edgefleet.retrain._mlflow import import_registered_model, tracking_uri

    uri = tracking_uri(mlflow_uri)
    if not uri:
        raise InputError("no MLflow tracking URI", hint="pass --mlflow-uri or set MLFLOW_TRACKING_URI")
    try:
        with np.load(inputs, allow_pickle=False) as d:
            x = d[d.files[0]][:16]
    except (OSError, ValueError, IndexError) as e:
        raise InputError(
            f"cannot read golden inputs {inputs}: {e}", hint="an .npz with one input array"
        ) from None
    got = import_registered_model(uri, model_uri, out.parent / f".{out.name}.mlflow", example=x)
    create_bundle(
        got["model"],
        out,
        name=name,
        version=version,
        variant=variant,
        inputs_raw=x,
        preprocess=load_preprocess(preprocess) if preprocess else None,
        lineage=Lineage(
            source_commit=None,
            tags={
                "mlflow_run_id": got["run_id"] or "",
                "mlflow_model": model_uri,
                "mlflow_source": str(got["source"])[:500],
                "trained": f"imported from MLflow {model_uri} ({got['flavor']})",
            },
        ),
    )
    emit(
        {**got, "bundle": str(out)},
        json_out,
        lambda g: console.print(f"[green]bundled[/] {g['bundle']} from {g['model_uri']} (run {g['run_id']})"),
    )
