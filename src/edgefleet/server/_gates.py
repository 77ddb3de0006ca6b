"""Rollout gates: the verdict of a wave from plain figures, no database involved.

The rollout engine (``_rollouts.py``) gathers the figures of a wave (devices installed, failed and
reporting; the health summed over the wave and over the reference: the control group still on the previous
release, or the baseline taken when the wave opened) and asks these functions for the gates' verdicts.
Each gate says ``pass``, ``fail``, ``wait`` (not enough evidence yet) or ``skipped`` (nothing to judge).

The ratio gates (p95 latency, mean confidence) compare the wave with the control group over the same minutes
when the engine has both groups' recent heartbeats (``same_minutes``): a machine busy for everyone slows
both alike. The latency gate also ignores a p95 within ``latency_floor_ms`` of the reference,
and fails only once its look has been over the limit in ``latency_looks`` consecutive looks
(:func:`persist`), so one noisy look does not roll a release back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from edgefleet.server._schemas import RolloutGates

__all__ = [
    "GateResult",
    "gate_waits",
    "Health",
    "error_rate_verdict",
    "failure_reason",
    "health_gates",
    "install_failure_gate",
    "judge",
    "persist",
    "pick_reference",
    "ratio",
    "wave_verdict",
]


class Health(Protocol):
    """The figures of a group of devices the gates read (``_aggregate.Aggregate`` has them)."""

    requests: int
    errors: int

    @property
    def error_rate(self) -> float | None: ...
    @property
    def latency_p95_ms(self) -> float | None: ...
    @property
    def mean_confidence(self) -> float | None: ...
    @property
    def golden_pass_rate(self) -> float | None: ...
    @property
    def shadow_agreement(self) -> float | None: ...
    @property
    def drift_score(self) -> float | None: ...


H = TypeVar("H", bound=Health)


@dataclass
class GateResult:
    """One gate's verdict and the figures behind it."""

    name: str
    status: str  # pass | fail | wait | skipped
    value: float | None = None
    threshold: float | None = None
    reference: float | None = None
    detail: str = ""


def error_rate_verdict(errors: int, requests: int, limit: float, alpha: float) -> tuple[str, float]:
    """The error-rate gate: ``("pass" | "wait" | "fail", p-value)``.

    Within the limit it passes. Above it, a one-sided binomial test of "the true error rate is at most
    ``limit``" decides: it fails once p < ``alpha`` (too many errors to be a release within the limit
    having bad luck); until then it waits and the wave keeps collecting requests: a good release's
    estimate falls back under the limit, a bad one's p-value keeps shrinking.
    """
    if requests <= 0 or errors / requests <= limit:
        return "pass", 1.0
    from scipy.stats import binomtest

    p = float(binomtest(int(errors), int(requests), limit, alternative="greater").pvalue)
    return ("fail" if p < alpha else "wait"), p


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is unknown or ``b`` is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def pick_reference(control: H, baseline: H | None, min_control_requests: int) -> tuple[H | None, str]:
    """What the wave is compared with: the control group when it served enough, else the baseline."""
    if control.requests >= min_control_requests and control.requests > 0:
        return control, "control"
    if baseline is not None and baseline.requests >= max(1, min_control_requests):
        return baseline, "baseline"
    return None, "none"


def install_failure_gate(
    *, installed: int, failed: int, wave: int, min_devices: int, limit: float
) -> GateResult:
    """Installs failed among those finished; judged once ``min_devices`` finished, or early on a clear excess."""
    attempted = installed + failed
    if attempted >= min_devices or (failed and failed > limit * max(wave, min_devices)):
        rate = failed / attempted
        return GateResult(
            "install_failure_rate",
            "fail" if rate > limit else "pass",
            rate,
            limit,
            detail=f"{failed} of {attempted} installs failed",
        )
    return GateResult(
        "install_failure_rate", "wait", detail=f"{attempted} of {min_devices} installs finished"
    )


def judge(
    name: str,
    value: float | None,
    threshold: float | None,
    ok: Callable[[float, float], bool | tuple[str, str]],
    *,
    judged: bool,
    reference: float | None = None,
    why: str = "",
) -> GateResult:
    """One health gate: waits until the wave is ``judged``, is skipped without figures, else asks ``ok``.

    ``ok(value, threshold)`` says pass (True) or fail (False), or returns its own ``(status, detail)``.
    """
    if not judged:
        return GateResult(name, "wait", value, threshold, reference, "not enough data yet")
    if value is None or threshold is None:
        return GateResult(name, "skipped", value, threshold, reference, why)
    said = ok(value, threshold)
    status, detail = said if isinstance(said, tuple) else ("pass" if said else "fail", "")
    return GateResult(name, status, value, threshold, reference, detail)


