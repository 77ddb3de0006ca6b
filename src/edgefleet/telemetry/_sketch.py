"""DDSketch (``ddsketch`` package) with a compact, validated JSON encoding of its store bins.

The encoding keeps what a merge needs exactly: the relative accuracy (so the key mapping is known), the
first key and the dense run of bin counts of the positive and negative stores, the zero count, and count,
sum, min and max.

ddsketch 3's public API is ``count``, ``sum``, ``add``, ``merge`` and ``get_quantile_value``: it has no
public way to read or fill a sketch's stores, zero count, min and max, nor to key many values at once
(its own protobuf encoder reads the same private attributes, and drops min, max and sum). So this module,
and no other, touches ``_mapping``, ``_store``, ``_negative_store``, ``_zero_count``, ``_count``, ``_sum``,
``_min`` and ``_max``; the stores' own ``bins``, ``offset``, ``min_key``, ``max_key`` and ``add`` are public.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ddsketch import LogCollapsingLowestDenseDDSketch

from edgefleet.errors import ValidationError

__all__ = ["new_sketch", "empty_like", "add_many", "sketch_to_dict", "sketch_from_dict", "quantile"]

MAX_SKETCH_BINS = 4096


def new_sketch(relative_accuracy: float, bin_limit: int) -> LogCollapsingLowestDenseDDSketch:
    return LogCollapsingLowestDenseDDSketch(relative_accuracy=relative_accuracy, bin_limit=bin_limit)


def empty_like(s: LogCollapsingLowestDenseDDSketch) -> LogCollapsingLowestDenseDDSketch:
    """An empty sketch with the relative accuracy and bin limit of ``s`` (so the two merge)."""
    return new_sketch(s._mapping.relative_accuracy, s._store.bin_limit)


def add_many(s: LogCollapsingLowestDenseDDSketch, values: np.ndarray) -> None:
    """Add many values at once: keys computed with numpy, one store update per distinct key.

    Same keys as ``DDSketch.add`` (``ceil(log2(v) * multiplier) + offset`` of the logarithmic mapping).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return
    m = s._mapping
    pos = v > m.min_possible
    neg = v < -m.min_possible
    for mask, store, sign in ((pos, s._store, 1.0), (neg, s._negative_store, -1.0)):
        if mask.any():
            keys = np.ceil(np.log2(sign * v[mask]) * m._multiplier).astype(np.int64) + int(m._offset)
            uk, counts = np.unique(keys, return_counts=True)
            for k, c in zip(uk.tolist(), counts.tolist(), strict=True):
                store.add(k, float(c))
    s._zero_count += float(v.size - pos.sum() - neg.sum())
    s._count += float(v.size)
    s._sum += float(v.sum())
    s._min = min(s._min, float(v.min()))
    s._max = max(s._max, float(v.max()))


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _sig(x: float) -> float:
    return float(f"{float(x):.7g}")


def _store_to(store: Any) -> dict[str, Any] | None:
    if store.count == 0:
        return None
    lo, hi = store.min_key, store.max_key
    # counts from k0 upward; a run of k empty bins is written as -k (latency tails are sparse)
    out: list[int | float] = []
    zeros = 0
    for k in range(lo, hi + 1):
        c = store.bins[k - store.offset]
        if c == 0:
            zeros += 1
            continue
        if zeros:
            out.append(-zeros)
            zeros = 0
        out.append(_num(c))
    return {"k0": int(lo), "c": out}


def sketch_to_dict(s: LogCollapsingLowestDenseDDSketch) -> dict[str, Any]:
    """Compact JSON-able form (bins as a dense run from the lowest non-empty key)."""
    d: dict[str, Any] = {
        "a": s._mapping.relative_accuracy,
        "n": _num(s.count),
    }
    if s.count:
        # 7 significant digits: the bins carry the distribution; these only feed mean/min/max
        d.update(s=_sig(s.sum), lo=_sig(s._min), hi=_sig(s._max))
    pos = _store_to(s._store)
    neg = _store_to(s._negative_store)
    if pos:
        d["p"] = pos
    if neg:
        d["neg"] = neg
    if s._zero_count:
        d["z"] = _num(s._zero_count)
    return d


def _bad(where: str, msg: str) -> ValidationError:
    return ValidationError(
        f"{where}: {msg}", hint="the window was corrupted or built by an incompatible version"
    )


def _nonneg(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _bad(where, f"expected a non-negative finite number, got {v!r}")
    return float(v)


def _fill(store: Any, d: Any, where: str, bin_limit: int) -> float:
    if d is None:
        return 0.0
    if not isinstance(d, dict) or set(d) != {"k0", "c"}:
        raise _bad(where, "store must be {k0, c}")
    k0, c = d["k0"], d["c"]
    if isinstance(k0, bool) or not isinstance(k0, int) or abs(k0) > 1 << 20:
        raise _bad(where, "k0 must be a small integer")
    limit = min(bin_limit, MAX_SKETCH_BINS)
    if not isinstance(c, list) or not 1 <= len(c) <= limit:
        raise _bad(where, f"c must hold 1..{limit} entries")
    total, key = 0.0, k0
    for i, w in enumerate(c):
        if isinstance(w, int) and not isinstance(w, bool) and w < 0:  # a run of -w empty bins
            key -= w
        else:
            w = _nonneg(w, f"{where}.c[{i}]")
            if w:
                store.add(key, w)
                total += w
            key += 1
        if key - k0 > limit:
            raise _bad(where, f"bins span more than {limit} keys")
    return total


def sketch_from_dict(
    d: Any, *, where: str, relative_accuracy: float, bin_limit: int
) -> LogCollapsingLowestDenseDDSketch:
    """Rebuild a sketch, checking every field; the accuracy must equal ``relative_accuracy`` to merge."""
    if not isinstance(d, dict) or not set(d) <= {"a", "n", "s", "lo", "hi", "p", "neg", "z"}:
        raise _bad(where, "sketch must be an object with keys a, n, [s, lo, hi, p, neg, z]")
    a = d.get("a")
    if not isinstance(a, (int, float)) or not math.isclose(a, relative_accuracy, rel_tol=1e-12):
        raise _bad(where, f"relative accuracy {a!r} differs from this fleet's {relative_accuracy}")
    s = new_sketch(relative_accuracy, bin_limit)
    n = _nonneg(d.get("n"), f"{where}.n")
    total = _fill(s._store, d.get("p"), f"{where}.p", bin_limit)
    total += _fill(s._negative_store, d.get("neg"), f"{where}.neg", bin_limit)
    z = _nonneg(d.get("z", 0), f"{where}.z")
    total += z
    if not math.isclose(total, n, rel_tol=1e-9, abs_tol=1e-9):
        raise _bad(where, f"bins sum to {total} but n is {n}")
    s._zero_count = z
    s._count = n
    if n:
        for k in ("s", "lo", "hi"):
            v = d.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _bad(where, f"{k} must be a finite number")
        if d["lo"] > d["hi"]:
            raise _bad(where, "lo > hi")
        s._sum, s._min, s._max = float(d["s"]), float(d["lo"]), float(d["hi"])
    return s


def quantile(s: LogCollapsingLowestDenseDDSketch, q: float) -> float | None:
    if s.count == 0:
        return None
    v = s.get_quantile_value(q)
    return None if v is None else float(v)
