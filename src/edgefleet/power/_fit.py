"""Will this model fit that device? Memory and latency predicted from a measurement here, scaled.

The model is measured on this machine (p50 latency at the device's thread count, and the resident memory
its session adds, in a fresh process); this machine's compute score is measured in the same run. The
device's p50 is predicted as ``p50 here x score here / score there``, measured here at the
device's threads capped at its cores (a cgroup CPU quota is reported, see predict_p50). Memory is predicted as
measured: a session's RSS depends on the model and the runtime, not the clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import InputError

__all__ = [
    "FitReport",
    "energy_per_inference",
    "fit_model",
    "fit_threads",
    "power_figure",
    "predict_p50",
    "usable_cores",
]


@dataclass
class FitReport:
    """The prediction for one model on one device profile, with the verdict and its reasons."""

    model: str
    profile: str
    threads: int
    verdict: str  # fits | does not fit | unknown
    reasons: list[str] = field(default_factory=list)
    measured_p50_ms: float = 0.0  # here
    predicted_p50_ms: float | None = None
    predicted_rss_mb: float | None = None
    score_here: float = 0.0
    score_device: float | None = None
    latency_budget_ms: float | None = None
    ram_limit_mb: float | None = None
    energy_mj: float | None = None  # per inference on the device
    energy_method: str | None = None  # "rapl" (package power measured by the probe) or "estimate"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def usable_cores(cores: int, device: dict[str, Any] | None) -> float:
    """Cores a process may use: the profile's cores, capped by its cgroup CPU quota if it has one."""
    quota = ((device or {}).get("cgroup") or {}).get("cpu_quota_cores")
    return min(float(cores), float(quota)) if quota else float(cores)


def predict_p50(p50_here_ms: float, score_here: float, profile: Any) -> float:
    """The device's p50 from ours, measured at the threads the device can run (``fit_threads``): ours x
    (our compute score / the device's). A cgroup CPU quota is left out on purpose: CFS lets a process run at
    full speed for its quota in every 100 ms period, so a request much shorter than that is not slowed at
    the median (its throughput and tail are; the reasons say so)."""
    return p50_here_ms * score_here / profile.compute_score


def fit_threads(threads: int, profile: Any) -> int:
    """Threads to measure with here: the device's threads, but no more than it has cores (more threads
    than cores buys nothing on a small model: they share the cores)."""
    return max(1, min(int(threads), int(profile.cores)))


