"""Latency judged against the previous version *in the same moment*, so a busy CPU does not fail a good release.

A live p95 compared with a baseline measured minutes earlier mistakes load for slowness: on a busy 2-core
machine a good release's watch window saw 5.7x its baseline and was rolled back. Here each look times the
new and the previous model on the same golden inputs, interleaved in ABBA order (new, old, old, new, ...), so
both meet the same contention; the look's figure is the ratio of their medians. A release fails on latency
only when that ratio stays above the limit, by more than an absolute slack, for several looks in a row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["PairedLook", "latency_verdict", "paired_look"]


@dataclass(frozen=True)
class PairedLook:
    """One interleaved measurement: median milliseconds of the new and the previous model."""

    new_ms: float
    old_ms: float
    pairs: int

    @property
    def ratio(self) -> float:
        return self.new_ms / self.old_ms if self.old_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {
            "new_ms": round(self.new_ms, 4),
            "old_ms": round(self.old_ms, 4),
            "ratio": round(self.ratio, 3),
        }


def paired_look(
    run_new: Callable[[Any], Any],
    run_old: Callable[[Any], Any],
    new_rows: Sequence[Any],
    old_rows: Sequence[Any],
    *,
    pairs: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> PairedLook:
    """Time ``pairs`` calls of each model on golden rows, interleaved ABBA; return their medians."""
    if not new_rows or not old_rows:
        raise ValueError("paired_look needs at least one input row for each model")
    new_t: list[float] = []
    old_t: list[float] = []

    def timed(fn: Callable[[Any], Any], row: Any, into: list[float]) -> None:
        t0 = clock()
        fn(row)
        into.append((clock() - t0) * 1000.0)

    for i in range(max(1, pairs)):
        first, second = ((run_new, new_rows, new_t), (run_old, old_rows, old_t))
        if i % 2:  # ABBA: the order alternates so a trend within the look cancels out
            first, second = second, first
        for fn, rows, into in (first, second):
            timed(fn, rows[i % len(rows)], into)
    return PairedLook(float(np.median(new_t)), float(np.median(old_t)), len(new_t))


def latency_verdict(
    looks: Sequence[PairedLook],
    *,
    max_ratio: float,
    slack_ms: float,
    persistence: int,
    done: bool = False,
) -> tuple[Literal["fail", "pass", "wait"], str]:
    """Judge a watch window's looks: ``fail`` only when the last ``persistence`` looks all were too slow.

    A look is too slow when the new model's median exceeds ``max_ratio`` times the previous one's *and*
    exceeds it by more than ``slack_ms`` (a 40 µs model's ratio is scheduler noise). Before the window is
    ``done`` and without enough looks the answer is ``wait``; a finished window that never failed passes.
    """
    slow = [lk.ratio > max_ratio and lk.new_ms - lk.old_ms > slack_ms for lk in looks]
    n = max(1, persistence)
    if len(slow) >= n and all(slow[-n:]):
        last = looks[-1]
        return "fail", (
            f"latency {last.ratio:.2f}x the previous version in {n} looks in a row (> {max_ratio}; "
            f"{last.new_ms:.2f} ms vs {last.old_ms:.2f} ms, measured side by side)"
        )
    if done:
        if not looks:
            return "pass", "no latency looks were taken"
        med = float(np.median([lk.ratio for lk in looks]))
        return "pass", f"median latency ratio {med:.2f}x over {len(looks)} looks"
    return "wait", f"{sum(slow[-n:])}/{n} recent looks slow"
