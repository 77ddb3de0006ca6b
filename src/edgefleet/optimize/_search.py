"""The order and the clock of the variant search.

Candidates are tried in order of expected value for the model at hand (what usually wins on a conv-heavy or
a MatMul-heavy graph first; variants that rarely pay off on a CPU last). With a time budget, every
candidate is measured completely as soon as it is built, so the search can stop at any point with the best
so far; before each candidate it checks that the time spent on the ones before leaves room for another,
and the ones it does not reach are reported as skipped, with the time that was left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._data import Dataset
from edgefleet.optimize._graph import GraphFacts
from edgefleet.optimize._quality import Task, measure_quality
from edgefleet.optimize._report import VariantResult
from edgefleet.optimize._spec import Variant

__all__ = [
    "EXCLUDABLE",
    "Notify",
    "Search",
    "clear_loss",
    "expected_order",
    "subset_drop",
    "subset_size",
]

log = logging.getLogger(__name__)

Notify = Callable[[str], None]

# lower = tried earlier
_CONV_FIRST = {
    "static-int8-pc-minmax": 0,
    "static-int8-pt-minmax": 1,
    "static-int8-pc-percentile": 2,
    "static-int8-pc-entropy": 3,
    "dynamic-int8": 4,
    "fp16": 5,
}
_MATMUL_FIRST = {
    "dynamic-int8-pc": 0,
    "dynamic-int8": 1,
    "int4": 2,
    "static-int8-pc-minmax": 3,
    "static-int8-pt-minmax": 4,
    "fp16": 5,
}


def expected_order(wanted: list[Variant], facts: GraphFacts, settings: OptimizeConfig) -> list[Variant]:
    """fp32 first, then the candidates most likely to win on this graph; unstructured pruning last (dense
    kernels gain nothing from zeros) and fp16 late (most CPUs compute it through casts)."""
    table = _MATMUL_FIRST if facts.matmul_share >= settings.matmul_heavy_share else _CONV_FIRST

    def rank(iv: tuple[int, Variant]) -> tuple[int, int]:
        i, v = iv
        if v.kind == "fp32":
            return (-1, i)
        if v.kind == "pruned":
            return (100, i)
        if v.name in table:
            return (table[v.name], i)
        return (50 + (10 if v.kind == "fp16" else 0), i)

    return [v for _, v in sorted(enumerate(wanted), key=rank)]


@dataclass
class Search:
    """Hands out candidates while the time budget allows; remembers what each cost and what it skipped."""

    candidates: list[Variant]
    budget_s: float | None
    notify: Notify | None = None
    clock: Callable[[], float] = time.monotonic
    started: float | None = None
    reserve_share: float = 0.1  # kept back for the final interleaved checks and the report
    costs: list[float] = field(default_factory=list)
    skipped: list[VariantResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    @property
    def timed(self) -> bool:
        return self.budget_s is not None

    def elapsed(self) -> float:
        return self.clock() - (self.started or 0.0)

    def left(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - self.elapsed()

    def say(self, text: str) -> None:
        if self.notify is not None:
            self.notify(f"[{self.elapsed():7.1f} s] {text}")

    def expected_cost(self) -> float:
        """What the next candidate should cost: the dearest of the last three quantized ones (fp32's
        build and measurement until one is known, times 1.5: quantizers calibrate, fp32 does not)."""
        if len(self.costs) > 1:
            return max(self.costs[1:][-3:])
        return 1.5 * self.costs[0] if self.costs else 0.0

    def __iter__(self) -> Iterator[Variant]:
        for i, v in enumerate(self.candidates):
            if v.kind != "fp32" and self.timed:
                reserve = self.reserve_share * (self.budget_s or 0.0)
                need = self.expected_cost()
                if self.left() - reserve < need:
                    for rest in self.candidates[i:]:
                        self.skipped.append(
                            VariantResult(
                                name=rest.name,
                                variant=rest,
                                status="skipped",
                                error=f"time budget: not tried ({max(0.0, self.left()):.0f} s left, about "
                                f"{need:.0f} s needed per candidate)",
                            )
                        )
                    self.say(
                        f"time budget: stopping with the best so far; skipped {', '.join(r.name for r in self.skipped)}"
                    )
                    return
            t0 = self.clock()
            self.say(f"{v.name}: building ({i + 1}/{len(self.candidates)})")
            yield v
            self.costs.append(self.clock() - t0)

    def bench_settings(self, settings: OptimizeConfig, per_sample_s: float) -> OptimizeConfig:
        """Measurement settings that fit the budget: a share of it per candidate, spread over the timed runs."""
        if not self.timed:
            return settings
        share = 0.35 * (self.budget_s or 0.0) / max(1, len(self.candidates))
        per_run = max(per_sample_s, 1e-5) * 1.5
        runs = int(min(settings.runs, max(20, share / 2 / per_run)))
        thr_samples = share / 2 / per_run
        batches = tuple(b for b in settings.throughput_batches if b <= max(1, thr_samples / 3))
        return settings.model_copy(
            update={
                "runs": runs,
                "warmup_runs": min(settings.warmup_runs, max(2, runs // 10)),
                "throughput_batches": batches or (1,),
                # the interleaved check plays up to 3x its rounds of both models: keep it within the share
                "interleave_runs": int(
                    min(settings.interleave_runs, max(3, share / (6 * settings.interleave_rounds * per_run)))
                ),
                "throughput_runs": int(
                    min(settings.throughput_runs, max(3, thr_samples / max(1, sum(batches or (1,)))))
                ),
            }
        )

    def summary(self) -> dict[str, object]:
        """For the report: the budget, the time taken, the order tried and what was skipped."""
        return {
            "time_budget_s": self.budget_s,
            "elapsed_s": round(self.elapsed(), 1),
            "order": [v.name for v in self.candidates],
            "skipped": [r.name for r in self.skipped],
        }


EXCLUDABLE = ("static-int8", "dynamic-int8", "int4")


def subset_size(n: int, timed: bool) -> int:
    """Samples a candidate is judged on before the rest (0: no subset step). Only a timed search uses one,
    and only where the evaluation set is at least four times larger."""
    k = max(16, n // 8)
    return k if timed and n >= 4 * k else 0


def clear_loss(max_drop: float) -> float:
    """A drop on the subset beyond which the full evaluation could not plausibly bring it within budget."""
    return max(3.0 * max_drop, max_drop + 5.0)


def _head(outs: dict[str, list[np.ndarray]], n: int) -> dict[str, list[np.ndarray]]:
    """The first ``n`` samples of per-call outputs (calls may be batched)."""
    out = {}
    for k, chunks in outs.items():
        got, left = [], n
        for c in chunks:
            if left <= 0:
                break
            got.append(c[:left] if c.ndim and c.shape[0] > 1 else c)
            left -= c.shape[0] if c.ndim and c.shape[0] > 1 else 1
        out[k] = got
    return out


def subset_drop(
    task: Task, ref: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]], evald: Dataset, n: int
) -> tuple[float, Any] | None:
    """(fp32's score, the candidate's quality) on the first ``n`` samples; None where the outputs cannot be
    lined up (then the candidate is simply evaluated in full)."""
    labels = None if evald.labels is None else evald.labels[:n]
    try:
        head = _head(ref, n)
        return measure_quality(task, head, head, labels).score, measure_quality(task, head, got, labels)
    except Exception:  # noqa: BLE001 - the subset step is a shortcut, never a verdict of its own
        log.info("subset evaluation could not be lined up", exc_info=True)
        return None