@contextlib.contextmanager
def _resolved(path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(model file, budgets from the manifest) for a bundle (directory or archive) or a model file."""
    if not path.exists():
        raise InputError(
            f"{path} does not exist", hint="pass a bundle (directory or archive) or a model file"
        )
    if path.is_file() and path.suffix.lower() in (".onnx", ".tflite"):
        yield path, {"name": path.name}
        return
    from edgefleet.bundle import Bundle

    with Bundle.from_dir(path) if path.is_dir() else Bundle.open(path) as b:
        man = b.manifest
        yield (
            b.model_path,
            {
                "latency_p95_ms": man.budgets.latency_p95_ms,
                "ram_mb": man.budgets.ram_mb,
                "name": f"{man.name} {man.version} ({man.variant})",
            },
        )


def fit_model(
    model_or_bundle: str | Path,
    profile: Any,
    *,
    threads: int = 1,
    runs: int = 200,
    measure_memory: bool = True,
) -> FitReport:
    """Predict ``model_or_bundle``'s p50 latency and memory on ``profile`` (an optimizer ``DeviceProfile``
    with ``compute_score``, as ``edgefleet device probe`` writes), from a measurement here."""
    with _resolved(Path(model_or_bundle)) as (model, info):
        return _fit(model, info, profile, threads=threads, runs=runs, measure_memory=measure_memory)


def _fit(
    model: Path, info: dict[str, Any], profile: Any, *, threads: int, runs: int, measure_memory: bool
) -> FitReport:
    from edgefleet.optimize import DeviceProfile, benchmark
    from edgefleet.power._profile import compute_score

    measured_threads = fit_threads(threads, profile)
    here = DeviceProfile(name="here", cores=measured_threads, execution_providers=["CPUExecutionProvider"])
    before = compute_score(threads=1, seconds=0.3)["score"]
    res = benchmark(model, here, runs=runs, warmup=10, batch_sizes=(1,), measure_memory=measure_memory)
    after = compute_score(threads=1, seconds=0.3)["score"]
    score_here = (before + after) / 2  # either side of the model's runs: load drift hits both
    rep = FitReport(
        model=info["name"],
        profile=profile.name,
        threads=threads,
        verdict="unknown",
        measured_p50_ms=res.latency.p50_ms,
        predicted_rss_mb=res.peak_rss_mb,
        score_here=score_here,
        score_device=profile.compute_score,
    )
    rep.latency_budget_ms = profile.latency_budget_ms or info.get("latency_p95_ms")
    cg_mem = ((profile.device or {}).get("cgroup") or {}).get("memory_max_bytes")
    limits = [x for x in (profile.ram_budget_mb, info.get("ram_mb"), cg_mem and cg_mem / 2**20) if x]
    rep.ram_limit_mb = min(limits) if limits else profile.ram_mb
    if profile.compute_score is None:
        rep.reasons.append("the profile has no compute_score: run `edgefleet device probe` on the device")
    else:
        ratio = score_here / profile.compute_score
        rep.predicted_p50_ms = predict_p50(res.latency.p50_ms, score_here, profile)
        rep.reasons.append(
            f"p50 {res.latency.p50_ms:.3f} ms here at {measured_threads} thread(s) x {ratio:.2f} (compute score "
            f"{score_here:.1f} here, {profile.compute_score:.1f} there)"
            + (
                f"; {threads} threads on {profile.cores} core(s) run as {measured_threads}"
                if measured_threads < threads
                else ""
            )
        )
        _energy(rep, profile)
        quota = usable_cores(profile.cores, profile.device)
        if quota < min(float(threads), float(profile.cores)):
            rep.reasons.append(
                f"cgroup CPU quota {quota:g} cores: throughput at most {quota:g}/{threads} of a free device's "
                "and p95 stalls up to the CFS period; the p50 of short requests is not scaled"
            )
    verdicts = []
    if rep.predicted_p50_ms is not None and rep.latency_budget_ms is not None:
        ok = rep.predicted_p50_ms <= rep.latency_budget_ms
        verdicts.append(ok)
        rep.reasons.append(
            f"predicted p50 {rep.predicted_p50_ms:.2f} ms {'within' if ok else 'over'} the "
            f"{rep.latency_budget_ms:g} ms budget"
        )
    if rep.predicted_rss_mb is not None and rep.ram_limit_mb is not None:
        ok = rep.predicted_rss_mb <= rep.ram_limit_mb
        verdicts.append(ok)
        rep.reasons.append(
            f"session memory {rep.predicted_rss_mb:.1f} MiB {'within' if ok else 'over'} "
            f"{rep.ram_limit_mb:g} MiB"
        )
    elif res.rss_note and measure_memory:
        rep.reasons.append(f"memory not measured: {res.rss_note}")
    if verdicts:
        rep.verdict = "fits" if all(verdicts) else "does not fit"
    elif rep.predicted_p50_ms is not None:
        rep.reasons.append(
            "no latency or memory budget to judge against (set latency_budget_ms in the profile)"
        )
    return rep


def power_figure(device: dict[str, Any] | None) -> tuple[float, str] | None:
    """(watts, method) of a profile's ``device`` section: the package power RAPL measured around the probe's
    micro-benchmark (``compute.rapl_watts``, method ``rapl``), else ``cpu_watts`` (a per-profile power figure
    the operator writes, method ``estimate``); None when the profile has neither."""
    dev = device or {}
    rapl = (dev.get("compute") or {}).get("rapl_watts")
    if rapl:
        return float(rapl), "rapl"
    watts = dev.get("cpu_watts")
    return (float(watts), "estimate") if watts else None


def energy_per_inference(p50_ms: float | None, profile: Any) -> tuple[float, str, float] | None:
    """(mJ, method, watts) for one inference of ``p50_ms`` on ``profile`` (a ``DeviceProfile`` or its
    ``device`` mapping): p50 x the profile's power figure (:func:`power_figure`). None when either is
    missing. The one formula ``device fit``, the optimizer's table and the recipe's stage table use."""
    device = profile if isinstance(profile, dict) or profile is None else getattr(profile, "device", None)
    fig = power_figure(device)
    if fig is None or p50_ms is None:
        return None
    watts, method = fig
    return p50_ms * watts, method, watts  # ms x W = mJ


def _energy(rep: FitReport, profile: Any) -> None:
    """Energy per inference on the device: the predicted p50 x the profile's power figure."""
    e = energy_per_inference(rep.predicted_p50_ms, profile)
    if e is None:
        return
    rep.energy_mj, rep.energy_method, watts = e
    what = (
        "package power measured by RAPL during the probe"
        if rep.energy_method == "rapl"
        else "device.cpu_watts (estimate)"
    )
    rep.reasons.append(f"energy {rep.energy_mj:.3f} mJ per inference: predicted p50 x {watts:g} W, {what}")
