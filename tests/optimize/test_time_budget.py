"""A search that respects time: candidates in order of expected value, the best so far kept when the budget
runs out (what was skipped is reported), clear losers dropped after a subset, progress lines for logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from tests.optimize.conftest import make_linear_onnx
from tests.optimize.test_cli_optimize import FAST_ENV

from edgefleet.optimize import optimize
from edgefleet.optimize._graph import GraphFacts
from edgefleet.optimize._search import Search, expected_order
from edgefleet.optimize._spec import Variant


def _facts(matmul: float) -> GraphFacts:
    return GraphFacts(opset=17, op_counts={}, params=100, params_by_op={"MatMul": matmul, "Conv": 1 - matmul})


@pytest.fixture
def linear(tmp_path):
    """A hand-built 64 -> 10 softmax classifier (no training: the tests stay quick on a loaded machine),
    with 240 evaluation samples."""
    import numpy as np

    model = make_linear_onnx(tmp_path / "linear.onnx", n_in=64, n_out=10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    return model, {"x": x[:60]}, {"x": x[60:]}


def test_candidates_are_ordered_by_expected_value(fast):
    names = [
        "fp16",
        "dynamic-int8",
        "pruned-50",
        "static-int8-pt-entropy",
        "fp32",
        "static-int8-pc-minmax",
        "int4",
    ]
    wanted = [Variant.parse(n) for n in names]
    conv = [v.name for v in expected_order(wanted, _facts(0.1), fast)]
    assert conv[0] == "fp32" and conv[1] == "static-int8-pc-minmax" and conv[-1] == "pruned-50"
    assert conv.index("dynamic-int8") < conv.index("fp16") < conv.index("static-int8-pt-entropy")
    mm = [v.name for v in expected_order(wanted, _facts(0.9), fast)]
    assert mm[:4] == ["fp32", "dynamic-int8", "int4", "static-int8-pc-minmax"] and mm[-1] == "pruned-50"
    assert sorted(conv) == sorted(names) == sorted(mm)


def test_search_stops_when_the_next_candidate_would_not_fit():
    cands = [Variant.parse(n) for n in ("fp32", "dynamic-int8", "fp16", "int4")]
    now = [0.0]
    lines: list[str] = []
    s = Search(cands, budget_s=100.0, notify=lines.append, clock=lambda: now[0])
    tried = []
    for v in s:
        tried.append(v.name)
        now[0] += 30.0  # each candidate takes 30 s of the budget
    # fp32 (30 s), dynamic-int8 (60 s); the next needs ~30 s with 40 s left of which 10 s are kept in
    # reserve: it fits; after it, 10 s left: the rest is skipped
    assert tried == ["fp32", "dynamic-int8", "fp16"]
    assert [r.name for r in s.skipped] == ["int4"]
    assert all(r.status == "skipped" and "time budget: not tried" in r.error for r in s.skipped)
    assert any("skipped int4" in line for line in lines)
    assert lines[0] == "[    0.0 s] fp32: building (1/4)"
    assert Search(cands, budget_s=None).left() == float("inf")


def test_a_budget_already_spent_keeps_the_baseline_and_names_what_it_skipped(
    tmp_path, linear, fast, one_core
):
    model, calib, ev = linear
    lines: list[str] = []
    rep = optimize(
        model,
        calib=calib,
        eval=ev,
        profile=one_core,
        variants=["fp32", "dynamic-int8", "static-int8-pc-minmax"],
        out_dir=tmp_path / "o",
        settings=fast,
        time_budget_s=0.001,
        notify=lines.append,
    )
    assert rep.chosen == "fp32"
    skipped = {v.name: v for v in rep.variants if v.outcome == "skipped"}
    assert set(skipped) == {"dynamic-int8", "static-int8-pc-minmax"}
    assert all("time budget: not tried" in v.reason for v in skipped.values())
    assert rep.search and rep.search["skipped"] == rep.search["order"][1:]
    md = (tmp_path / "o" / "report.md").read_text()
    assert f"skipped for time: {', '.join(rep.search['order'][1:])}" in md
    assert lines[0].startswith("[") and " s] " in lines[0] and any("fp32: measured" in x for x in lines)


def test_clear_losers_are_dropped_after_a_subset(tmp_path, linear, fast, one_core):
    model, calib, ev = linear
    rep = optimize(
        model,
        calib=calib,
        eval=ev,
        profile=one_core,
        objective="size",
        variants=["fp32", "pruned-97", "dynamic-int8"],
        out_dir=tmp_path / "o",
        settings=fast,
        time_budget_s=3600,
    )
    lost = rep.variant("pruned-97")
    assert lost.outcome == "skipped" and lost.reason.startswith("dropped early")
    assert lost.bench is None and lost.drop > 5.0  # judged on the subset only, never benchmarked
    assert rep.search["order"] == ["fp32", "dynamic-int8", "pruned-97"]
    assert rep.variant("dynamic-int8").bench is not None and rep.chosen in ("fp32", "dynamic-int8")


def test_cli_prints_progress_lines_when_not_on_a_terminal(tmp_path, linear):
    import numpy as np

    model, calib_data, ev_data = linear
    calib, ev = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, **calib_data)
    np.savez(ev, **ev_data)
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "optimize",
            str(model),
            "--calib",
            str(calib),
            "--eval",
            str(ev),
            "-o",
            str(tmp_path / "o"),
            "--variants",
            "fp32,dynamic-int8",
            "--time-budget",
            "600",
            "--no-memory",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **FAST_ENV},
    )
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("[")]
    assert any("fp32: building" in x for x in lines) and any("dynamic-int8: measured" in x for x in lines)
    assert any("done: chosen" in x for x in lines)
    # elapsed times only grow
    stamps = [float(x[1 : x.index(" s]")]) for x in lines]
    assert stamps == sorted(stamps) and stamps[-1] <= time.monotonic() - t0
    assert "quality: classification, agreement" in r.stdout
