"""The preprocessing contract: declarative steps run by the same code at build time and on the device.

Semantics (the one rule to remember): **a step transforms one sample**. ``Preprocess.apply(batch)``
runs the steps over every sample of a batch and returns the stacked model input, whose axis 0 is the
batch axis; ``Preprocess.apply_one(sample)`` runs them on a single sample. Inside ``apply`` the batch axis
already exists, so ``layout: add_batch`` is a no-op there and only matters for ``apply_one``. Positive
``axis`` parameters count sample axes (0 = the first axis of one sample); negative ones count from the end.

Steps that are pure array arithmetic (scale, normalize, cast, ...) run vectorised over a whole batch
array; the others (decode, resize, crop, ...) run sample by sample. Both paths give the same result.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from edgefleet.errors import PreprocessError
from edgefleet.protocol import PreprocessStep

__all__ = ["Preprocess", "STEP_TYPES"]

_DTYPES = Literal["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
_PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is in the agent extra
        raise PreprocessError(
            "image steps need Pillow", hint="pip install 'edgefleet[agent]' (or pillow)"
        ) from e
    return Image


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class _Step(BaseModel):
    """Base of every step: frozen, unknown parameters refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    op: str
    vectorized: ClassVar[bool] = False  # True: batch() works on a whole (batch, ...) array

    def sample(self, x: Any) -> Any:
        """Transform one sample."""
        raise NotImplementedError

    def in_batch(self, x: Any) -> Any:
        """Transform one sample that is part of a batch (differs from sample() only for add_batch)."""
        return self.sample(x)

    def batch(self, x: np.ndarray) -> np.ndarray:
        """Transform a (batch, ...) array; only called when ``vectorized``."""
        raise NotImplementedError


def _array(x: Any, op: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (bytes, bytearray, memoryview, str)):
        raise ValueError(f"{op} needs an array, got {type(x).__name__} (decode it first with decode_image)")
    return np.asarray(x)


def _batch_axis(axis: int) -> int:
    return axis + 1 if axis >= 0 else axis


# --- images ----------------------------------------------------------------------------------------


