"""Compressed updates: what a device sends instead of its whole new head (``--update-compression``).

A device sends its *delta* from the round's global head (plus the error it left out last time: error
feedback), encoded as one of:

- ``int8``: every tensor scaled by its own ``max|delta| / 127`` and rounded to int8; the record holds one
  flat int8 array ``q`` (all tensors, in order) and one float32 array ``scale`` (one per tensor). Decoding
  is exact to half a step: ``|delta - q * scale| <= scale / 2``.
- ``topk:F``: per tensor, the ``max(1, ceil(F * size))`` entries of largest magnitude; the record holds the
  flat indices ``idx`` (uint16 when every tensor has at most 65536 entries, else uint32) and their float32
  values ``val``, tensors in order. Entries left out are zero in the decoded delta.

The server decodes each reply against the global head's shapes before Flower's strategy aggregates it;
anything that does not decode to exactly those shapes (wrong keys, dtypes, sizes, indices out of range or
repeated, NaN/infinity) raises ``UpdateRejected`` with the reason, and the round goes on without it.
"""

from __future__ import annotations

import math

import numpy as np

ENCODED = "update"  # the reply's ArrayRecord when the update is compressed
PLAIN = "arrays"  # the reply's ArrayRecord when it is not (the new head)
RESIDUAL = "edgefleet.residual"  # the device's error-feedback memory, in its Flower context state


class UpdateRejected(ValueError):
    """A client's update that cannot be decoded to the global head's shapes; the message says why."""


def _topk_counts(shapes: list[tuple[int, ...]], fraction: float) -> list[int]:
    return [max(1, math.ceil(fraction * int(np.prod(s)))) for s in shapes]


def _index_dtype(shapes: list[tuple[int, ...]]) -> np.dtype:
    largest = max((int(np.prod(s)) for s in shapes), default=0)
    return np.dtype(np.uint16) if largest <= 1 << 16 else np.dtype(np.uint32)


def parse_codec(codec: str) -> tuple[str, float | None]:
    if codec.startswith("topk:"):
        return "topk", float(codec[5:])
    return codec, None


def encode(codec: str, delta: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """``(record arrays, what the server will decode)`` for ``delta`` under ``codec`` (int8 or topk:F)."""
    kind, fraction = parse_codec(codec)
    delta = [np.asarray(d, np.float32) for d in delta]
    shapes = [d.shape for d in delta]
    if kind == "int8":
        scales = np.array([float(np.abs(d).max()) / 127 if d.size else 0.0 for d in delta], np.float32)
        qs = [
            np.zeros(d.size, np.int8)
            if s == 0
            else np.clip(np.rint(d.ravel() / s), -127, 127).astype(np.int8)
            for d, s in zip(delta, scales, strict=True)
        ]
        q = np.concatenate(qs) if qs else np.zeros(0, np.int8)
        record = {"q": q, "scale": scales}
    elif kind == "topk":
        assert fraction is not None
        idx_parts, val_parts = [], []
        for d, k in zip(delta, _topk_counts(shapes, fraction), strict=True):
            flat = d.ravel()
            keep = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
            idx_parts.append(keep)
            val_parts.append(flat[keep])
        record = {
            "idx": np.concatenate(idx_parts).astype(_index_dtype(shapes)),
            "val": np.concatenate(val_parts).astype(np.float32),
        }
    else:
        raise ValueError(f"unknown update compression {codec!r}")
    return record, decode(codec, record, shapes)


def decode(codec: str, record: dict[str, np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The float32 delta tensors ``record`` encodes, checked against ``shapes``; ``UpdateRejected`` if not."""
    kind, fraction = parse_codec(codec)
    sizes = [int(np.prod(s)) for s in shapes]
    if kind == "int8":
        _keys(record, {"q", "scale"}, codec)
        q, scale = record["q"], record["scale"]
        _array(q, "q", np.dtype(np.int8), (sum(sizes),))
        _array(scale, "scale", np.dtype(np.float32), (len(shapes),))
        if not (np.isfinite(scale).all() and (scale >= 0).all()):
            raise UpdateRejected("int8 update: scales must be finite and not negative")
        out, start = [], 0
        for shape, size, s in zip(shapes, sizes, scale, strict=True):
            out.append((q[start : start + size].astype(np.float32) * s).reshape(shape))
            start += size
        return out
    if kind == "topk":
        assert fraction is not None
        _keys(record, {"idx", "val"}, codec)
        counts = _topk_counts(shapes, fraction)
        idx, val = record["idx"], record["val"]
        _array(idx, "idx", _index_dtype(shapes), (sum(counts),))
        _array(val, "val", np.dtype(np.float32), (sum(counts),))
        if not np.isfinite(val).all():
            raise UpdateRejected("topk update: values hold NaN or infinity")
        out, start = [], 0
        for shape, size, k in zip(shapes, sizes, counts, strict=True):
            i = idx[start : start + k].astype(np.int64)
            if i.size and (i.max() >= size or np.unique(i).size != k):
                raise UpdateRejected(f"topk update: indices out of range or repeated for a tensor of {size}")
            flat = np.zeros(size, np.float32)
            flat[i] = val[start : start + k]
            out.append(flat.reshape(shape))
            start += k
        return out
    raise UpdateRejected(f"unknown update compression {codec!r}")


def check_plain(arrays: list[np.ndarray], shapes: list[tuple[int, ...]]) -> None:
    """An uncompressed reply must be float32 tensors of the global head's shapes, finite."""
    if len(arrays) != len(shapes):
        raise UpdateRejected(f"update holds {len(arrays)} tensors; the head has {len(shapes)}")
    for i, (a, shape) in enumerate(zip(arrays, shapes, strict=True)):
        _array(a, f"tensor {i}", np.dtype(np.float32), shape)
        if not np.isfinite(a).all():
            raise UpdateRejected(f"update tensor {i} holds NaN or infinity")


def _keys(record: dict[str, np.ndarray], want: set[str], codec: str) -> None:
    if set(record) != want:
        raise UpdateRejected(f"{codec} update holds arrays {sorted(record)}; want {sorted(want)}")


def _array(a: np.ndarray, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if a.dtype != dtype:
        raise UpdateRejected(f"update array {name} is {a.dtype}; want {dtype}")
    if tuple(a.shape) != tuple(shape):
        # larger than the job allows (or smaller): refused before any use
        raise UpdateRejected(f"update array {name} has shape {tuple(a.shape)}; want {tuple(shape)}")
