"""Live accuracy from labelled samples: figures (pure functions), the report per release / device class /
region, and the rollout gate.

* :func:`wilson` — the Wilson score interval of a proportion (good at small n and near 0 or 1).
* :func:`newcombe` — the interval of a difference of two proportions (Newcombe's hybrid score method,
  built from the two Wilson intervals).
* :func:`expected_calibration_error` — ECE over equal-width confidence bins: the mean gap between the
  confidence a model states and the accuracy it gets, weighted by bin size.
* :func:`stratified_difference` — the interval of a difference of accuracies standardized over strata
  (regions): MOVER (Zou & Donner 2008) over the per-stratum Wilson intervals; with one stratum it is
  Newcombe's interval.
* :func:`accuracy_gate` — the rollout gate, in ``_gates``' style: it waits until the wave has
  ``min_labelled`` labelled samples; against a control group it is a non-inferiority test (the new release
  passes when the lower end of the 95 % interval of ``acc_new - acc_control`` is above ``-margin``, fails
  when the upper end is below it, and waits in between); without a control group it compares the Wilson
  interval with ``min_accuracy`` the same way.

  The comparison is made **region by region**: a wave and a control group seldom hold the regions in the
  same shares, and when one region's inputs have moved (the reason a retrained release exists) a pooled
  comparison measures where the devices are, not the release. The control's accuracy is standardized to
  the wave's regions (each region weighted by the wave's labelled samples there); a region of the wave
  where no control device has labels is compared with the previous releases' labelled answers of the
  wave's own devices there, before they switched (:func:`gate_counts`), and is said so in the detail.
  Those labels are all that region's control will ever have: when the interval the comparison tends to
  as the wave's labels keep coming still straddles ``-margin`` (the control's own few labels are too
  uncertain to decide either way), waiting could last forever, so the wave is judged against
  ``min_accuracy`` instead, and said so; without a floor the gate keeps waiting and says why.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import case, func, select

from edgefleet.server._db import Database
from edgefleet.server._gates import GateResult
from edgefleet.server._sample_models import SampleRow

__all__ = [
    "Z95",
    "accuracy_figures",
    "accuracy_gate",
    "accuracy_report",
    "expected_calibration_error",
    "gate_counts",
    "labelled_counts",
    "newcombe",
    "stratified_difference",
    "wilson",
]

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials; ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Interval of ``k1/n1 - k2/n2`` (Newcombe 1998, method 10)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


Counts = tuple[int, int]  # (labelled, correct)
Strata = Mapping[str | None, Counts]  # per region (None: samples without a region)


def _compared(new: Strata, control: Strata) -> list[str | None]:
    """The strata both sides have labelled samples in."""
    return [r for r, (n, _) in new.items() if n > 0 and control.get(r, (0, 0))[0] > 0]


def stratified_difference(
    new: Strata, control: Strata, z: float = Z95
) -> tuple[float, float, float, float, dict[str | None, float]]:
    """Interval of the wave-standardized difference ``sum_i w_i (p_new_i - p_control_i)`` over the strata
    both sides have labels in, ``w_i`` the wave's share of labelled samples in stratum ``i``.

    Built by MOVER (Zou & Donner 2008, "Construction of confidence limits about effect measures: a
    general approach", Stat Med 27:1693) from each proportion's Wilson interval; with one stratum it is
    exactly :func:`newcombe`. Returns ``(acc_new, acc_control, low, high, weights)``, the accuracies being
    the standardized ones; raises ``ValueError`` when no stratum has labels on both sides.
    """
    common = _compared(new, control)
    if not common:
        raise ValueError("no stratum has labelled samples on both sides")
    total = sum(new[r][0] for r in common)
    weights = {r: new[r][0] / total for r in common}
    p_new = p_ctl = lo_sq = hi_sq = 0.0
    for r in common:
        (n1, k1), (n2, k2), w = new[r], control[r], weights[r]
        p1, p2 = k1 / n1, k2 / n2
        l1, u1 = wilson(k1, n1, z)
        l2, u2 = wilson(k2, n2, z)
        p_new += w * p1
        p_ctl += w * p2
        lo_sq += w * w * ((p1 - l1) ** 2 + (u2 - p2) ** 2)
        hi_sq += w * w * ((u1 - p1) ** 2 + (p2 - l2) ** 2)
    d = p_new - p_ctl
    return p_new, p_ctl, d - math.sqrt(lo_sq), d + math.sqrt(hi_sq), weights


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float | None:
    """ECE over ``bins`` equal-width bins of confidence; None without samples."""
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if not len(c):
        return None
    idx = np.minimum((np.clip(c, 0, 1) * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.sum() / len(c) * abs(ok[m].mean() - c[m].mean())
    return float(ece)


def accuracy_figures(
    rows: Iterable[tuple[str | None, str, float | None]], *, bins: int = 10
) -> dict[str, Any]:
    """Accuracy, its Wilson interval, ECE and per-class precision/recall of ``(predicted, label, confidence)``."""
    rows = list(rows)
    n = len(rows)
    k = sum(1 for p, y, _ in rows if p == y)
    lo, hi = wilson(k, n)
    conf = [(c, p == y) for p, y, c in rows if c is not None]
    classes: dict[str, dict[str, Any]] = {}
    for name in sorted({y for _, y, _ in rows} | {p for p, _, _ in rows if p is not None}):
        tp = sum(1 for p, y, _ in rows if p == name and y == name)
        predicted = sum(1 for p, _, _ in rows if p == name)
        support = sum(1 for _, y, _ in rows if y == name)
        classes[name] = {
            "support": support,
            "predicted": predicted,
            "precision": tp / predicted if predicted else None,
            "precision_ci": list(wilson(tp, predicted)) if predicted else None,
            "recall": tp / support if support else None,
            "recall_ci": list(wilson(tp, support)) if support else None,
        }
    return {
        "labelled": n,
        "correct": k,
        "accuracy": k / n if n else None,
        "accuracy_ci": [lo, hi] if n else None,
        "ece": expected_calibration_error([c for c, _ in conf], [ok for _, ok in conf], bins)
        if conf
        else None,
        "classes": classes,
    }


_GROUP_COLUMNS = {
    "release": SampleRow.release,
    "device_class": SampleRow.device_class,
    "region": SampleRow.region,
}


def accuracy_report(
    db: Database, *, release: str | None = None, by: Sequence[str] = ("release",), bins: int = 10
) -> list[dict[str, Any]]:
    """Live accuracy of labelled samples grouped by ``by`` (``release`` always first), largest group first."""
    keys = ["release", *[b for b in by if b != "release"]]
    cols = [_GROUP_COLUMNS[k] for k in keys]
    q = select(*cols, SampleRow.predicted, SampleRow.label, SampleRow.confidence).where(
        SampleRow.label.is_not(None)
    )
    if release is not None:
        q = q.where(SampleRow.release == release)
    groups: dict[tuple, list[tuple[str | None, str, float | None]]] = {}
    with db.read() as s:
        for row in s.execute(q):
            groups.setdefault(tuple(row[: len(keys)]), []).append(tuple(row[len(keys) :]))
    out = [
        {**dict(zip(keys, g, strict=True)), **accuracy_figures(rows, bins=bins)} for g, rows in groups.items()
    ]
    return sorted(out, key=lambda d: (-d["labelled"], str(d["release"])))


def labelled_counts(
    s: Any, device_ids: Sequence[str], *, release: str | None = None, not_release: str | None = None
) -> dict[str | None, Counts]:
    """``{region: (labelled, correct)}`` of the samples of ``device_ids`` (of ``release``, or not of
    ``not_release``)."""
    if not device_ids:
        return {}
    correct = func.sum(case((SampleRow.predicted == SampleRow.label, 1), else_=0))
    q = (
        select(SampleRow.region, func.count(), correct)
        .where(SampleRow.label.is_not(None), SampleRow.device_id.in_(list(device_ids)))
        .group_by(SampleRow.region)
    )
    if release is not None:
        q = q.where(SampleRow.release == release)
    if not_release is not None:
        q = q.where(SampleRow.release != not_release)
    return {region: (int(n), int(k or 0)) for region, n, k in s.execute(q).all()}


def gate_counts(
    s: Any, wave_ids: Sequence[str], control_ids: Sequence[str], release: str
) -> tuple[dict[str | None, Counts], dict[str | None, Counts], set[str | None]]:
    """The live-accuracy gate's inputs: the wave's labelled counts on ``release`` per region, the control's
    on other releases per region, and the regions whose control comes from the wave's own devices before
    they switched (no control device has labels there)."""
    new = labelled_counts(s, wave_ids, release=release)
    control = dict(labelled_counts(s, control_ids, not_release=release))
    compared = set(_compared(new, control))
    missing = [r for r in new if r not in compared]
    historical: set[str | None] = set()
    if missing:
        before = labelled_counts(s, wave_ids, not_release=release)
        for r in missing:
            if before.get(r, (0, 0))[0] > 0:
                control[r] = before[r]
                historical.add(r)
    return new, control, historical


def _strata(x: Counts | Strata | None) -> dict[str | None, Counts]:
    if x is None:
        return {}
    if isinstance(x, tuple):
        return {None: x}
    return dict(x)


def _name(region: str | None) -> str:
    return region if region is not None else "(no region)"


def _region_order(region: str | None) -> tuple[bool, str]:
    """Regions by name, samples without a region last."""
    return region is None, region or ""


def accuracy_gate(
    new: Counts | Strata,
    control: Counts | Strata | None,
    *,
    min_labelled: int,
    margin: float,
    min_accuracy: float | None = None,
    historical: Collection[str | None] = (),
) -> GateResult:
    """The live-accuracy gate of a wave (see the module docstring); ``min_labelled`` 0 turns it off.

    Args:
        new: ``(labelled, correct)`` of the wave's samples on the new release, or those per region.
        control: the same of the control group (still on the previous release), or None.
        margin: the non-inferiority margin: how much lower the new accuracy may be.
        min_accuracy: the absolute floor used when the control group has fewer than ``min_labelled``
            labels in the wave's regions.
        historical: regions whose control counts are the wave's own devices' before they switched.
    """
    name = "live_accuracy"
    if min_labelled <= 0:
        return GateResult(name, "skipped", detail="min_labelled is 0 (gate off)")
    by_new, by_ctl = _strata(new), _strata(control)
    n = sum(c[0] for c in by_new.values())
    k = sum(c[1] for c in by_new.values())
    if n < min_labelled:
        return GateResult(
            name, "wait", k / n if n else None, detail=f"{n}/{min_labelled} labelled samples on the wave"
        )
    acc = k / n
    if sum(by_ctl[r][0] for r in _compared(by_new, by_ctl)) >= min_labelled:
        _, ref, lo, hi, weights = stratified_difference(by_new, by_ctl)
        detail = f"accuracy {acc:.3f} vs control {ref:.3f}, difference in [{lo:+.3f}, {hi:+.3f}] (95 %)"
        if len(by_new) > 1 or any(r is not None for r in by_new):
            parts = []
            for r in sorted(by_new, key=_region_order):
                (n1, k1), c2 = by_new[r], by_ctl.get(r)
                if r in weights and c2 is not None:
                    src = ", before the switch" if r in historical else ""
                    parts.append(f"{_name(r)} {k1 / n1:.3f} vs {c2[1] / c2[0]:.3f} ({n1} / {c2[0]}{src})")
                else:
                    parts.append(f"{_name(r)} {k1 / n1:.3f} ({n1}, no control there: not compared)")
            detail += f"; region by region, the control weighted as the wave: {'; '.join(parts)}"
        status = "pass" if lo > -margin else "fail" if hi < -margin else "wait"
        if status == "wait" and historical:
            lim_lo, lim_hi = _limit_interval(by_new, by_ctl, historical)
            if lim_lo <= -margin <= lim_hi:
                fixed = ", ".join(_name(r) for r in sorted(historical, key=_region_order))
                detail += (
                    f"; the control in {fixed} is the wave's own labels from before the switch and gets no "
                    f"more: however many labels the wave gets, the difference stays about "
                    f"[{lim_lo:+.3f}, {lim_hi:+.3f}], across the -{margin:.3f} margin"
                )
                if min_accuracy is None:
                    detail += "; give the gate a floor (min_accuracy) or decide the wave by hand"
                else:
                    status, floor_detail = _floor(k, n, min_accuracy)
                    detail += f"; judged against the floor: {floor_detail}"
                    return GateResult(name, status, acc, min_accuracy, ref, detail)
        return GateResult(name, status, acc, ref - margin, ref, detail)
    if min_accuracy is None:
        return GateResult(
            name, "skipped", acc, detail="no control group with enough labels and no min_accuracy"
        )
    status, detail = _floor(k, n, min_accuracy)
    return GateResult(name, status, acc, min_accuracy, None, detail)


def _floor(k: int, n: int, min_accuracy: float) -> tuple[str, str]:
    """The floor test: the Wilson interval of ``k`` right in ``n`` against ``min_accuracy``."""
    lo, hi = wilson(k, n)
    status = "pass" if lo >= min_accuracy else "fail" if hi < min_accuracy else "wait"
    return status, f"accuracy {k / n:.3f} in [{lo:.3f}, {hi:.3f}] (95 %) vs floor {min_accuracy:.3f}"


_MANY = 10**6  # labels per label seen: the limit of an interval as a side's labels keep coming


def _limit_interval(new: Strata, control: Strata, historical: Collection[str | None]) -> tuple[float, float]:
    """The interval the comparison tends to as labels keep coming: the wave's and the live control's
    counts grow (same accuracies), the historical regions' control counts stay as they are."""
    grown_new = {r: (n * _MANY, k * _MANY) for r, (n, k) in new.items()}
    grown_ctl = {r: c if r in historical else (c[0] * _MANY, c[1] * _MANY) for r, c in control.items()}
    _, _, lo, hi, _ = stratified_difference(grown_new, grown_ctl)
    return lo, hi