class DecodeImage(_Step):
    """PNG/JPEG/... bytes (or a 1-D uint8 array of them) -> HxW or HxWxC uint8 array (Pillow)."""

    op: Literal["decode_image"] = "decode_image"
    mode: Literal["L", "RGB", "RGBA"] | None = Field(None, description="convert to this Pillow mode")
    max_pixels: int = Field(40_000_000, gt=0, description="refuse larger images (decompression bombs)")

    def sample(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            if x.dtype != np.uint8 or x.ndim != 1:
                raise ValueError(f"expected encoded image bytes, got an array {x.dtype}{list(x.shape)}")
            x = x.tobytes()
        if not isinstance(x, (bytes, bytearray, memoryview)):
            raise ValueError(f"expected encoded image bytes, got {type(x).__name__}")
        image_mod = _pil()
        try:
            img = image_mod.open(io.BytesIO(bytes(x)))
            w, h = img.size
            if w * h > self.max_pixels:
                raise ValueError(f"image is {w}x{h}, more than max_pixels={self.max_pixels}")
            img.load()
        except (OSError, image_mod.DecompressionBombError, SyntaxError) as e:
            raise ValueError(f"cannot decode image: {e}") from e
        if self.mode is not None and img.mode != self.mode:
            img = img.convert(self.mode)
        elif img.mode not in ("L", "RGB", "RGBA"):
            img = img.convert("RGB")
        return np.asarray(img).copy()


def _resize_array(x: np.ndarray, hw: tuple[int, int], method: str) -> np.ndarray:
    image_mod = _pil()
    h, w = hw
    resample = _PIL_RESAMPLE[method]
    if x.ndim not in (2, 3):
        raise ValueError(f"resize needs an HxW or HxWxC image, got shape {list(x.shape)}")
    if x.dtype == np.uint8 and (x.ndim == 2 or x.shape[2] in (3, 4)):
        return np.asarray(image_mod.fromarray(x).resize((w, h), resample=resample))
    xf = x.astype(np.float32, copy=False)
    if xf.ndim == 2:
        return np.asarray(image_mod.fromarray(xf, mode="F").resize((w, h), resample=resample))
    chans = [
        np.asarray(image_mod.fromarray(np.ascontiguousarray(xf[:, :, c]), mode="F").resize((w, h), resample))
        for c in range(xf.shape[2])
    ]
    out = np.stack(chans, axis=-1)
    return out.astype(x.dtype) if x.dtype != np.uint8 else np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Resize(_Step):
    """Resize an HxW[xC] image. ``size`` is [height, width], or an int: the shorter side, aspect kept."""

    op: Literal["resize"] = "resize"
    size: int | tuple[int, int]
    method: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = "bilinear"

    @model_validator(mode="after")
    def _positive(self) -> Resize:
        if min(_hw(self.size)) <= 0:
            raise ValueError("size must be positive")
        return self

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        if isinstance(self.size, int):
            h, w = x.shape[0], x.shape[1]
            s = self.size
            hw = (s, max(1, round(w * s / h))) if h <= w else (max(1, round(h * s / w)), s)
        else:
            hw = _hw(self.size)
        return _resize_array(x, hw, self.method)


class CenterCrop(_Step):
    """Crop the centre [height, width] (or an int for a square) of an HxW[xC] image."""

    op: Literal["center_crop"] = "center_crop"
    size: int | tuple[int, int]

    @model_validator(mode="after")
    def _positive(self) -> CenterCrop:
        if min(_hw(self.size)) <= 0:
            raise ValueError("size must be positive")
        return self

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        h, w = _hw(self.size)
        if x.ndim < 2 or x.shape[0] < h or x.shape[1] < w:
            raise ValueError(f"cannot crop {h}x{w} from an image of shape {list(x.shape)}; resize first")
        top, left = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
        return x[top : top + h, left : left + w]


class Crop(_Step):
    """Crop a box of an HxW[xC] image."""

    op: Literal["crop"] = "crop"
    top: int = Field(ge=0)
    left: int = Field(ge=0)
    height: int = Field(gt=0)
    width: int = Field(gt=0)

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        if x.ndim < 2 or x.shape[0] < self.top + self.height or x.shape[1] < self.left + self.width:
            raise ValueError(f"crop box falls outside an image of shape {list(x.shape)}")
        return x[self.top : self.top + self.height, self.left : self.left + self.width]


class Grayscale(_Step):
    """HxWx3/4 -> HxW with ITU-R 601-2 luma (Pillow's 'L' for uint8); ``keep_dims`` keeps HxWx1."""

    op: Literal["grayscale"] = "grayscale"
    keep_dims: bool = False

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        if x.ndim == 3 and x.shape[2] == 1:
            g = x[:, :, 0]
        elif x.ndim == 2:
            g = x
        elif x.ndim == 3 and x.shape[2] in (3, 4):
            if x.dtype == np.uint8:
                g = np.asarray(_pil().fromarray(np.ascontiguousarray(x[:, :, :3])).convert("L"))
            else:
                g = (x[:, :, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float64)).astype(x.dtype)
        else:
            raise ValueError(f"grayscale needs HxW or HxWx(1|3|4), got shape {list(x.shape)}")
        return g[:, :, None] if self.keep_dims else g


class Rgb(_Step):
    """HxW or HxWx1 -> HxWx3 (repeat), HxWx4 -> HxWx3 (drop alpha)."""

    op: Literal["rgb"] = "rgb"

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        if x.ndim == 2:
            return np.repeat(x[:, :, None], 3, axis=2)
        if x.ndim == 3 and x.shape[2] == 1:
            return np.repeat(x, 3, axis=2)
        if x.ndim == 3 and x.shape[2] in (3, 4):
            return x[:, :, :3]
        raise ValueError(f"rgb needs HxW or HxWx(1|3|4), got shape {list(x.shape)}")


# --- arithmetic (vectorised) -------------------------------------------------------------------------


class _Elementwise(_Step):
    vectorized: ClassVar[bool] = True

    def batch(self, x: np.ndarray) -> np.ndarray:
        return self.sample(x)


class ToFloat(_Elementwise):
    """Cast to a float dtype without rescaling (use ``scale`` for that)."""

    op: Literal["to_float"] = "to_float"
    dtype: Literal["float32", "float16", "float64"] = "float32"

    def sample(self, x: Any) -> np.ndarray:
        return _array(x, self.op).astype(self.dtype)


class Scale(_Elementwise):
    """``x * factor + offset``, keeping the float dtype (integers become float32)."""

    op: Literal["scale"] = "scale"
    factor: float = 1.0
    offset: float = 0.0

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        return (x * x.dtype.type(self.factor) + x.dtype.type(self.offset)).astype(x.dtype, copy=False)


class Normalize(_Elementwise):
    """``(x - mean[c]) / std[c]`` along the channel ``axis`` (default: last)."""

    op: Literal["normalize"] = "normalize"
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)
    axis: int = -1

    @model_validator(mode="after")
    def _check(self) -> Normalize:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        return self

    def _run(self, x: np.ndarray, axis: int) -> np.ndarray:
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        n = len(self.mean)
        if x.ndim == 0 or (n > 1 and x.shape[axis] != n):
            raise ValueError(f"normalize has {n} channels but axis {self.axis} of {list(x.shape)} differs")
        shape = [1] * x.ndim
        shape[axis] = n
        mean = np.asarray(self.mean, dtype=x.dtype).reshape(shape)
        std = np.asarray(self.std, dtype=x.dtype).reshape(shape)
        return (x - mean) / std

    def sample(self, x: Any) -> np.ndarray:
        return self._run(_array(x, self.op), self.axis)

    def batch(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, _batch_axis(self.axis))