def health_gates(
    new: Health,
    ref: Health | None,
    g: RolloutGates,
    *,
    judged: bool,
    same_minutes: tuple[Health, Health] | None = None,
) -> list[GateResult]:
    """The ML gates of a wave's health ``new`` against the reference ``ref`` (None: absolute limits).

    ``same_minutes``: the wave's and the control group's figures over the same recent minutes; where both
    have a p95 (a mean confidence) the ratio gate compares those instead of ``new`` with ``ref``. This is
    one look: the engine passes the latency gate's verdict through :func:`persist`.
    """
    if ref is not None and ref.error_rate is not None:
        er_limit = min(1.0, ref.error_rate + g.max_error_rate_increase)
        er_ref: float | None = ref.error_rate
    else:
        er_limit, er_ref = g.max_error_rate, None

    def error_rate_ok(_value: float, limit: float) -> tuple[str, str]:
        verdict, p = error_rate_verdict(new.errors, new.requests, limit, g.error_rate_alpha)
        if verdict == "pass":
            return verdict, ""
        return verdict, (
            f"{new.errors} errors in {new.requests} requests is above {limit:.4f}; "
            f"one-sided binomial p={p:.3g} {'<' if verdict == 'fail' else '>='} alpha {g.error_rate_alpha}"
        )

    lat_new, lat_ref = _pair("latency_p95_ms", new, ref, same_minutes)
    conf_new, conf_ref = _pair("mean_confidence", new, ref, same_minutes)
    lat = ratio(lat_new, lat_ref)
    conf = ratio(conf_new, conf_ref)
    floor = g.latency_floor_ms

    def latency_ok(v: float, t: float) -> bool | tuple[str, str]:
        if v <= t:
            return True
        apart = abs((lat_new or 0.0) - (lat_ref or 0.0))  # both are known when their ratio is
        if apart < floor:
            return "pass", f"p95 within {floor:g} ms of the reference ({apart:.3g} ms apart)"
        return False

    ref_drift = (ref.drift_score if ref is not None else None) or 0.0
    return [
        judge(
            "error_rate",
            new.error_rate,
            er_limit,
            error_rate_ok,
            judged=judged,
            reference=er_ref,
            why="no requests",
        ),
        judge(
            "latency_p95_ratio",
            lat,
            g.max_latency_p95_ratio if lat is not None else None,
            latency_ok,
            judged=judged,
            reference=lat_ref,
            why="no latency reported by the wave or the reference",
        ),
        judge(
            "confidence_ratio",
            conf,
            g.min_confidence_ratio if conf is not None else None,
            lambda v, t: v >= t,
            judged=judged,
            reference=conf_ref,
            why="no confidence reported by the wave or the reference",
        ),
        judge(
            "golden_pass_rate",
            new.golden_pass_rate,
            g.min_golden_pass_rate,
            lambda v, t: v >= t - 1e-12,
            judged=judged,
            why="no golden-set results reported",
        ),
        judge(
            "shadow_agreement",
            new.shadow_agreement,
            g.min_shadow_agreement,
            lambda v, t: v >= t,
            judged=judged,
            why="no shadow runs reported",
        ),
        judge(
            "drift_score",
            new.drift_score,
            ref_drift + g.max_drift_increase,
            lambda v, t: v <= t,
            judged=judged,
            reference=ref_drift,
            why="no drift scores reported",
        ),
    ]


def _pair(
    figure: str, new: Health, ref: Health | None, same_minutes: tuple[Health, Health] | None
) -> tuple[float | None, float | None]:
    """A figure of the wave and of its reference: over the same minutes where both have it."""
    if same_minutes is not None:
        a, b = (getattr(x, figure) for x in same_minutes)
        if a is not None and b is not None:
            return a, b
    return getattr(new, figure), (getattr(ref, figure) if ref is not None else None)


def persist(gate: GateResult, *, over: int, look: bool, looks: int) -> tuple[GateResult, int]:
    """A gate that fails only when over its limit in ``looks`` consecutive looks: ``(verdict, over)``.

    ``over`` counts the consecutive looks over the limit so far; ``look`` says whether this evaluation is
    a new look (the engine spaces them so that each sees fresh heartbeats). A look within the limit resets
    the count. Until the count reaches ``looks`` a gate over its limit, or one with a count, waits.
    A gate not judged (``wait``, ``skipped``) takes no look.
    """
    if gate.status not in ("pass", "fail"):
        return gate, over
    bad = gate.status == "fail"
    if look:
        over = over + 1 if bad else 0
    if over >= looks:
        return replace(gate, status="fail", detail=f"over the limit in {over} consecutive looks"), over
    if bad or over:
        now = "over the limit" if bad else "within the limit"
        return replace(
            gate,
            status="wait",
            detail=f"{now} now; over it in {over} of {looks} consecutive looks",
        ), over
    return gate, over


def gate_waits(gates: Sequence[GateResult]) -> list[str]:
    """What waiting gates still wait for, beyond the wave's own data (said once by the engine)."""
    return [
        f"{x.name}: {x.detail}" for x in gates if x.status == "wait" and x.detail != "not enough data yet"
    ]


def wave_verdict(gates: Sequence[GateResult], waiting: Sequence[str]) -> str:
    """``fail`` if any gate failed, else ``wait`` while anything is waited for, else ``pass``."""
    if any(x.status == "fail" for x in gates):
        return "fail"
    return "wait" if waiting else "pass"


def _fmt(x: Any) -> str:
    return "n/a" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def failure_reason(gates: Sequence[dict[str, Any]]) -> str:
    """The reason a wave failed, from its evaluation's gates: each failed gate with its figure and limit."""
    return "gate failed: " + ", ".join(
        f"{g['name']}={_fmt(g['value'])} (limit {_fmt(g['threshold'])})"
        for g in gates
        if g["status"] == "fail"
    )
