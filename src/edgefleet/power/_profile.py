"""The full device profile: what ``edgefleet device probe`` writes and ``--profile`` options read.

The profile's top level is the optimizer's ``DeviceProfile`` (name, cores, ram_mb, arch, isa_flags,
execution_providers, onnxruntime) plus ``device_class`` and ``compute_score``, so one file serves
``edgefleet optimize --profile``, ``edgefleet device fit --profile`` and the server's variant assignment
(hardware class). The ``device`` section holds what the kernel told the probe (cgroup limits, thermal
zones, power supplies, energy counters). The hardware part comes from :func:`~edgefleet.power.probe`,
the same code enrollment reports.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.power._probe import probe
from edgefleet.power._sysfs import (
    own_cgroup_dir,
    read_cgroup,
    read_energy_counters,
    read_power_supplies,
    read_thermal_zones,
)

__all__ = ["probe_device", "compute_score", "cpu_model", "write_profile"]

# The micro-benchmark: a 64x256 @ 256x256 matmul and a 16->32 channel 3x3 conv on 32x32, the two shapes
# that dominate small MLPs and CNNs. FLOPs counted as 2 per multiply-add.
_MATMUL = (64, 256, 256)
_CONV = (16, 32, 32, 32)  # in channels, out channels, height, width


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name (x86 ``model name``, ARM ``Hardware``/``Model``), else platform's."""
    try:
        text = cpuinfo.read_text(errors="replace")[: 1 << 20]
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == key and v.strip():
                return v.strip()
    return platform.processor() or platform.machine() or "unknown"


def _micro_models() -> list[tuple[str, bytes, dict[str, np.ndarray], float]]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    m, k, n = _MATMUL
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    mm = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [w],
    )
    ci, co, h, wd = _CONV
    cw = numpy_helper.from_array(rng.standard_normal((co, ci, 3, 3)).astype(np.float32), "cw")
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, h, wd])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, co, h, wd])],
        [cw],
    )
    out = []
    for name, g, shape, flops in (
        ("matmul", mm, (m, k), 2.0 * m * k * n),
        ("conv", conv, (1, ci, h, wd), 2.0 * co * ci * 9 * h * wd),
    ):
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        out.append((name, model.SerializeToString(), feed, flops))
    return out


def compute_score(*, threads: int = 1, seconds: float = 0.6) -> dict[str, float]:
    """Measured GFLOP/s of a matmul and a conv through ONNX Runtime on ``threads`` threads.

    ``score`` is the geometric mean of the two, from the median time of one run (what a p50 latency
    sees); ``throughput_score`` counts every run over the wall time, so CPU quotas and contention show.
    Takes about ``seconds`` (plus two session builds).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = []
    for name, blob, feed, flops in _micro_models():
        s = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        s.run(None, feed)  # warm
        sessions.append((name, s, feed, flops))
    times: dict[str, list[float]] = {name: [] for name, *_ in sessions}
    wall = {name: 0.0 for name, *_ in sessions}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:  # interleaved, so load drift hits both kernels alike
        for name, s, feed, _ in sessions:
            t0 = time.perf_counter()
            for _ in range(5):
                t1 = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - t1)
            wall[name] += time.perf_counter() - t0
    result: dict[str, float] = {}
    for name, _, _, flops in sessions:
        result[f"{name}_gflops"] = flops / statistics.median(times[name]) / 1e9
        result[f"{name}_gflops_throughput"] = flops * len(times[name]) / wall[name] / 1e9
    result["score"] = float(np.sqrt(result["matmul_gflops"] * result["conv_gflops"]))
    result["throughput_score"] = float(
        np.sqrt(result["matmul_gflops_throughput"] * result["conv_gflops_throughput"])
    )
    result["threads"] = float(max(1, threads))
    return result


def probe_device(
    disk_path: str | Path = "/",
    *,
    name: str | None = None,
    sys_root: str | Path = "/",
    measure: bool = True,
    threads: int = 1,
) -> dict[str, Any]:
    """The device profile as a plain mapping (YAML/JSON ready).

    Args:
        disk_path: directory whose filesystem's free space is reported.
        name: the profile's name (default: the host name).
        sys_root: where /sys and /proc are read (a fixture tree in tests).
        measure: run the compute micro-benchmark (about a second); False leaves ``compute_score`` None.
        threads: threads of the micro-benchmark (1: the runtime's default per-request threads).
    """
    hw = probe(disk_path)
    root = Path(sys_root)
    cg = read_cgroup(own_cgroup_dir(root / "sys/fs/cgroup", root / "proc/self/cgroup"))
    powercap = root / "sys/class/powercap"
    before, t0 = _package_uj(powercap), time.perf_counter()
    score = compute_score(threads=threads) if measure else None
    after, wall = _package_uj(powercap), time.perf_counter() - t0
    if score is not None and before is not None and after is not None:
        joules = sum(c.joules_since(before[c.zone].energy_uj) for c in after.values() if c.zone in before)
        if joules > 0:  # RAPL measured the whole package while the micro-benchmark ran
            score["rapl_watts"] = joules / wall
    version = hw.onnxruntime_version
    return {
        "name": name or platform.node() or "device",
        "cores": hw.cores,
        "ram_mb": hw.ram_mb,
        "arch": hw.arch,
        "isa_flags": hw.isa_flags,
        "execution_providers": hw.providers,
        "onnxruntime": version.split("+")[0] if version else None,
        "device_class": hw.device_class,
        "compute_score": round(score["score"], 3) if score else None,
        "device": {
            "cpu_model": cpu_model(root / "proc/cpuinfo"),
            "disk_free_mb": hw.disk_free_mb,
            "probed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "compute": {k: round(v, 3) for k, v in score.items()} if score else None,
            "cgroup": asdict(cg) if cg else None,
            "thermal_zones": [asdict(z) for z in read_thermal_zones(root / "sys/class/thermal")],
            "power_supplies": [asdict(p) for p in read_power_supplies(root / "sys/class/power_supply")],
            "energy_counters": [asdict(c) for c in read_energy_counters(root / "sys/class/powercap")],
        },
    }


def _package_uj(powercap: Path) -> dict[str, Any] | None:
    """RAPL package counters (``intel-rapl:N``) by zone, or None where there are none or none readable."""
    counters = {c.zone: c for c in read_energy_counters(powercap) if c.zone.count(":") == 1}
    return counters or None


def write_profile(profile: dict[str, Any], path: str | Path) -> Path:
    """Write the profile as YAML (``.yaml``/``.yml``) or JSON (``.json``), atomically."""
    import json

    import yaml

    from edgefleet._fs import atomic_write

    p = Path(path)
    if p.suffix.lower() == ".json":
        text = json.dumps(profile, indent=2, default=list) + "\n"
    else:
        text = yaml.safe_dump(_plain(profile), sort_keys=False)
    atomic_write(p, text.encode())
    return p


def _plain(v: Any) -> Any:
    """Tuples (trip points) as lists, so safe_dump writes plain YAML."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