class Cast(_Elementwise):
    """Cast to ``dtype`` (float -> int truncates toward zero, as numpy does)."""

    op: Literal["cast"] = "cast"
    dtype: _DTYPES

    def sample(self, x: Any) -> np.ndarray:
        return _array(x, self.op).astype(self.dtype)


class Clip(_Elementwise):
    """Clip values to [min, max] (either bound may be omitted, not both)."""

    op: Literal["clip"] = "clip"
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Clip:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        return np.clip(x, self.min, self.max).astype(x.dtype, copy=False)


class Layout(_Step):
    """Axis layout: ``hwc_to_chw``, ``chw_to_hwc``, ``add_batch`` (one sample -> 1xS) or ``squeeze``."""

    op: Literal["layout"] = "layout"
    transform: Literal["hwc_to_chw", "chw_to_hwc", "add_batch", "squeeze"]
    axis: int | None = Field(None, description="squeeze only: the axis to drop (default: all of size 1)")
    vectorized: ClassVar[bool] = True

    def _run(self, x: np.ndarray, batched: bool) -> np.ndarray:
        lead = 1 if batched else 0
        if self.transform in ("hwc_to_chw", "chw_to_hwc"):
            if x.ndim != 3 + lead:
                raise ValueError(f"{self.transform} needs a 3-D sample, got shape {list(x.shape)[lead:]}")
            order = (2, 0, 1) if self.transform == "hwc_to_chw" else (1, 2, 0)
            return np.ascontiguousarray(np.transpose(x, tuple(range(lead)) + tuple(a + lead for a in order)))
        if self.transform == "add_batch":
            return x if batched else x[None]
        if self.axis is not None:
            ax = _batch_axis(self.axis) if batched else self.axis
            return np.squeeze(x, axis=ax)
        axes = tuple(i for i in range(lead, x.ndim) if x.shape[i] == 1)
        return np.squeeze(x, axis=axes)

    def sample(self, x: Any) -> np.ndarray:
        return self._run(_array(x, self.op), batched=False)

    def in_batch(self, x: Any) -> np.ndarray:
        return x if self.transform == "add_batch" else self.sample(x)

    def batch(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, batched=True)


class Reshape(_Step):
    """Reshape one sample to ``shape`` (one -1 allowed); the batch axis is kept."""

    op: Literal["reshape"] = "reshape"
    shape: list[int] = Field(min_length=1)
    vectorized: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self) -> Reshape:
        if sum(1 for d in self.shape if d == -1) > 1 or any(d == 0 or d < -1 for d in self.shape):
            raise ValueError("shape dims must be positive, with at most one -1")
        return self

    def sample(self, x: Any) -> np.ndarray:
        return _array(x, self.op).reshape(self.shape)

    def batch(self, x: np.ndarray) -> np.ndarray:
        return x.reshape([x.shape[0], *self.shape])


