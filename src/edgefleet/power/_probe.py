"""Device probe: what this machine is (arch, cores, RAM, disk, ISA flags, onnxruntime providers)."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from edgefleet.protocol import HardwareProfile

__all__ = ["probe", "cpu_flags", "device_class"]

# Flags a model build may require; the full /proc/cpuinfo list is long and mostly irrelevant.
_INTERESTING = {
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "asimddp",
    "fphp",
    "asimdhp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """ISA flags from /proc/cpuinfo (x86 ``flags``, ARM ``Features``), filtered to the ones models use."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return sorted(found & _INTERESTING)


def device_class(arch: str, providers: list[str]) -> str:
    """A coarse hardware class a rollout can match on: ``cuda``, ``arm64``, ``armv7`` or ``cpu``."""
    if "CUDAExecutionProvider" in providers or "TensorrtExecutionProvider" in providers:
        return "cuda"
    if arch in ("aarch64", "arm64"):
        return "arm64"
    if arch.startswith("arm"):
        return "armv7"
    return "cpu"


def probe(
    disk_path: str | Path = "/",
    *,
    device_class_override: str | None = None,
    tags: dict[str, str] | None = None,
) -> HardwareProfile:
    """Describe this machine as a :class:`~edgefleet.protocol.HardwareProfile`.

    Args:
        disk_path: the directory whose filesystem's free space is reported (the agent's state dir).
        device_class_override: report this device class instead of the detected one.
        tags: free-form tags a rollout selector can match (region, site, ...).
    """
    arch = platform.machine() or "unknown"
    try:
        import psutil

        ram_mb = int(psutil.virtual_memory().total / 2**20)
    except ImportError:  # pragma: no cover - psutil is in the agent extra
        ram_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    p = Path(disk_path)
    while not p.exists() and p != p.parent:
        p = p.parent
    disk_free_mb = int(shutil.disk_usage(p).free / 2**20)
    try:
        import onnxruntime as ort

        ort_version: str | None = ort.__version__
        providers = list(ort.get_available_providers())
    except ImportError:  # pragma: no cover
        ort_version, providers = None, []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return HardwareProfile(
        arch=arch,
        cores=max(1, cores),
        ram_mb=ram_mb,
        disk_free_mb=disk_free_mb,
        isa_flags=cpu_flags(),
        onnxruntime_version=ort_version,
        providers=providers or ["CPUExecutionProvider"],
        device_class=device_class_override or device_class(arch, providers),
        tags=dict(tags or {}),
    )
