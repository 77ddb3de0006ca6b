"""MLflow interop against a real local MLflow (SQLite backend store: tracking and model registry).

An optimize run logged through ``edgefleet optimize --mlflow-uri`` (params, figures, report and plot as
artifacts); a registered ONNX model imported with ``edgefleet import mlflow models:/NAME/VERSION`` as the
start of a release whose lineage keeps the MLflow run id.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from clirun import run_cli

pytestmark = pytest.mark.slow

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(capsys, argv)


@pytest.fixture
def uri(tmp_path, monkeypatch) -> str:
    # with a SQLite store MLflow keeps artifacts in ./mlruns of the working directory: the test's own
    monkeypatch.chdir(tmp_path)
    u = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # MLflow's own API reads these. Set here, they go with the test; mlflow.set_tracking_uri would write them
    # into os.environ for good, and every later `edgefleet optimize` of this process (and the demos'
    # subprocesses) logged its run to this deleted store, with artifacts in the repository's ./mlruns.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", u)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", u)
    return u


def test_optimize_run_logged_with_params_metrics_and_artifacts(
    tmp_path, uri, digits_mlp, digits_split, capsys
):
    d = digits_split
    np.savez(tmp_path / "calib.npz", input=(d.x_train[:64] / 16).astype(np.float32))
    np.savez(tmp_path / "eval.npz", input=(d.x_test[:200] / 16).astype(np.float32), labels=d.y_test[:200])
    code, out, err = _run(
        [
            "optimize", str(digits_mlp), "--calib", str(tmp_path / "calib.npz"),
            "--eval", str(tmp_path / "eval.npz"), "-o", str(tmp_path / "opt"),
            "--variants", "fp32,dynamic-int8", "--objective", "size", "--runs", "5", "--no-memory",
            "--mlflow-uri", uri,
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    run_id = err.split("run ")[-1].split()[0]
    c = mlflow.MlflowClient(tracking_uri=uri)
    run = c.get_run(run_id)
    report = json.loads((tmp_path / "opt" / "report.json").read_text())
    assert run.data.params["objective"] == "size" and run.data.params["chosen"] == report["chosen"]
    assert run.data.tags["edgefleet.kind"] == "optimize"
    assert {"fp32.quality", "dynamic-int8.size_bytes", "chosen.quality"} <= set(run.data.metrics)
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"])
    assert run.data.metrics["chosen.quality"] == pytest.approx(chosen["quality"]["score"])
    arts = {a.path for a in c.list_artifacts(run_id)}
    assert {"report.json", "report.md", "plot.png"} <= arts


def test_import_registered_model_keeps_the_run_id_in_the_bundle_lineage(
    tmp_path, uri, digits_mlp, digits_split, capsys
):
    import onnx

    from edgefleet.bundle import Bundle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.set_experiment("training")
        with mlflow.start_run() as run:
            mlflow.onnx.log_model(
                onnx.load(str(digits_mlp)), name="model", registered_model_name="digits-mlp"
            )
    np.savez(tmp_path / "inputs.npz", input=digits_split.x_test[:16].astype(np.float32))
    args = [
        "import", "mlflow", "models:/digits-mlp/1", "--out", str(tmp_path / "digits.tar"),
        "--name", "digits", "--version", "3.0.0", "--inputs", str(tmp_path / "inputs.npz"),
        "--mlflow-uri", uri, "--json",
    ]  # fmt: skip
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps([{"op": "scale", "factor": 1 / 16}]))
    code, out, err = _run([*args, "--preprocess", str(pre)], capsys)
    assert code == 0, err
    assert json.loads(out)["run_id"] == run.info.run_id
    with Bundle.open(tmp_path / "digits.tar") as b:
        assert b.verify().ok
        tags = b.manifest.lineage.tags
        assert tags["mlflow_run_id"] == run.info.run_id and tags["mlflow_model"] == "models:/digits-mlp/1"
        assert b.manifest.version == "3.0.0"

    code, out, err = _run([*args[:2], "models:/digits-mlp/7", *args[3:]], capsys)
    assert code == 1 and "no model version digits-mlp/7" in err
    code, out, err = _run([*args[:2], "runs:/abc/model", *args[3:]], capsys)
    assert code == 1 and "models:/NAME/VERSION" in err