# --- audio and tabular --------------------------------------------------------------------------------


class PadOrTrim(_Step):
    """Pad with ``value`` or trim at the end so ``axis`` has exactly ``length`` entries (audio)."""

    op: Literal["pad_or_trim"] = "pad_or_trim"
    length: int = Field(gt=0)
    axis: int = -1
    value: float = 0.0
    vectorized: ClassVar[bool] = True

    def _run(self, x: np.ndarray, axis: int) -> np.ndarray:
        if x.ndim == 0:
            raise ValueError("pad_or_trim needs at least a 1-D sample")
        axis = axis % x.ndim
        n = x.shape[axis]
        if n >= self.length:
            return np.take(x, np.arange(self.length), axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, self.length - n)
        return np.pad(x, pad, constant_values=np.asarray(self.value).astype(x.dtype))

    def sample(self, x: Any) -> np.ndarray:
        return self._run(_array(x, self.op), self.axis)

    def batch(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, _batch_axis(self.axis))


class StandardizeColumns(_Elementwise):
    """``(x[..., j] - mean[j]) / std[j]`` for tabular rows (last axis = columns)."""

    op: Literal["standardize_columns"] = "standardize_columns"
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> StandardizeColumns:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        return self

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        if x.ndim == 0 or x.shape[-1] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} columns, got shape {list(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        return (x - np.asarray(self.mean, dtype=x.dtype)) / np.asarray(self.std, dtype=x.dtype)


class SelectColumns(_Elementwise):
    """Keep the columns ``indices`` (last axis), in that order."""

    op: Literal["select_columns"] = "select_columns"
    indices: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SelectColumns:
        if any(i < 0 for i in self.indices):
            raise ValueError("indices must be >= 0")
        return self

    def sample(self, x: Any) -> np.ndarray:
        x = _array(x, self.op)
        if x.ndim == 0 or max(self.indices) >= x.shape[-1]:
            raise ValueError(f"column {max(self.indices)} does not exist in shape {list(x.shape)}")
        return x[..., self.indices]


STEP_TYPES: dict[str, type[_Step]] = {
    cls.model_fields["op"].default: cls
    for cls in (
        DecodeImage,
        Resize,
        CenterCrop,
        Crop,
        Grayscale,
        Rgb,
        ToFloat,
        Scale,
        Normalize,
        Layout,
        Cast,
        Clip,
        PadOrTrim,
        StandardizeColumns,
        SelectColumns,
        Reshape,
    )
}


def _parse_step(index: int, step: Any) -> _Step:
    if isinstance(step, _Step):
        return step
    if isinstance(step, PreprocessStep):
        step = step.model_dump()
    if not isinstance(step, dict):
        raise PreprocessError(
            f"preprocess step {index} must be an object like {{'op': 'scale', ...}}, got {type(step).__name__}",
            hint="write each step as a mapping with an 'op' key",
            step=index,
        )
    op = step.get("op")
    cls = STEP_TYPES.get(op) if isinstance(op, str) else None
    if cls is None:
        raise PreprocessError(
            f"preprocess step {index}: unknown op {op!r}",
            hint=f"known ops: {', '.join(sorted(STEP_TYPES))}",
            step=index,
            op=op,
        )
    try:
        return cls.model_validate(step)
    except PydanticValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'step'}: {err['msg']}" for err in e.errors()
        )
        raise PreprocessError(
            f"preprocess step {index} ({op}): {problems}",
            hint=f"fix step {index}'s parameters ({cls.__doc__.splitlines()[0] if cls.__doc__ else op})",
            step=index,
            op=op,
        ) from e


def _stack(items: list[Any]) -> np.ndarray | list[Any]:
    if items and all(isinstance(i, np.ndarray) for i in items):
        first = items[0]
        if all(i.shape == first.shape and i.dtype == first.dtype for i in items):
            return np.stack(items)
    return items


