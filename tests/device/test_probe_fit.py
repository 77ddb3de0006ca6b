"""``edgefleet device probe | fit | state | policy``: the profile the optimizer reads, the fit verdict, and
bad inputs as one-line errors."""

from __future__ import annotations

import itertools
import json

import fakesys
import pytest
import yaml

from edgefleet.optimize import DeviceProfile
from edgefleet.power._fit import fit_model, usable_cores
from edgefleet.power._profile import compute_score, cpu_model, probe_device


class Ran:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``edgefleet ARGS`` in this process (its entry point, error handling included) from ``cwd``."""
    from edgefleet.cli import main

    def run(args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def test_probe_reads_the_device_tree(tmp_path):
    root = fakesys.laptop(tmp_path / "root", temp_c=70.0, capacity=55)
    (root / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: Fake Core i5-1135G7 @ 2.40GHz\n")
    p = probe_device(tmp_path, name="laptop", sys_root=root, measure=False)
    d = p["device"]
    assert p["name"] == "laptop" and p["compute_score"] is None and p["cores"] >= 1
    assert d["cpu_model"] == "Fake Core i5-1135G7 @ 2.40GHz"
    assert d["cgroup"]["cpu_quota_cores"] == 1.5 and d["cgroup"]["memory_max_bytes"] == 512 << 20
    assert [z["type"] for z in d["thermal_zones"]] == ["acpitz", "x86_pkg_temp"]
    assert d["thermal_zones"][1]["trips"][0] == ("passive", 85.0)
    assert {s["name"]: s["capacity_percent"] for s in d["power_supplies"]} == {"AC": None, "BAT0": 55.0}
    assert [c["name"] for c in d["energy_counters"]] == ["package-0", "core"]
    assert usable_cores(8, d) == 1.5 and usable_cores(1, d) == 1


def test_cpu_model_on_arm(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(
        "processor\t: 0\nFeatures\t: fp asimd asimddp\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4\n"
    )
    assert cpu_model(f) == "BCM2835"


def test_compute_score_is_measured():
    s = compute_score(seconds=0.1)
    assert s["score"] > 0 and s["matmul_gflops"] > 0 and s["conv_gflops"] > 0 and s["threads"] == 1


def test_probe_cli_writes_a_profile_the_optimizer_reads(tmp_path, cli):
    r = cli(["device", "probe", "--out", "me.yaml", "--name", "me"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "compute score" in r.stdout and "thermal zones" in r.stdout
    prof = DeviceProfile.from_yaml(tmp_path / "me.yaml")  # the optimizer's --profile reader
    assert prof.name == "me" and prof.compute_score > 0 and prof.device_class == "cpu"
    assert "cgroup" in prof.device
    r = cli(["device", "probe", "--no-measure", "--json", "--out", "me.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compute_score"] is None
    assert json.loads((tmp_path / "me.json").read_text())["arch"]


def _profile(tmp_path, **kw):
    p = tmp_path / f"{kw.get('name', 'dev')}.yaml"
    p.write_text(yaml.safe_dump({"name": "dev", "cores": 1, **kw}))
    return DeviceProfile.from_yaml(p)


def test_fit_scales_by_compute_score(tmp_path, digits_mlp):
    here = compute_score(seconds=0.2)["score"]
    fast = fit_model(
        digits_mlp, _profile(tmp_path, name="fast", compute_score=here), runs=30, measure_memory=False
    )
    slow = fit_model(
        digits_mlp, _profile(tmp_path, name="slow", compute_score=here / 10), runs=30, measure_memory=False
    )
    # the same measurement scaled: a 10x slower device is predicted about 10x slower (scores drift a bit)
    assert (
        5
        < (slow.predicted_p50_ms / slow.measured_p50_ms) / (fast.predicted_p50_ms / fast.measured_p50_ms)
        < 20
    )
    assert fast.verdict == "unknown" and "no latency or memory budget" in fast.reasons[-1]


def test_fit_verdicts(tmp_path, digits_mlp):
    score = compute_score(seconds=0.2)["score"]
    ok = fit_model(
        digits_mlp,
        _profile(tmp_path, compute_score=score, latency_budget_ms=1000, ram_budget_mb=4000),
        runs=30,
    )
    assert ok.verdict == "fits" and ok.predicted_rss_mb is not None, ok.reasons
    tight = fit_model(
        digits_mlp,
        _profile(tmp_path, compute_score=score / 1e6, latency_budget_ms=1.0),
        runs=30,
        measure_memory=False,
    )
    assert tight.verdict == "does not fit" and "over the 1 ms budget" in tight.reasons[-1]
    unknown = fit_model(digits_mlp, _profile(tmp_path, latency_budget_ms=5), runs=20, measure_memory=False)
    assert unknown.verdict == "unknown" and "edgefleet device probe" in unknown.reasons[0]
    quota = fit_model(
        digits_mlp,
        _profile(tmp_path, compute_score=score, device={"cgroup": {"cpu_quota_cores": 0.5}}),
        threads=1,
        runs=20,
        measure_memory=False,
    )
    assert "cgroup CPU quota 0.5 cores" in quota.reasons[1]


def test_energy_per_inference(tmp_path, digits_mlp, monkeypatch):
    score = compute_score(seconds=0.2)["score"]
    est = fit_model(
        digits_mlp,
        _profile(tmp_path, compute_score=score, device={"cpu_watts": 4.0}),
        runs=20,
        measure_memory=False,
    )
    assert est.energy_method == "estimate" and est.energy_mj == pytest.approx(est.predicted_p50_ms * 4.0)
    assert any("(estimate)" in r for r in est.reasons)
    # RAPL where it exists: the probe reads the package counter around its micro-benchmark
    import edgefleet.power._profile as prof

    root = fakesys.laptop(tmp_path / "root")
    ticks = itertools.chain([1_000_000], itertools.repeat(3_000_000))  # 2 J across the benchmark
    real = prof.read_energy_counters

    def counters(path):
        out = real(path)
        for c in out:
            if c.zone == "intel-rapl:0":
                c.energy_uj = next(ticks)
        return out

    monkeypatch.setattr(prof, "read_energy_counters", counters)
    monkeypatch.setattr(prof, "compute_score", lambda threads=1, seconds=0.6: {"score": score})
    p = probe_device(tmp_path, sys_root=root)
    watts = p["device"]["compute"]["rapl_watts"]
    assert watts > 0
    rapl = fit_model(
        digits_mlp, _profile(tmp_path, compute_score=score, device=p["device"]), runs=20, measure_memory=False
    )
    assert rapl.energy_method == "rapl" and rapl.energy_mj == pytest.approx(
        rapl.predicted_p50_ms * watts, rel=1e-3
    )


def test_fit_cli(tmp_path, digits_mlp, cli):
    (tmp_path / "p.yaml").write_text(
        yaml.safe_dump({"name": "tiny", "compute_score": 1e-6, "latency_budget_ms": 1})
    )
    r = cli(["device", "fit", str(digits_mlp), "--profile", "p.yaml", "--runs", "20"], tmp_path)
    assert r.returncode == 1 and "does not fit" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["device", "probe", "--out", "p.txt"], "written as .yaml"),
        (["device", "fit", "nope.onnx", "--profile", "p.yaml"], "p.yaml cannot be read"),
        (["device", "fit", "nope.onnx", "--profile", "good.yaml"], "nope.onnx does not exist"),
        (["device", "fit", "junk.onnx", "--profile", "good.yaml"], "junk.onnx"),
        (["device", "state", "--source", "battery"], "unknown device state source"),
        (["device", "state", "--source", "scripted:junk.yaml"], "not valid YAML"),
        (["device", "policy", "junk.yaml", "--trace", "junk.yaml"], "not valid YAML"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, args, needle, cli):
    (tmp_path / "good.yaml").write_text("name: x\ncompute_score: 10\n")
    (tmp_path / "junk.yaml").write_text("rows: [\n")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    r = cli(args, tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_state_and_policy_cli(tmp_path, cli):
    root = fakesys.laptop(tmp_path / "root", temp_c=81.0, capacity=20)
    r = cli(["device", "state", "--source", f"sysfs:{root}", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["battery_percent"], s["power_source"], s["headroom_c"]) == (20.0, "battery", 4.0)
    (tmp_path / "policy.yaml").write_text(
        yaml.safe_dump(
            {
                "min_dwell_s": 0,
                "rules": [{"name": "hot", "when": {"headroom_below": 8}, "actions": {"variant": "smaller"}}],
            }
        )
    )
    (tmp_path / "trace.csv").write_text("t,temp_c,trip_c\n0,60,85\n100,80,85\n200,60,85\n")
    r = cli(["device", "policy", "policy.yaml", "--trace", "trace.csv", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["switches"] == 2 and [c["t"] for c in out["changes"]] == [100, 200]
    r = cli(["device", "policy", "policy.yaml", "--trace", "trace.csv"], tmp_path)
    assert r.returncode == 0 and "2 switches" in r.stdout
