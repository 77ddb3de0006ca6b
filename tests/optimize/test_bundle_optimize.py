"""--bundle: the winner becomes a bundle whose manifest carries the measured figures."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.optimize import optimize

bundle = pytest.importorskip("edgefleet.bundle")


def test_winner_becomes_a_verified_bundle(tmp_path, digits_mlp, mlp_npz, fast):
    from edgefleet.optimize import DeviceProfile

    calib, ev = mlp_npz
    prof = DeviceProfile(name="edge-1", cores=1, latency_budget_ms=50, ram_budget_mb=512)
    out = tmp_path / "out"
    rep = optimize(
        digits_mlp,
        calib=calib,
        eval=ev,
        profile=prof,
        variants=["fp32", "static-int8-pt-minmax"],
        out_dir=out,
        bundle={"name": "digits", "version": "1.2.0"},
        settings=fast,
    )
    assert rep.bundle and (out / rep.bundle).is_file()
    with bundle.Bundle.open(out / rep.bundle) as b:
        m = b.manifest
        assert (m.name, m.version) == ("digits", "1.2.0") and m.variant == f"edge-1-{rep.chosen}"
        assert m.metrics.accuracy == pytest.approx(rep.chosen_result.quality.accuracy)
        lat = m.metrics.latency["edge-1"]
        assert lat.p95_ms == pytest.approx(rep.chosen_result.bench.latency.p95_ms)
        assert m.metrics.size_bytes == rep.chosen_result.size_bytes
        assert m.lineage.optimization["variant"] == rep.chosen
        assert m.budgets.latency_p95_ms == 50 and m.budgets.ram_mb == 512
        assert b.model_path.read_bytes() == (out / "model.onnx").read_bytes()
        report = b.verify()  # the golden set reruns in a fresh session on the bundled model
        assert report is not None


def test_bad_bundle_identity_leaves_nothing(tmp_path, digits_mlp, mlp_npz, fast, one_core):
    from edgefleet.errors import EdgefleetError

    calib, ev = mlp_npz
    out = tmp_path / "out"
    with pytest.raises(EdgefleetError, match="invalid bundle identity"):
        optimize(
            digits_mlp,
            calib=calib,
            eval=ev,
            profile=one_core,
            variants=["fp32"],
            out_dir=out,
            bundle={"name": "digits", "version": "one"},
            settings=fast,
        )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert np  # keep numpy imported for fixtures
