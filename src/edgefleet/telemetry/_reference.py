"""Parsed, validated ``reference.json`` (written by ``bundle.compute_reference``).

Windows keep feature histograms over the reference's bin edges, so windows merge exactly and drift tests
compare like with like. ``Reference.id`` names those edges; a window says which reference it was binned
against, and merges refuse to mix two.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import PayloadTooLargeError, SchemaVersionError, ValidationError

__all__ = ["CONFIDENCE_EDGES", "Reference", "MAX_REFERENCE_BYTES"]

REFERENCE_SCHEMA_VERSION = 1
MAX_REFERENCE_BYTES = 64 << 20
MAX_FEATURES = 4096
MAX_BINS = 256
#: Confidence histogram edges used by every window and by ``compute_reference`` (21 edges over [0, 1]).
CONFIDENCE_EDGES = np.linspace(0.0, 1.0, 21)


def _bad(msg: str, **details: Any) -> ValidationError:
    return ValidationError(
        f"reference.json: {msg}",
        hint="rebuild the bundle's reference with edgefleet.bundle.compute_reference",
        **details,
    )


def _edges(v: Any, where: str) -> np.ndarray:
    if not isinstance(v, list) or not 2 <= len(v) <= MAX_BINS + 1:
        raise _bad(f"{where}.bins must be a list of 2..{MAX_BINS + 1} edges")
    try:
        e = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{where}.bins must be numbers") from exc
    if not np.isfinite(e).all() or not (np.diff(e) > 0).all():
        raise _bad(f"{where}.bins must be finite and strictly increasing")
    return e


def _counts(v: Any, n: int, where: str) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n or not all(isinstance(c, int) and c >= 0 for c in v):
        raise _bad(f"{where}.counts must be {n} non-negative integers")
    return np.asarray(v, dtype=np.int64)


def _sample(v: Any, where: str) -> np.ndarray:
    if v is None:
        return np.zeros(0)
    if not isinstance(v, list):
        raise _bad(f"{where}.sample must be a list of numbers")
    try:
        s = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{where}.sample must be numbers") from exc
    if s.ndim != 1 or not np.isfinite(s).all():
        raise _bad(f"{where}.sample must be finite numbers")
    return s


@dataclass(frozen=True)
class Reference:
    """Reference statistics of one bundle, ready for binning windows and testing drift.

    Attributes:
        id: 16 hex digits naming the feature names and bin edges (what windows must agree on to merge).
        names: feature names, in order.
        edges: per-feature bin edges.
        counts: per-feature histogram counts of the reference data.
        count: rows in the reference data.
        confidence_counts: 20-bin histogram of reference confidence over ``CONFIDENCE_EDGES``, or None.
        class_labels, class_counts: predicted-class distribution of the reference, or None.
    """

    id: str
    count: int
    names: tuple[str, ...]
    edges: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    samples: tuple[np.ndarray, ...]
    confidence_counts: np.ndarray | None
    confidence_sample: np.ndarray | None
    class_labels: tuple[str, ...] | None
    class_counts: np.ndarray | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    # Edges padded with +inf into one (k, max_edges) matrix: binning a batch is one numpy comparison.
    padded: np.ndarray = field(repr=False, compare=False)
    n_bins: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path, *, max_bytes: int = MAX_REFERENCE_BYTES) -> Reference:
        """Read and validate a reference.json file."""
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as e:
            raise ValidationError(
                f"cannot read reference {p}: {e}", hint="pass the bundle's reference.json"
            ) from e
        if size > max_bytes:
            raise PayloadTooLargeError(f"reference {p} is {size} bytes, limit {max_bytes}")
        try:
            doc = json.loads(p.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _bad(f"{p} is not JSON: {e}") from e
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Reference:
        """Validate a parsed reference.json."""
        if isinstance(doc, Reference):
            return doc
        if not isinstance(doc, dict):
            raise _bad("must be a JSON object")
        v = doc.get("schema_version")
        if not isinstance(v, int):
            raise _bad("schema_version missing")
        if v > REFERENCE_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"reference.json has schema_version {v}, this edgefleet knows {REFERENCE_SCHEMA_VERSION}",
                hint="upgrade edgefleet",
            )
        count = doc.get("count")
        if not isinstance(count, int) or count <= 0:
            raise _bad("count must be a positive integer")
        feats = doc.get("features")
        if not isinstance(feats, list) or len(feats) > MAX_FEATURES:
            raise _bad(f"features must be a list of at most {MAX_FEATURES}")
        names, edges, counts, samples = [], [], [], []
        for i, f in enumerate(feats):
            where = f"features[{i}]"
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                raise _bad(f"{where} needs a string name")
            e = _edges(f.get("bins"), where)
            names.append(f["name"])
            edges.append(e)
            counts.append(_counts(f.get("counts"), len(e) - 1, where))
            samples.append(_sample(f.get("sample"), where))
        if len(set(names)) != len(names):
            raise _bad("feature names must be unique")
        conf = doc.get("confidence")
        conf_counts = conf_sample = None
        if conf is not None:
            if not isinstance(conf, dict):
                raise _bad("confidence must be an object or null")
            ce = _edges(conf.get("bins"), "confidence")
            if len(ce) != len(CONFIDENCE_EDGES) or not np.allclose(ce, CONFIDENCE_EDGES):
                raise _bad("confidence.bins must be the 21 edges 0, 0.05, ..., 1")
            conf_counts = _counts(conf.get("counts"), len(ce) - 1, "confidence")
            conf_sample = _sample(conf.get("sample"), "confidence")
        classes = doc.get("classes")
        labels = class_counts = None
        if classes is not None:
            if not isinstance(classes, dict) or not isinstance(classes.get("labels"), list):
                raise _bad("classes must be {labels: [...], counts: [...]} or null")
            labels = tuple(str(x) for x in classes["labels"])
            if len(set(labels)) != len(labels) or not labels:
                raise _bad("classes.labels must be unique and non-empty")
            class_counts = _counts(classes.get("counts"), len(labels), "classes")
        ident = hashlib.sha256(
            json.dumps([names, [e.tolist() for e in edges]], separators=(",", ":")).encode()
        ).hexdigest()[:16]
        width = max((len(e) for e in edges), default=1)
        padded = np.full((len(edges), width), np.inf)
        for j, e in enumerate(edges):
            padded[j, : len(e)] = e
        return cls(
            id=ident,
            count=count,
            names=tuple(names),
            edges=tuple(edges),
            counts=tuple(counts),
            samples=tuple(samples),
            confidence_counts=conf_counts,
            confidence_sample=conf_sample,
            class_labels=labels,
            class_counts=class_counts,
            raw=doc,
            padded=padded,
            n_bins=np.asarray([len(e) - 1 for e in edges], dtype=np.int64),
        )

    @property
    def width(self) -> int:
        """Counts per feature row in a window: under-range, each bin, over-range."""
        return int(self.padded.shape[1]) + 1

    def bin_matrix(self, x: np.ndarray) -> np.ndarray:
        """Histogram a (rows, k) feature matrix into a (k, width) count matrix.

        Column 0 counts values below the first edge, column ``n_bins[j] + 1`` values above the last;
        a value equal to the last edge falls in the last bin (as in ``numpy.histogram``).
        """
        k = len(self.names)
        if x.ndim != 2 or x.shape[1] != k:
            raise ValidationError(f"feature matrix has shape {list(x.shape)}, reference has {k} features")
        xt = np.ascontiguousarray(x.T)
        idx = np.empty(xt.shape, dtype=np.int64)
        for j, e in enumerate(self._right_edges):
            idx[j] = np.searchsorted(e, xt[j], side="right")  # == number of edges <= value
        idx += (np.arange(k) * self.width)[:, None]
        return np.bincount(idx.ravel(), minlength=k * self.width).reshape(k, self.width)

    @property
    def _right_edges(self) -> tuple[np.ndarray, ...]:
        # The last edge nudged up by one ulp, so a value equal to it lands in the last bin, not over range.
        cached = self.__dict__.get("_right_edges_cache")
        if cached is None:
            cached = tuple(np.append(e[:-1], np.nextafter(e[-1], np.inf)) for e in self.edges)
            object.__setattr__(self, "_right_edges_cache", cached)
        return cached

    def feature_counts_with_range(self, j: int) -> np.ndarray:
        """Reference counts of feature ``j`` laid out like a window row (0 under, bins, 0 over)."""
        out = np.zeros(len(self.edges[j]) + 1, dtype=np.int64)
        out[1:-1] = self.counts[j]
        return out

    @staticmethod
    def confidence_bins(conf: np.ndarray) -> np.ndarray:
        """20-bin histogram of confidences (values outside [0, 1] are clipped)."""
        idx = np.minimum((np.clip(conf, 0.0, 1.0) * 20).astype(np.int64), 19)
        return np.bincount(idx, minlength=20)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "count": self.count,
            "features": len(self.names),
            "confidence": self.confidence_counts is not None,
            "classes": list(self.class_labels) if self.class_labels else None,
        }


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
