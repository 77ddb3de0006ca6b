"""Energy per inference in the optimizer's table and report, and in the torch recipe's stage table.

The figure is one formula (``power.energy_per_inference``): p50 x the profile's power figure, RAPL-measured
package watts from ``device probe`` when the profile has them, else ``device.cpu_watts`` (an estimate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tests.optimize.test_cli_optimize import FAST_ENV


def _optimize(*args):
    env = {**os.environ, **FAST_ENV, "COLUMNS": "260"}
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "optimize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_optimize_table_and_report_carry_energy_per_inference(tmp_path, digits_mlp, mlp_npz):
    calib, ev = mlp_npz
    prof = tmp_path / "p.yaml"
    prof.write_text("name: watt-test\ncores: 1\ndevice:\n  cpu_watts: 5.0\n")
    out = tmp_path / "out"
    r = _optimize(
        digits_mlp, "--calib", calib, "--eval", ev, "--profile", prof, "-o", out,
        "--variants", "fp32,dynamic-int8", "--no-memory", "--max-drop", "100",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "energy mJ (est.)" in r.stdout  # the CLI table's column
    rep = json.loads((out / "report.json").read_text())
    assert rep["energy"]["method"] == "estimate" and rep["energy"]["watts"] == 5.0
    measured = [v for v in rep["variants"] if v["bench"]]
    assert len(measured) == 2
    for v in measured:
        assert v["energy_mj"] == pytest.approx(v["bench"]["latency"]["p50_ms"] * 5.0)
        assert f"{v['energy_mj']:.3f}" in r.stdout
    md = (out / "report.md").read_text()
    assert "| energy mJ (est.) |" in md and "device.cpu_watts" in md and "an estimate" in md

    # the same report against a profile whose power was measured by RAPL, and one with no power figure
    from edgefleet.optimize import OptimizeReport

    report = OptimizeReport.model_validate_json((out / "report.json").read_text())
    report.profile = report.profile.model_copy(
        update={"device": {"cpu_watts": 5.0, "compute": {"rapl_watts": 12.5}}}
    )
    md = report.to_markdown()
    assert "| energy mJ (RAPL) |" in md and report.energy == {
        "method": "rapl",
        "watts": 12.5,
        "basis": "p50 at batch 1 x watts",
    }
    assert report.variants[0].energy_mj == pytest.approx(report.variants[0].p50 * 12.5)
    report.profile = report.profile.model_copy(update={"device": None})
    rows = report.table_rows()
    assert report.energy is None and all(r["energy_mj"] == "\u2014" for r in rows)
    assert all(v.energy_mj is None for v in report.variants)
    assert "the profile has no power figure" in report.to_markdown()


def test_optimize_without_power_figure_says_so(tmp_path, digits_mlp, mlp_npz):
    calib, ev = mlp_npz
    prof = tmp_path / "p.yaml"
    prof.write_text("name: no-watts\ncores: 1\n")
    out = tmp_path / "out"
    r = _optimize(
        digits_mlp, "--calib", calib, "--eval", ev, "--profile", prof, "-o", out,
        "--variants", "fp32", "--no-memory", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["energy"] is None and rep["variants"][0]["energy_mj"] is None


@pytest.mark.torch
def test_recipe_stage_table_carries_energy(tmp_path, digits_cnn, digits_split, capsys):
    pytest.importorskip("torch")
    from edgefleet.cli._recipe import print_stages
    from edgefleet.optimize import DeviceProfile
    from edgefleet.optimize._recipe import measure_stage
    from edgefleet.optimize._torch_recipe import RecipeReport

    x = (digits_split.x_test[:64] / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    y = digits_split.y_test[:64].astype(np.int64)
    rapl = DeviceProfile(name="r", cores=1, device={"cpu_watts": 3.0, "compute": {"rapl_watts": 7.0}})
    s = measure_stage("teacher", digits_cnn, x, y, tmp_path, profile=rapl)
    assert s.energy_method == "rapl" and s.energy_mj == pytest.approx(s.p50_ms * 7.0)
    est = measure_stage(
        "again", digits_cnn, x, y, tmp_path, profile=DeviceProfile(cores=1, device={"cpu_watts": 3.0})
    )
    assert est.energy_method == "estimate" and est.energy_mj == pytest.approx(est.p50_ms * 3.0)
    bare = measure_stage("bare", digits_cnn, x, y, tmp_path, profile=DeviceProfile(cores=1))
    assert bare.energy_mj is None and bare.energy_method is None

    rep = RecipeReport(stages=[est, bare])
    capsys.readouterr()
    print_stages(rep)
    out = capsys.readouterr().out
    assert "energy" in out and "(est.)" in out
    assert f"{est.energy_mj:.3f}" in out and "\u2014" in out
    md = rep.markdown()
    assert "| energy mJ (est.) |" in md and f"| {est.energy_mj:.3f} |" in md and "| \u2014 |" in md
    assert "energy mJ (RAPL)" in RecipeReport(stages=[s]).markdown()
