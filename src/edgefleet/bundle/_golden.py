"""The golden set: raw inputs, what the contract makes of them, and the outputs the model must reproduce."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import (
    BundleError,
    InputError,
    IntegrityError,
    ManifestError,
)
from edgefleet.protocol import (
    GoldenSpec,
)

__all__ = ["GOLDEN_FILE", "Golden", "RawInputs", "compare_outputs", "load_golden"]

GOLDEN_FILE = "golden.npz"

RawInputs = np.ndarray | Sequence[Any] | dict[str, np.ndarray]


# --- golden set ---------------------------------------------------------------------------------------


@dataclass
class Golden:
    """The golden set: raw inputs, the contract's output on them, and the model's expected outputs."""

    inputs_raw: Any
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    atol: float
    rtol: float

    @property
    def count(self) -> int:
        return len(next(iter(self.expected.values())))


def encode_raw(raw: RawInputs) -> tuple[str, dict[str, np.ndarray]]:
    """Store raw inputs in npz arrays without pickling (object arrays would need allow_pickle)."""
    if isinstance(raw, dict):
        return "dict", {f"raw/{k}": np.asarray(v) for k, v in raw.items()}
    if isinstance(raw, np.ndarray):
        if raw.dtype == object:
            raise InputError(
                "golden inputs have dtype object", hint="pass a numeric array or a list of bytes"
            )
        return "array", {"raw": raw}
    items = list(raw)
    if all(isinstance(i, (bytes, bytearray, memoryview)) for i in items):
        blobs = [bytes(i) for i in items]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        return "bytes", {"raw_bytes": np.frombuffer(b"".join(blobs), dtype=np.uint8), "raw_offsets": offsets}
    arrays = [np.asarray(i) for i in items]
    if any(a.dtype == object for a in arrays):
        raise InputError(
            "golden inputs must be an array, a list of bytes or a list of arrays",
            hint="decode text/objects into numbers first",
        )
    return "items", {f"raw_items/{i:06d}": a for i, a in enumerate(arrays)}


def decode_raw(kind: str, z: dict[str, np.ndarray]) -> Any:
    if kind == "dict":
        return {k[4:]: v for k, v in z.items() if k.startswith("raw/")}
    if kind == "array":
        return z["raw"]
    if kind == "bytes":
        data, off = z["raw_bytes"].tobytes(), z["raw_offsets"]
        return [data[int(off[i]) : int(off[i + 1])] for i in range(len(off) - 1)]
    if kind == "items":
        return [z[k] for k in sorted(k for k in z if k.startswith("raw_items/"))]
    raise ManifestError(f"golden.npz has an unknown raw-input kind {kind!r}", hint="rebuild the bundle")


def raw_len(raw: RawInputs) -> int:
    if isinstance(raw, dict):
        return len(next(iter(raw.values())))
    return len(raw)


def raw_slice(raw: RawInputs, lo: int, hi: int) -> RawInputs:
    if isinstance(raw, dict):
        return {k: v[lo:hi] for k, v in raw.items()}
    return raw[lo:hi]


def load_golden(path: Path, spec: GoldenSpec, *, max_bytes: int) -> Golden:
    """Read golden.npz (never with pickle)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise BundleError(
            f"{path.name} is {size} bytes, more than the {max_bytes} allowed",
            hint="EDGEFLEET_BUNDLE_MAX_GOLDEN_BYTES raises the cap",
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise IntegrityError(
            f"{path.name} cannot be read: {e}", hint="the bundle is corrupted; rebuild it"
        ) from e
    try:
        meta = json.loads(z.pop("meta").tobytes())
        kind = meta["raw_kind"]
    except (KeyError, ValueError) as e:
        raise ManifestError(f"{path.name} has no valid meta entry", hint="rebuild the bundle") from e
    inputs = {k[6:]: v for k, v in z.items() if k.startswith("input/")}
    expected = {k[9:]: v for k, v in z.items() if k.startswith("expected/")}
    if not inputs or not expected:
        raise ManifestError(f"{path.name} holds no inputs or expected outputs", hint="rebuild the bundle")
    return Golden(decode_raw(kind, z), inputs, expected, spec.atol, spec.rtol)


def compare_outputs(
    actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], *, atol: float, rtol: float
) -> dict[str, dict[str, Any]]:
    """Compare outputs per name: floats within ``atol + rtol*|expected|``, other dtypes exactly."""
    out: dict[str, dict[str, Any]] = {}
    for name, exp in expected.items():
        got = actual.get(name)
        if got is None:
            out[name] = {"ok": False, "reason": "output missing"}
            continue
        got = np.asarray(got)
        if got.shape != exp.shape:
            out[name] = {"ok": False, "reason": f"shape {list(got.shape)} != expected {list(exp.shape)}"}
            continue
        if np.issubdtype(exp.dtype, np.floating):
            g, e = got.astype(np.float64), exp.astype(np.float64)
            close = np.isclose(g, e, atol=atol, rtol=rtol)
            err = np.abs(g - e)
            max_err = float(np.nanmax(err)) if err.size else 0.0
        else:
            close = got == exp
            max_err = None
        per_sample = close.reshape(len(close), -1).all(axis=1) if close.ndim else np.atleast_1d(close)
        bad = int((~per_sample).sum())
        out[name] = {"ok": bad == 0, "mismatched_samples": bad, "max_abs_err": max_err}
    return out


# --- report ----------------------------------------------------------------------------------------------
