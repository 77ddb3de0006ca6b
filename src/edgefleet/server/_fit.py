"""Hardware fit: which variant of a release a device gets, or why it gets none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = ["FIT_FIELDS", "VariantSpec", "FitResult", "choose_variant", "default_device_classes", "fit_key"]

#: The hardware facts ``choose_variant`` reads (``fit_key`` makes a cache key of them).
FIT_FIELDS = ("device_class", "ram_mb", "onnxruntime_version", "isa_flags", "providers")


@dataclass(frozen=True)
class VariantSpec:
    """What the director knows of one variant: the classes it targets and its runtime requirements."""

    id: int
    variant: str
    device_classes: tuple[str, ...]
    runtime: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    variant: VariantSpec | None
    reason: str

    @property
    def fits(self) -> bool:
        return self.variant is not None


def default_device_classes(variant: str) -> list[str]:
    """Classes a variant targets when the release does not say: its name and the part before '-'.

    ``cpu-int8`` serves class ``cpu-int8`` and ``cpu``; ``pi4`` serves ``pi4``.
    """
    classes = [variant]
    head = variant.split("-", 1)[0]
    if head and head != variant:
        classes.append(head)
    return classes


def check_requirements(spec: VariantSpec, hw: Mapping[str, Any]) -> str | None:
    """The reason the device cannot run ``spec``, or None when it can."""
    rt = spec.runtime or {}
    min_ram = rt.get("min_ram_mb")
    ram = hw.get("ram_mb")
    if min_ram is not None and (ram is None or ram < min_ram):
        return f"variant {spec.variant} needs {min_ram} MB RAM, the device has {ram} MB"
    wanted = rt.get("onnxruntime")
    if wanted:
        have = hw.get("onnxruntime_version")
        if not have:
            return f"variant {spec.variant} needs onnxruntime {wanted}; the device did not report its version"
        ok = _version_in(str(have), str(wanted))
        if ok == "bad-spec":
            return f"variant {spec.variant} has an invalid onnxruntime requirement {wanted!r}"
        if ok == "bad-version":
            return f"the device reports an invalid onnxruntime version {have!r}"
        if not ok:
            return f"variant {spec.variant} needs onnxruntime {wanted}, the device has {have}"
    flags = [f.lower() for f in rt.get("isa_flags") or []]
    if flags:
        have_flags = {f.lower() for f in hw.get("isa_flags") or []}
        missing = [f for f in flags if f not in have_flags]
        if missing:
            return f"variant {spec.variant} needs CPU flags {', '.join(missing)}, which the device lacks"
    eps = rt.get("execution_providers") or []
    if eps:
        have_eps = set(hw.get("providers") or ["CPUExecutionProvider"])
        if not have_eps.intersection(eps):
            return (
                f"variant {spec.variant} runs on {', '.join(eps)}; the device offers "
                f"{', '.join(sorted(have_eps)) or 'none'}"
            )
    return None


@lru_cache(maxsize=1024)
def _version_in(have: str, wanted: str) -> bool | str:
    """Does version ``have`` satisfy ``wanted``? ``bad-spec``/``bad-version`` when one does not parse.

    Cached: a fleet reports a handful of versions, and parsing them for every device on every engine pass
    was 30 % of a 5,000-device rollout's engine time."""
    try:
        return Version(have) in SpecifierSet(wanted)
    except InvalidSpecifier:
        return "bad-spec"
    except InvalidVersion:
        return "bad-version"


def fit_key(hw: Mapping[str, Any]) -> tuple[Any, ...]:
    """The part of ``hw`` that ``choose_variant`` reads, hashable: devices with equal keys get equal fits."""
    out: list[Any] = []
    for f in FIT_FIELDS:
        v = hw.get(f)
        out.append(
            tuple(v)
            if isinstance(v, list)
            else v
            if isinstance(v, (str, int, float, type(None)))
            else repr(v)
        )
    return tuple(out)


def choose_variant(variants: Sequence[VariantSpec], hw: Mapping[str, Any]) -> FitResult:
    """The variant for a device: one targeting its class whose requirements it meets.

    A variant named exactly like the class is tried first; then the others in release order.
    """
    cls = hw.get("device_class") or "cpu"
    candidates = [v for v in variants if cls in v.device_classes]
    if not candidates:
        names = ", ".join(f"{v.variant} ({'/'.join(v.device_classes)})" for v in variants) or "none"
        return FitResult(None, f"no variant for device class {cls!r} (release has: {names})")
    candidates.sort(key=lambda v: v.variant != cls)
    reasons = []
    for spec in candidates:
        why = check_requirements(spec, hw)
        if why is None:
            return FitResult(spec, f"variant {spec.variant} fits class {cls}")
        reasons.append(why)
    return FitResult(None, "; ".join(reasons))
