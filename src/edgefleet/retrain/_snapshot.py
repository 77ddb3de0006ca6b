"""A labelled data snapshot: a folder with ``data.npz`` (``x`` inputs, ``y`` integer labels) and ``manifest.json``.

The manifest names the samples the rows came from (``sample_ids``, in row order), counts the labels and
carries the snapshot's content hash: sha256 over each array's dtype, shape and bytes (so the same rows give
the same hash, whichever process wrote the file). A retrained release records that hash in its lineage.

Inputs are in the bundle's *raw* input space (what a device sampled, before the preprocessing contract).
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet._fs import atomic_write
from edgefleet.errors import InputError

__all__ = ["SNAPSHOT_FORMAT", "DataSnapshot", "load_snapshot", "snapshot_hash", "write_snapshot"]

SNAPSHOT_FORMAT = "edgefleet.snapshot/1"
DATA_FILE = "data.npz"
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_DATA_BYTES = 1 << 30  # uncompressed array bytes a snapshot may hold
MAX_ROWS = 5_000_000


@dataclass
class DataSnapshot:
    """A loaded snapshot: arrays checked against the manifest's hash."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    sample_ids: list[str]
    sha256: str
    labels: dict[str, int]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def summary(self) -> dict[str, Any]:
        """What a lineage or a job record keeps about the snapshot (no rows)."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "rows": len(self),
            "labels": self.labels,
            "source": self.source,
        }


def snapshot_hash(x: np.ndarray, y: np.ndarray) -> str:
    """The content hash of a snapshot's rows: sha256 over dtype, shape and bytes of ``x`` then ``y``."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _label_counts(y: np.ndarray) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(Counter(y.tolist()).items())}


def write_snapshot(
    out: str | Path,
    x: Any,
    y: Any,
    *,
    sample_ids: Sequence[str] | None = None,
    source: dict[str, Any] | None = None,
) -> DataSnapshot:
    """Write a snapshot folder at ``out`` (created; must be empty or absent) and return it loaded.

    Raises:
        InputError: ``x``/``y`` disagree in length, ``y`` is not integer labels, ids do not match the rows,
            or ``out`` holds other files.
    """
    out = Path(out)
    x, y = np.asarray(x), np.asarray(y)
    _check_arrays(x, y, where="the rows given")
    ids = [str(i) for i in (sample_ids if sample_ids is not None else range(len(y)))]
    if len(ids) != len(y):
        raise InputError(
            f"{len(ids)} sample ids for {len(y)} rows", hint="give one sample id per labelled row"
        )
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty", hint="write a snapshot into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    sha = snapshot_hash(x, y)
    np.savez_compressed(out / DATA_FILE, x=x, y=y)
    manifest = {
        "format": SNAPSHOT_FORMAT,
        "created": time.time(),
        "rows": len(y),
        "sha256": sha,
        "labels": _label_counts(y),
        "sample_ids": ids,
        "source": source or {},
    }
    atomic_write(out / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    return load_snapshot(out)


def _check_arrays(x: np.ndarray, y: np.ndarray, *, where: str) -> None:
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"{where}: x has shape {x.shape} and y {y.shape}; they need one label per row",
            hint="x: (rows, ...) inputs, y: (rows,) integer class labels",
        )
    if len(y) == 0:
        raise InputError(f"{where}: no labelled rows", hint="label some samples first")
    if y.dtype.kind not in "iu":
        raise InputError(
            f"{where}: labels have dtype {y.dtype}, not integers", hint="y holds class indices (0, 1, ...)"
        )
    if x.dtype.kind not in "iuf":
        raise InputError(f"{where}: inputs have dtype {x.dtype}", hint="x holds numbers")


def load_snapshot(path: str | Path) -> DataSnapshot:
    """Load and check a snapshot folder: sizes bounded, arrays present and consistent, hash matching.

    Raises:
        InputError: what is missing, malformed, too large or altered, and what to do.
    """
    path = Path(path)
    mpath, dpath = path / MANIFEST_FILE, path / DATA_FILE
    if not path.is_dir() or not mpath.is_file() or not dpath.is_file():
        raise InputError(
            f"{path} is not a data snapshot (needs {MANIFEST_FILE} and {DATA_FILE})",
            hint="make one with `edgefleet retrain snapshot` or edgefleet.retrain.write_snapshot",
        )
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise InputError(f"{mpath} is over {MAX_MANIFEST_BYTES >> 20} MiB", hint="is it a snapshot manifest?")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{mpath} is not JSON: {e}", hint="rewrite the snapshot") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
        raise InputError(
            f"{mpath} is not a {SNAPSHOT_FORMAT} manifest", hint="rewrite the snapshot with this edgefleet"
        )
    x, y = _read_arrays(dpath)
    _check_arrays(x, y, where=str(dpath))
    sha = snapshot_hash(x, y)
    if sha != manifest.get("sha256"):
        raise InputError(
            f"{path}: the rows' hash {sha[:12]}... does not match the manifest's {str(manifest.get('sha256'))[:12]}...",
            hint="the snapshot was altered after it was written; write a new one",
        )
    ids = manifest.get("sample_ids")
    if not isinstance(ids, list) or len(ids) != len(y) or not all(isinstance(i, str) for i in ids):
        raise InputError(f"{mpath}: sample_ids do not name the {len(y)} rows", hint="rewrite the snapshot")
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    return DataSnapshot(path, x, y, ids, sha, _label_counts(y), source)


def _read_arrays(dpath: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` from the npz, refusing pickles and arrays whose header promises too many bytes."""
    try:
        with zipfile.ZipFile(dpath) as z:
            names = set(z.namelist())
            if not {"x.npy", "y.npy"} <= names:
                raise InputError(f"{dpath} lacks x or y", hint="x: inputs, y: integer labels")
            total = 0
            for n in ("x.npy", "y.npy"):
                with z.open(n) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _order, dtype = read(f, max_header_size=10_000)
                    total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if dtype.hasobject:
                        raise InputError(f"{dpath}: {n} holds Python objects", hint="store numbers only")
                    if shape and shape[0] > MAX_ROWS:
                        raise InputError(f"{dpath}: {shape[0]} rows (limit {MAX_ROWS})", hint="split it")
            if total > MAX_DATA_BYTES:
                raise InputError(
                    f"{dpath} holds {total >> 20} MiB of arrays (limit {MAX_DATA_BYTES >> 20} MiB)",
                    hint="snapshot fewer samples",
                )
        with np.load(dpath, allow_pickle=False) as d:
            return d["x"], d["y"]
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise InputError(f"{dpath} is not a readable npz: {e}", hint="rewrite the snapshot") from None
