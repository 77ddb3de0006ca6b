"""Reference statistics (``reference.json``): what the model's inputs and confidence looked like at build time.

The same ``summarize_features`` runs at build time and in on-device telemetry, so drift tests compare
like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.errors import InputError

__all__ = [
    "REFERENCE_SCHEMA_VERSION",
    "MAX_PER_FEATURE",
    "SUMMARY_FEATURES",
    "summarize_features",
    "compute_reference",
    "confidence_from_outputs",
    "softmax",
]

REFERENCE_SCHEMA_VERSION = 1
MAX_PER_FEATURE = 64  # up to this many values per sample, each value is a feature of its own
SUMMARY_FEATURES = ["mean", "std", "min", "max", "q05", "q50", "q95", "zero_frac"]
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def summarize_features(x: np.ndarray, *, max_features: int = MAX_PER_FEATURE) -> tuple[list[str], np.ndarray]:
    """Turn a batch into a (batch, k) float64 feature matrix for drift statistics.

    Samples with at most ``max_features`` values keep each value as a feature (``f0``, ``f1``, ...);
    larger samples (images, audio) are summarised per sample by ``SUMMARY_FEATURES``.

    Args:
        x: array of shape (batch, ...) - the preprocessed model input.

    Returns:
        Feature names and the matrix.
    """
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise InputError(
            f"summarize_features needs a non-empty batch, got shape {list(x.shape)}",
            hint="pass an array whose axis 0 indexes samples",
        )
    if x.dtype.kind not in "biuf":
        raise InputError(f"summarize_features needs numbers, got dtype {x.dtype}", hint="preprocess first")
    flat = x.reshape(x.shape[0], -1).astype(np.float64, copy=False)
    d = flat.shape[1]
    if d <= max_features:
        return [f"f{i}" for i in range(d)], np.ascontiguousarray(flat)
    q05, q50, q95 = np.quantile(flat, [0.05, 0.5, 0.95], axis=1)
    cols = [
        flat.mean(axis=1),
        flat.std(axis=1),
        flat.min(axis=1),
        flat.max(axis=1),
        q05,
        q50,
        q95,
        (flat == 0).mean(axis=1),
    ]
    return list(SUMMARY_FEATURES), np.stack(cols, axis=1)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def confidence_from_outputs(scores: np.ndarray, *, apply_softmax: bool) -> np.ndarray:
    """Per-sample confidence: the max class probability of a (batch, classes) score array."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    p = softmax(s) if apply_softmax else s
    return p.max(axis=1)


def _bins(v: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1)))
    if len(edges) < 3:  # few distinct values: equal-width bins over the range instead
        lo, hi = float(v.min()), float(v.max())
        edges = np.linspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo - 0.5, lo + 0.5])
    return edges


def _sample(v: np.ndarray, size: int, seed: int) -> list[float]:
    if len(v) <= size:
        idx = np.arange(len(v))
    else:
        idx = np.sort(np.random.default_rng(seed).choice(len(v), size=size, replace=False))
    # 7 significant digits: float32 precision, and a far smaller reference.json than full float64 repr
    return [float(f"{a:.7g}") for a in v[idx]]


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in a]


def compute_reference(
    features: np.ndarray,
    names: Sequence[str],
    probabilities: np.ndarray | None = None,
    *,
    labels: Sequence[str] | None = None,
    n_bins: int = 10,
    sample_size: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the ``reference.json`` content.

    Args:
        features: (batch, k) matrix from ``summarize_features``.
        names: the k feature names.
        probabilities: (batch, classes) class probabilities (already softmaxed), or None.
        labels: class labels (default "0", "1", ...).
        n_bins: histogram bins per feature (edges from the reference quantiles).
        sample_size: values kept per feature (seeded), for KS tests.

    Returns:
        ``{"schema_version", "count", "features", "confidence", "classes", ...}``.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != len(names) or f.shape[0] == 0:
        raise InputError(
            f"features must be (batch, {len(names)}) with batch > 0, got shape {list(f.shape)}",
            hint="pass the matrix and names returned by summarize_features",
        )
    if not np.isfinite(f).all():
        raise InputError("features contain NaN or infinity", hint="check the preprocessed reference data")
    feats = []
    for j, name in enumerate(names):
        v = f[:, j]
        edges = _bins(v, n_bins)
        counts, _ = np.histogram(v, bins=edges)
        qs = np.quantile(v, _QUANTILES)
        feats.append(
            {
                "name": str(name),
                "bins": _floats(edges),
                "counts": [int(c) for c in counts],
                "mean": float(v.mean()),
                "std": float(v.std()),
                "min": float(v.min()),
                "max": float(v.max()),
                "quantiles": {str(q): float(x) for q, x in zip(_QUANTILES, qs, strict=True)},
                "sample": _sample(v, sample_size, seed + j),
            }
        )
    confidence = classes = None
    if probabilities is not None:
        p = np.asarray(probabilities, dtype=np.float64)
        p = p.reshape(len(p), -1)
        if len(p) != len(f):
            raise InputError(
                f"probabilities have {len(p)} rows but features have {len(f)}",
                hint="compute both from the same reference batch",
            )
        conf = p.max(axis=1)
        edges = np.linspace(0.0, 1.0, 21)
        counts, _ = np.histogram(np.clip(conf, 0.0, 1.0), bins=edges)
        confidence = {
            "bins": _floats(edges),
            "counts": [int(c) for c in counts],
            "mean": float(conf.mean()),
            "sample": _sample(conf, sample_size, seed + 100_003),
        }
        n_classes = p.shape[1]
        labs = [str(x) for x in labels] if labels is not None else [str(i) for i in range(n_classes)]
        if len(labs) != n_classes:
            raise InputError(
                f"{len(labs)} labels for {n_classes} classes", hint="give one label per model output class"
            )
        classes = {
            "labels": labs,
            "counts": [int(c) for c in np.bincount(p.argmax(axis=1), minlength=n_classes)],
        }
    return {
        "schema_version": REFERENCE_SCHEMA_VERSION,
        "count": int(f.shape[0]),
        "feature_mode": "per_value" if list(names) != SUMMARY_FEATURES else "summary",
        "features": feats,
        "confidence": confidence,
        "classes": classes,
    }
