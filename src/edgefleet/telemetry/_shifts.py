"""Synthetic distribution shifts, used to measure drift detection (tests, benchmark, demo).

Inputs are batches of images flattened to rows, with values in ``[lo, hi]``.
"""

from __future__ import annotations

import numpy as np

from edgefleet.errors import InputError

__all__ = ["SHIFT_KINDS", "inject_shift", "class_mix_indices"]

SHIFT_KINDS = ("noise", "brightness", "contrast", "rotation", "class_mix")


def inject_shift(
    x: np.ndarray,
    kind: str,
    strength: float,
    *,
    rng: np.random.Generator,
    image_shape: tuple[int, int] = (8, 8),
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Return a shifted copy of ``x`` (rows of flattened images).

    Args:
        kind: ``noise`` (Gaussian, sigma = strength x range), ``brightness`` (add strength x range),
            ``contrast`` (scale around the mid value by 1 + strength), ``rotation`` (strength degrees).
            ``class_mix`` does not change inputs: use :func:`class_mix_indices`.
        strength: size of the shift; 0 returns an unchanged copy.
    """
    lo, hi = value_range
    span = hi - lo
    x = np.asarray(x, dtype=np.float64)
    if kind == "noise":
        out = x + rng.normal(0.0, strength * span, x.shape)
    elif kind == "brightness":
        out = x + strength * span
    elif kind == "contrast":
        mid = lo + span / 2
        out = mid + (x - mid) * (1.0 + strength)
    elif kind == "rotation":
        from scipy.ndimage import rotate

        imgs = x.reshape(-1, *image_shape)
        out = rotate(imgs, strength, axes=(1, 2), reshape=False, order=1, mode="constant", cval=lo)
        out = out.reshape(x.shape)
    elif kind == "class_mix":
        out = x.copy()
    else:
        raise InputError(f"unknown shift {kind!r}", hint=f"use one of {SHIFT_KINDS}")
    return np.clip(out, lo, hi)


def class_mix_indices(
    y: np.ndarray, strength: float, n: int, *, rng: np.random.Generator, favoured: tuple[int, ...] = (0, 1, 2)
) -> np.ndarray:
    """Indices of ``n`` rows where the ``favoured`` classes take an extra ``strength`` share of the mix.

    ``strength`` 0 keeps the natural class mix; 1 draws only favoured classes.
    """
    y = np.asarray(y)
    fav = np.flatnonzero(np.isin(y, favoured))
    if len(fav) == 0:
        raise InputError(f"no rows of classes {favoured}", hint="pick classes present in y")
    k = rng.binomial(n, strength)
    return np.concatenate([rng.choice(len(y), n - k, replace=True), rng.choice(fav, k, replace=True)])
