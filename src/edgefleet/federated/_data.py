"""Training data a device holds: the dataset hook an application registers.

The hook is a folder of ``.npz`` files, each with ``x`` (N x F features, float) and ``y`` (N integer
labels). The agent config points at the folder; the data never leaves the device — only head weights do.
Reading is bounded: the declared (uncompressed) sizes inside each ``.npz`` are checked before anything
is inflated, and pickled objects are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgefleet.errors import InputError, PayloadTooLargeError

MAX_DATASET_BYTES = 256 * 1024 * 1024  # all files' arrays together, uncompressed
MAX_FILES = 10_000


def load_dataset(folder: Path, *, max_bytes: int = MAX_DATASET_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """All samples in ``folder``'s ``*.npz`` files as ``(x float32 [N, F], y int64 [N])``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"the federated dataset folder {folder} does not exist",
            hint="point the agent's federated data_dir at a folder of .npz files with x and y arrays",
        )
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise InputError(f"no .npz files in {folder}", hint="write samples as .npz files with x and y arrays")
    if len(files) > MAX_FILES:
        raise PayloadTooLargeError(f"{folder} holds {len(files)} .npz files; at most {MAX_FILES} are read")
    budget = max_bytes
    xs, ys = [], []
    for path in files:
        budget -= _declared_size(path, budget)
        x, y = _read_one(path)
        if xs and x.shape[1] != xs[0].shape[1]:
            raise InputError(f"{path} has {x.shape[1]} features; earlier files have {xs[0].shape[1]}")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _declared_size(path: Path, budget: int) -> int:
    try:
        with zipfile.ZipFile(path) as zf:
            size = sum(info.file_size for info in zf.infolist())
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(
            f"{path} is not a readable .npz file: {e}", hint="rewrite it with numpy.savez"
        ) from e
    if size > budget:
        raise PayloadTooLargeError(
            f"{path} would inflate the dataset past {MAX_DATASET_BYTES // (1024 * 1024)} MiB",
            hint="keep fewer samples on the device or split the job's data",
        )
    return size


def _read_one(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz or "y" not in npz:
                raise InputError(f"{path} lacks the x and y arrays", hint="numpy.savez(path, x=..., y=...)")
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path} cannot be read as .npz: {e}", hint="rewrite it with numpy.savez") from e
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"{path}: x must be (N, F) and y (N,); got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{path}: x must be numeric and y integer labels")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{path}: x holds NaN or infinity")
    return x, y.astype(np.int64)


def label_skewed_split(y: np.ndarray, n_parts: int, *, alpha: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """Indices of ``n_parts`` non-IID partitions: each class spread over parts by a Dirichlet(alpha) draw."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(n_parts, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.extend(chunk.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def digits_federation(n_devices: int, root: Path, *, alpha: float = 0.5, seed: int = 0):
    """Example federation for tests, benchmarks and demos: scikit-learn's digits (scaled to [0, 1]) split
    non-IID over ``n_devices`` dataset folders under ``root``.

    Returns ``(folders, base head, held-out (x, y), pooled device data (x, y))``; the base head saw 60
    "public" samples only, the held-out set (400 samples) stays on the server.
    """
    from sklearn.datasets import load_digits

    from edgefleet.federated._head import SoftmaxHead

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    public, held_out, private = order[:60], order[60:460], order[460:]
    base = SoftmaxHead.zeros(x.shape[1], 10).train(x[public], y[public], epochs=3, lr=0.1)
    folders = []
    for i, part in enumerate(label_skewed_split(y[private], n_devices, alpha=alpha, seed=seed)):
        folder = Path(root) / f"device{i}"
        folder.mkdir(parents=True)
        np.savez(folder / "samples.npz", x=x[private][part], y=y[private][part])
        folders.append(folder)
    return folders, base, (x[held_out], y[held_out]), (x[private], y[private])
