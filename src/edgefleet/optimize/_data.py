"""Calibration and evaluation data: loaded from .npz/.npy, image folders or Python iterables, and
checked against the model's inputs (names, dtypes, shapes, NaN) before anything is built."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import InputError
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._runner import TensorInfo

__all__ = ["Dataset", "load_data", "load_labels", "iter_batches", "synthetic_feed"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm"}


@dataclass
class Dataset:
    """Complete model feeds, one per sample, plus optional integer labels."""

    samples: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    source: str = "<memory>"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def head(self, n: int) -> Dataset:
        return Dataset(
            self.samples[:n],
            None if self.labels is None else self.labels[:n],
            self.source,
            list(self.notes),
        )


def _what_hint(what: str) -> str:
    return f"--{what[:5]}" if what in ("calibration", "evaluation") else what


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise InputError(
            f"{what} data {path} cannot be read as .npz: {e}",
            hint="write it with np.savez(path, <input name>=array, labels=...) (object arrays are refused)",
            path=str(path),
        ) from e


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (EOFError, OSError, ValueError) as e:
        raise InputError(
            f"{what} data {path} cannot be read as .npy: {e}",
            hint="write it with np.save(path, array) (object arrays are refused)",
            path=str(path),
        ) from e


def image_files(path: Path) -> tuple[list[tuple[Path, int | None]], list[Path]]:
    """Image files of a folder, with class indices when it holds one subfolder per class (sorted)."""
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, int | None]] = []
    if subdirs:  # one folder per class, sorted by name: ImageFolder convention
        for ci, d in enumerate(subdirs):
            files += [(f, ci) for f in sorted(d.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    else:
        files = [(f, None) for f in sorted(path.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    return files, subdirs


def _image_folder(
    path: Path, inputs: list[TensorInfo], preprocess: Any, what: str, limit: int, max_bytes: int
) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str]]:
    if len(inputs) != 1:
        raise InputError(
            f"an image folder can feed a model with one input; this model has {len(inputs)}",
            hint="give the data as .npz with one array per input name",
        )
    if preprocess is None:
        raise InputError(
            f"{what} data {path} is an image folder but no preprocessing contract was given",
            hint="pass preprocess=[{'op': 'decode_image'}, ...] (CLI: --preprocess steps.json)",
        )
    files, subdirs = image_files(path)
    if not files:
        raise InputError(
            f"{what} data folder {path} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))})",
            hint="put images in the folder, or one subfolder per class",
        )
    files = files[:limit]
    total = sum(f.stat().st_size for f, _ in files)
    if total > max_bytes:
        raise InputError(
            f"{what} images in {path} add up to {total} bytes, over the {max_bytes} limit",
            hint="use fewer images or raise EDGEFLEET_OPTIMIZE_MAX_DATA_BYTES",
        )
    if callable(preprocess) and not hasattr(preprocess, "apply_one"):
        fn: Callable[[bytes], np.ndarray] = preprocess
    else:
        from edgefleet.bundle import Preprocess  # the same contract code the device runs

        pp = preprocess if hasattr(preprocess, "apply_one") else Preprocess(preprocess)
        fn = pp.apply_one
    arrays = [np.asarray(fn(f.read_bytes())) for f, _ in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InputError(
            f"the preprocessing contract gave images of different shapes {sorted(shapes)[:4]}",
            hint="add a resize (and crop) step so every image ends up the same shape",
        )
    labels = np.array([c for _, c in files], dtype=np.int64) if subdirs else None
    notes = [f"{len(files)} images from {path}" + (f" in {len(subdirs)} class folders" if subdirs else "")]
    return {inputs[0].name: np.stack(arrays)}, labels, notes


def load_labels(labels: Any, what: str = "evaluation") -> np.ndarray:
    """Integer class labels from an array, a list or a .npy/.npz path."""
    if isinstance(labels, (str, Path)):
        p = Path(labels)
        if not p.is_file():
            raise InputError(f"labels file {p} does not exist", hint="give a .npy of integer labels")
        if p.suffix == ".npz":
            z = _read_npz(p, "labels")
            if "labels" not in z:
                raise InputError(f"{p} has no 'labels' array (has {sorted(z)})", hint="save it as labels=...")
            arr = z["labels"]
        else:
            arr = _read_npy(p, "labels")
    else:
        arr = np.asarray(labels)
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(
            f"{what} labels must be one integer per sample (shape [N]), got shape {list(arr.shape)}",
            hint="pass class indices, not one-hot vectors: labels.argmax(axis=1)",
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(
                f"{what} labels must be integer class indices; got non-integer values",
                hint="pass class indices (0..C-1) as an integer array",
            )
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(
            f"{what} labels have dtype {arr.dtype}, expected integers", hint="pass class indices 0..C-1"
        )
    if arr.size and arr.min() < 0:
        raise InputError(
            f"{what} labels contain negative values ({int(arr.min())})", hint="use indices 0..C-1"
        )
    return arr.astype(np.int64)


def load_data(
    source: Any,
    inputs: list[TensorInfo],
    *,
    what: str = "calibration",
    labels: Any = None,
    labels_key: str = "labels",
    limit: int | None = None,
    preprocess: Any = None,
    settings: OptimizeConfig | None = None,
) -> Dataset:
    """Load and validate data for ``inputs``.

    Args:
        source: a ``.npz`` (one array per input name, sample axis first; ``labels`` optional), a ``.npy``
            (single-input models), a folder of images (with ``preprocess``), a dict of arrays, an array,
            a ``Dataset``, or an iterable of feeds (dicts, arrays, or ``(feed, label)`` pairs).
        inputs: the model's inputs.
        what: "calibration" or "evaluation" (used in messages).
        labels: integer labels (array, list or .npy path); overrides a ``labels`` array in the .npz.
        labels_key: name of the labels array inside a .npz.
        limit: use the first ``limit`` samples.
        preprocess: preprocessing steps (list, ``edgefleet.bundle.Preprocess`` or callable) for image folders.

    Raises:
        InputError: unreadable data, wrong names, dtypes or shapes, NaN/Inf, or mismatching labels.
    """
    settings = settings or OptimizeConfig()
    limit = limit or 1 << 62
    notes: list[str] = []
    found_labels: np.ndarray | None = None
    name = str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"

    if isinstance(source, Dataset):
        arrays_or_items: Any = source.samples
        found_labels = source.labels
        notes += source.notes
    elif isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():
            raise InputError(
                f"{what} data {p} does not exist",
                hint="give a .npz with one array per model input, a .npy, or a folder of images",
            )
        if p.is_dir():
            arrays, found_labels, n = _image_folder(
                p, inputs, preprocess, what, limit, settings.max_data_bytes
            )
            arrays_or_items = arrays
            notes += n
        else:
            size = p.stat().st_size
            if size > settings.max_data_bytes:
                raise InputError(
                    f"{what} data {p} is {size} bytes, over the {settings.max_data_bytes} limit",
                    hint="use fewer samples or raise EDGEFLEET_OPTIMIZE_MAX_DATA_BYTES",
                )
            if p.suffix == ".npz":
                arrays = _read_npz(p, what)
                if labels_key in arrays:
                    found_labels = arrays.pop(labels_key)
                if len(inputs) == 1 and list(arrays) == ["arr_0"]:
                    # np.savez(path, x) names its one array arr_0: a single-input model takes it as is
                    arrays = {inputs[0].name: arrays.pop("arr_0")}
                    notes.append(f"{what} data: the unnamed array arr_0 feeds input {inputs[0].name!r}")
            elif p.suffix == ".npy":
                if len(inputs) != 1:
                    raise InputError(
                        f"{what} data {p} is one array but the model has {len(inputs)} inputs "
                        f"({', '.join(i.name for i in inputs)})",
                        hint="save a .npz with one array per input name",
                    )
                arrays = {inputs[0].name: _read_npy(p, what)}
            else:
                raise InputError(
                    f"{what} data {p} has an unknown format ({p.suffix or 'no suffix'})",
                    hint="use .npz (one array per input name), .npy, or a folder of images",
                )
            arrays_or_items = arrays
    elif isinstance(source, Mapping):
        arrays_or_items = {k: np.asarray(v) for k, v in source.items()}
        if labels_key in arrays_or_items and labels_key not in {i.name for i in inputs}:
            found_labels = arrays_or_items.pop(labels_key)
    elif isinstance(source, np.ndarray):
        if len(inputs) != 1:
            raise InputError(
                f"{what} data is one array but the model has {len(inputs)} inputs",
                hint="pass a dict {input name: array}",
            )
        arrays_or_items = {inputs[0].name: source}
    elif isinstance(source, Iterable):
        arrays_or_items = source
    else:
        raise InputError(
            f"{what} data of type {type(source).__name__} is not supported",
            hint="pass a .npz path, a dict of arrays, or an iterable of feeds",
        )

    if isinstance(arrays_or_items, dict):
        samples, n_total = _from_arrays(arrays_or_items, inputs, what, limit)
    else:
        samples, item_labels, n_total = _from_items(arrays_or_items, inputs, what, limit)
        if item_labels is not None:
            found_labels = item_labels

    if not samples:
        raise InputError(f"{what} data holds no samples", hint="give at least one sample per input")
    if n_total > len(samples):
        notes.append(f"used the first {len(samples)} of {n_total} {what} samples")

    cast_notes: set[str] = set()
    samples = [_check_sample(s, inputs, what, i, cast_notes) for i, s in enumerate(samples)]
    notes += sorted(cast_notes)
    _check_finite(samples, what)

    if labels is not None:
        found_labels = labels
    lab = None
    if found_labels is not None:
        lab = load_labels(found_labels, what)
        if len(lab) != n_total:
            raise InputError(
                f"{what} data has {n_total} samples but {len(lab)} labels",
                hint="give exactly one label per sample",
            )
        lab = lab[: len(samples)]
    return Dataset(samples, lab, name, notes)


def _from_arrays(
    arrays: dict[str, np.ndarray], inputs: list[TensorInfo], what: str, limit: int
) -> tuple[list[dict[str, np.ndarray]], int]:
    names = [i.name for i in inputs]
    extra = sorted(set(arrays) - set(names))
    missing = [n for n in names if n not in arrays]
    if extra or missing:
        raise InputError(
            f"{what} data has arrays {sorted(arrays)} but the model's inputs are {names}"
            + (f" (missing: {missing})" if missing else "")
            + (f" (unknown: {extra})" if extra else ""),
            hint=f"name the arrays after the model inputs: np.savez(path, {', '.join(f'{n}=...' for n in names)}"
            + ", labels=...)",
            expected=names,
            got=sorted(arrays),
        )
    counts = {}
    for spec in inputs:
        a = np.asarray(arrays[spec.name])
        if a.ndim == 0:
            raise InputError(
                f"{what} array {spec.name!r} is a scalar; the first axis must index samples",
                hint=f"wrap it: {spec.name}=np.full(N, value)",
            )
        if a.dtype == object:
            raise InputError(f"{what} array {spec.name!r} holds Python objects", hint="use numeric arrays")
        counts[spec.name] = a.shape[0]
    if len(set(counts.values())) != 1:
        raise InputError(
            f"{what} arrays have different sample counts {counts}",
            hint="every array must have the same length along axis 0 (one entry per sample)",
        )
    n_total = next(iter(counts.values()))
    n = min(n_total, limit)
    samples = []
    for i in range(n):
        s = {}
        for spec in inputs:
            a = arrays[spec.name]
            x = a[i]
            rank = len(spec.shape) if spec.shape is not None else None
            if rank is not None and x.ndim == rank - 1:
                x = x[np.newaxis]
            s[spec.name] = x
        samples.append(s)
    return samples, n_total


def _from_items(
    items: Iterable[Any], inputs: list[TensorInfo], what: str, limit: int
) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None, int]:
    samples: list[dict[str, np.ndarray]] = []
    labels: list[int] = []
    have_labels = None
    count = 0
    for item in items:
        count += 1
        if len(samples) >= limit:
            continue
        label = None
        if isinstance(item, tuple) and len(item) == 2:
            item, label = item
        if have_labels is None:
            have_labels = label is not None
        elif have_labels != (label is not None):
            raise InputError(
                f"{what} sample {count - 1}: some items carry labels and some do not",
                hint="yield (feed, label) for every sample or for none",
            )
        if isinstance(item, Mapping):
            feed = {k: np.asarray(v) for k, v in item.items()}
        elif len(inputs) == 1:
            feed = {inputs[0].name: np.asarray(item)}
        else:
            raise InputError(
                f"{what} sample {count - 1} is a {type(item).__name__}; a model with several inputs needs dicts",
                hint="yield {input name: array} for each sample",
            )
        names = [i.name for i in inputs]
        if set(feed) != set(names):
            raise InputError(
                f"{what} sample {count - 1} has arrays {sorted(feed)} but the model's inputs are {names}",
                hint="name each array after a model input",
                expected=names,
                got=sorted(feed),
            )
        for spec in inputs:
            x = feed[spec.name]
            rank = len(spec.shape) if spec.shape is not None else None
            if rank is not None and x.ndim == rank - 1:
                feed[spec.name] = x[np.newaxis]
        samples.append(feed)
        if label is not None:
            labels.append(int(np.asarray(label).reshape(-1)[0]))
    return samples, (np.asarray(labels, dtype=np.int64) if have_labels else None), count


def _check_sample(
    s: dict[str, np.ndarray], inputs: list[TensorInfo], what: str, idx: int, notes: set[str]
) -> dict[str, np.ndarray]:
    out = {}
    for spec in inputs:
        x = np.asarray(s[spec.name])
        if x.dtype != spec.dtype:
            if spec.dtype == np.float32 and x.dtype in (np.float64, np.float16):
                notes.add(f"{what} input {spec.name!r}: cast {x.dtype} to float32")
                x = x.astype(np.float32)
            elif (
                spec.dtype.kind in "iu"
                and x.dtype.kind in "iu"
                and np.can_cast(x.dtype, spec.dtype, "same_kind")
            ):
                if x.size and (x.min() < np.iinfo(spec.dtype).min or x.max() > np.iinfo(spec.dtype).max):
                    raise InputError(
                        f"{what} input {spec.name!r} sample {idx}: values do not fit {spec.dtype}",
                        hint=f"give {spec.dtype} data",
                    )
                notes.add(f"{what} input {spec.name!r}: cast {x.dtype} to {spec.dtype}")
                x = x.astype(spec.dtype)
            else:
                raise InputError(
                    f"{what} input {spec.name!r} has dtype {x.dtype} but the model expects {spec.dtype}",
                    hint=f"convert it: array.astype(np.{spec.dtype.name})",
                    input=spec.name,
                    expected=spec.dtype.name,
                    got=x.dtype.name,
                )
        if spec.shape is not None:
            ok = x.ndim == len(spec.shape) and all(
                not isinstance(d, int) or d == n for d, n in zip(spec.shape, x.shape, strict=False)
            )
            if not ok:
                want = "[" + ", ".join(str(d) if d is not None else "?" for d in spec.shape) + "]"
                raise InputError(
                    f"{what} input {spec.name!r} sample {idx} has shape {list(x.shape)} but the model expects {want}",
                    hint="give arrays shaped [N, *input shape without batch] (or [N, *input shape])",
                    input=spec.name,
                    expected=want,
                    got=list(x.shape),
                )
        out[spec.name] = x
    return out


def _check_finite(samples: list[dict[str, np.ndarray]], what: str) -> None:
    for name in samples[0]:
        if samples[0][name].dtype.kind != "f":
            continue
        bad = [i for i, s in enumerate(samples) if not np.all(np.isfinite(s[name]))]
        if bad:
            n_nan = sum(int(np.isnan(samples[i][name]).sum()) for i in bad)
            raise InputError(
                f"{what} input {name!r} has NaN or Inf values in {len(bad)} samples "
                f"(first: sample {bad[0]}; {n_nan} NaN values)",
                hint="clean the data (drop or impute those samples) before optimizing",
                input=name,
                samples=bad[:20],
            )


def iter_batches(
    ds: Dataset | Sequence[dict[str, np.ndarray]], inputs: list[TensorInfo], batch: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Feeds of up to ``batch`` consecutive samples, stacked along axis 0 where the model allows it.

    Samples are stacked only when every input has a symbolic axis 0 and each sample carries a batch
    axis of 1 with identical shapes; otherwise samples run one at a time (stateful or fixed-batch models).
    """
    samples = ds.samples if isinstance(ds, Dataset) else list(ds)
    stackable = batch > 1 and all(i.batch_dynamic for i in inputs)
    if not stackable:
        for s in samples:
            yield s, 1
        return
    group: list[dict[str, np.ndarray]] = []

    def flush() -> tuple[dict[str, np.ndarray], int]:
        feed = {k: np.concatenate([g[k] for g in group], axis=0) for k in group[0]}
        return feed, len(group)

    for s in samples:
        ok = all(v.ndim >= 1 and v.shape[0] == 1 for v in s.values())
        if not ok:
            if group:
                yield flush()
                group = []
            yield s, 1
            continue
        if group and (len(group) >= batch or any(group[0][k].shape != s[k].shape for k in s)):
            yield flush()
            group = []
        group.append(s)
    if group:
        yield flush()


def synthetic_feed(
    inputs: list[TensorInfo], dims: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """A random batch-1 feed for benchmarking when no data is given (symbolic dims from ``dims`` or 1)."""
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    # a symbolic dim that is some input's axis 0 (or is called batch) is the batch: size 1
    batch_names = {i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], str)}
    feed = {}
    for spec in inputs:
        if spec.shape is None:
            raise InputError(
                f"input {spec.name!r} has unknown rank; random data cannot be made for it",
                hint="pass real data (--data sample.npz)",
            )
        shape = []
        for j, d in enumerate(spec.shape):
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(int(dims[d]))
            elif j == 0 or d in batch_names or (isinstance(d, str) and "batch" in d.lower()):
                shape.append(1)
            else:
                raise InputError(
                    f"input {spec.name!r} has a symbolic dim {d or '?'} at axis {j}; its size is unknown",
                    hint=f"give its size (--dim {d or 'name'}=N) or pass real data (--data sample.npz)",
                )
        if spec.dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
        elif spec.dtype.kind == "b":
            feed[spec.name] = np.zeros(shape, dtype=bool)
        else:
            raise InputError(f"input {spec.name!r} of dtype {spec.dtype} needs real data", hint="pass --data")
    return feed