class Preprocess:
    """A validated list of preprocessing steps (see the module docstring for batch semantics).

    Args:
        steps: dicts like ``{"op": "resize", "size": [28, 28]}``, ``PreprocessStep``s or step models.

    Raises:
        PreprocessError: an unknown op or a bad parameter, naming the step index, op and parameter.
    """

    def __init__(self, steps: Sequence[dict[str, Any] | PreprocessStep | _Step] | None = None) -> None:
        if steps is not None and not isinstance(steps, (list, tuple)):
            raise PreprocessError(
                f"preprocess must be a list of steps, got {type(steps).__name__}",
                hint='write it as a JSON/YAML list: [{"op": "scale", "factor": 0.0625}]',
            )
        self.steps: list[_Step] = [_parse_step(i, s) for i, s in enumerate(steps or [])]

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Preprocess({[s.op for s in self.steps]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and self.steps == other.steps

    def to_manifest(self) -> list[PreprocessStep]:
        """The steps as generic manifest entries, every parameter spelled out (defaults included)."""
        return [PreprocessStep.model_validate(s.model_dump(mode="json")) for s in self.steps]

    def apply_one(self, sample: Any) -> np.ndarray:
        """Run the steps on one sample (``add_batch`` adds the batch axis here)."""
        x = sample
        for i, step in enumerate(self.steps):
            try:
                x = step.sample(x)
            except PreprocessError:
                raise
            except (ValueError, TypeError, IndexError, OSError) as e:
                raise PreprocessError(
                    f"preprocess step {i} ({step.op}) failed: {e}",
                    hint="check the input matches what the contract expects",
                    step=i,
                    op=step.op,
                ) from e
        return _final(_array_or_fail(x))

    def apply(self, raw: np.ndarray | Sequence[Any]) -> np.ndarray:
        """Run the steps over a batch and return the model input (axis 0 = batch).

        Args:
            raw: an array whose axis 0 indexes samples, or a list of samples (e.g. PNG bytes).
        """
        if isinstance(raw, np.ndarray):
            if raw.ndim == 0:
                raise PreprocessError(
                    "apply() takes a batch, got a 0-d array", hint="use apply_one() for one sample"
                )
            data: np.ndarray | list[Any] = raw
        elif isinstance(raw, (list, tuple)):
            data = _stack(list(raw))
        else:
            raise PreprocessError(
                f"apply() takes a batch (an array with the batch on axis 0, or a list), got {type(raw).__name__}",
                hint="wrap one sample in a list, or call apply_one()",
            )
        if len(data) == 0:
            raise PreprocessError("apply() got an empty batch", hint="pass at least one sample")
        for i, step in enumerate(self.steps):
            j = -1
            try:
                if isinstance(data, np.ndarray) and step.vectorized:
                    data = step.batch(data)
                else:
                    out = []
                    for item in data:
                        j += 1  # kept outside the loop variable: the error message names the sample
                        out.append(step.in_batch(item))
                    data = _stack(out)
            except PreprocessError:
                raise
            except (ValueError, TypeError, IndexError, OSError) as e:
                where = f" on sample {j}" if j >= 0 else ""
                raise PreprocessError(
                    f"preprocess step {i} ({step.op}) failed{where}: {e}",
                    hint="check the input matches what the contract expects",
                    step=i,
                    op=step.op,
                ) from e
        if isinstance(data, list):
            for item in data:
                _array_or_fail(item)
            shapes = sorted({str(list(np.shape(d))) for d in data})
            raise PreprocessError(
                f"after the last step samples differ in shape or type ({', '.join(shapes[:4])})",
                hint="add resize / center_crop / pad_or_trim so every sample ends with the same shape",
            )
        return _final(data)


def _array_or_fail(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise PreprocessError(
            f"the contract ends with a {type(x).__name__}, not an array",
            hint="add decode_image (for encoded images) or another step that yields an array",
        )
    return x


def _final(x: np.ndarray) -> np.ndarray:
    if x.dtype == object:
        raise PreprocessError(
            "the contract produced an object array", hint="add decode_image / cast so the result is numeric"
        )
    return np.ascontiguousarray(x)
