"""The health gate a staged bundle must pass before activation.

On the ``Bundle`` the model store verified when it installed it (its files are not hashed again), in a
fresh onnxruntime session (not the one serving traffic): run the golden set (outputs within the bundle's
tolerance), time the golden inputs one by one against the latency budget,
measure the memory the session takes against the memory budget, and, when the assignment asks for it,
a shadow run on a sample of recent live requests compared with what the active model answered.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.errors import EdgefleetError, GoldenMismatchError, HealthCheckError
from edgefleet.protocol import GateThresholds

if TYPE_CHECKING:
    from edgefleet.bundle import Bundle

__all__ = ["check_health", "top1", "agreement"]

log = logging.getLogger(__name__)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def top1(outputs: dict[str, np.ndarray], output: str | None = None) -> np.ndarray | None:
    """Predicted class per row: argmax of the score output (or the integer label output)."""
    if output and output in outputs:
        arr = np.asarray(outputs[output])
    else:
        floats = [
            np.asarray(v) for v in outputs.values() if np.asarray(v).dtype.kind == "f" and np.ndim(v) == 2
        ]
        ints = [
            np.asarray(v) for v in outputs.values() if np.asarray(v).dtype.kind in "iu" and np.ndim(v) == 1
        ]
        arr = floats[0] if floats else (ints[0] if ints else None)
        if arr is None:
            return None
    return arr.argmax(axis=1) if arr.ndim == 2 else arr.reshape(-1)


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray], output: str | None = None) -> float | None:
    ta, tb = top1(a, output), top1(b, output)
    if ta is None or tb is None or ta.shape != tb.shape or ta.size == 0:
        return None
    return float((ta == tb).mean())


def check_health(b: Bundle, gates: GateThresholds, *, host: Any = None, config: Any = None) -> dict[str, Any]:
    """Run the health gate on a verified, unpacked bundle; return its figures.

    Raises:
        HealthCheckError: with the reason (golden mismatch, too slow, too big, shadow disagreement...).
    """
    golden_required = gates.require_golden and (config is None or config.golden_required)
    runs = getattr(config, "latency_runs", 30)
    report: dict[str, Any] = {}
    gc.collect()
    rss0 = _rss_mb()
    m = b.manifest
    key = m.key
    if m.golden is None:
        if golden_required:
            raise HealthCheckError(
                f"bundle {key} has no golden set and the gate requires one",
                hint="rebuild the bundle with golden inputs",
            )
        report["golden_pass"] = None
    else:
        try:
            vr = b.verify(files=False)  # hashed once, when the store installed it
        except GoldenMismatchError as e:
            raise HealthCheckError(
                f"golden set failed for {key}: {e.message}",
                hint="the model does not reproduce its golden outputs here; not activated",
            ) from e
        except EdgefleetError as e:
            raise HealthCheckError(f"{key} cannot run its golden set: {e.message}", hint=e.hint) from e
        report["golden_pass"] = True
        report["golden_count"] = vr.golden_count

    # Latency and memory in a fresh session, sample by sample (what a single request costs).
    try:
        runner = b.runner()
        raw = b.golden.inputs_raw if m.golden is not None else None
        feeds = b.model_inputs(raw) if raw is not None else _zero_feeds(runner)
        n = len(next(iter(feeds.values())))
        rows = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]
        runner.run(rows[0])  # warm-up
        times = []
        for i in range(max(runs, 1)):
            t0 = time.perf_counter()
            runner.run(rows[i % n])
            times.append((time.perf_counter() - t0) * 1000)
    except EdgefleetError as e:
        raise HealthCheckError(f"{key} failed to run: {e.message}", hint=e.hint) from e
    p95 = float(np.percentile(times, 95))
    report["latency_p95_ms"] = round(p95, 4)
    report["latency_p50_ms"] = round(float(np.percentile(times, 50)), 4)
    mem = max(0.0, _rss_mb() - rss0)
    report["memory_mb"] = round(mem, 2)
    budget = gates.latency_budget_ms or m.budgets.latency_p95_ms
    report["latency_budget_ms"] = budget
    if budget is not None and p95 > budget:
        raise HealthCheckError(
            f"{key} takes {p95:.2f} ms (p95 on the golden inputs), over its budget of {budget:.2f} ms",
            hint="this device is too slow for this build; assign a lighter variant",
            latency_p95_ms=p95,
        )
    mem_budget = gates.memory_budget_mb or m.budgets.ram_mb
    report["memory_budget_mb"] = mem_budget
    if mem_budget is not None and mem > mem_budget:
        raise HealthCheckError(
            f"{key} needs {mem:.1f} MiB, over its memory budget of {mem_budget:.1f} MiB",
            hint="assign a smaller variant to this device class",
            memory_mb=mem,
        )

    # Shadow run on live traffic the active model answered.
    if gates.shadow is not None and host is not None and hasattr(host, "shadow_samples"):
        samples = host.shadow_samples()
        report["shadow_samples"] = len(samples)
        if len(samples) >= max(1, gates.shadow.min_samples):
            agree = []
            for raw_row, active_out in samples:
                try:
                    out = runner.run(b.model_inputs(raw_row))
                except EdgefleetError as e:
                    raise HealthCheckError(
                        f"{key} failed on live traffic in the shadow run: {e.message}"
                    ) from e
                a = agreement(out, active_out, m.postprocess.output)
                if a is not None:
                    agree.append(a)
            score = float(np.mean(agree)) if agree else None
            report["shadow_agreement"] = score
            if score is not None and score < gates.shadow.min_agreement:
                raise HealthCheckError(
                    f"{key} agrees with the active model on {score:.0%} of {len(samples)} live requests "
                    f"(needs {gates.shadow.min_agreement:.0%})",
                    hint="the new model answers live traffic differently; check it before assigning it",
                    shadow_agreement=score,
                )
        else:
            report["shadow_agreement"] = None
            log.info("shadow run skipped: %d live samples, %d needed", len(samples), gates.shadow.min_samples)
    del runner
    return report


def _zero_feeds(runner: Any) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in runner.inputs:
        shape = [1 if isinstance(d, str) or d is None or d <= 0 else d for d in spec.shape]
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds
