"""Request bodies of the local API, decoded within their limits: JSON tensors (lists or base64), bounded
``.npz``, priorities and deadlines."""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from edgefleet.errors import (
    InputError,
    PayloadTooLargeError,
    ValidationError,
)
from edgefleet.runtime._predictor import Priority

_PRIORITY_NAMES = {p.name.lower(): int(p) for p in Priority}
_MAX_DEADLINE_MS = 3_600_000.0

__all__ = [
    "PredictRequest",
    "decode_tensor",
    "decode_value",
    "load_npz_bounded",
    "parse_deadline",
    "parse_priority",
    "pydantic_problems",
]


class TensorB64(BaseModel):
    """A tensor sent as base64 bytes (little-endian, C order) with its dtype and shape."""

    model_config = ConfigDict(extra="forbid")
    b64: str = Field(description="base64 of the raw array bytes")
    dtype: Literal["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
    shape: list[int] = Field(max_length=8, description="array shape; axis 0 is the batch")


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict`` (JSON)."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] | list[Any] = Field(
        description="{input name: nested list | TensorB64 | list of {b64} samples}, or, for a "
        "single-input model, the batch itself. Axis 0 is the batch: wrap one example in a list."
    )
    priority: Literal["low", "normal", "high", "urgent"] | int = Field(
        "normal", description="higher is served first (0..3 or a name)"
    )
    deadline_ms: float | None = Field(
        None, description="answer within this many milliseconds or fail with 504; never run late"
    )
    escalate: bool | None = Field(None, description="null: by confidence; true: always; false: never")
    preprocessed: bool = Field(False, description="inputs are model tensors: skip the contract")


def parse_priority(value: Any) -> int:
    if isinstance(value, bool):
        raise ValidationError(
            "priority must be a name or an integer", hint="low, normal, high, urgent or 0..3"
        )
    if isinstance(value, str):
        p = _PRIORITY_NAMES.get(value.lower())
        if p is None:
            raise ValidationError(
                f"unknown priority {value!r}", hint="use low, normal, high or urgent (or 0..3)"
            )
        return p
    if isinstance(value, int) and min(Priority) <= value <= max(Priority):
        return value
    raise ValidationError(f"priority {value!r} is out of range", hint="use 0 (low) .. 3 (urgent)")


def parse_deadline(ms: Any) -> float | None:
    if ms is None:
        return None
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not np.isfinite(ms):
        raise ValidationError("deadline_ms must be a finite number of milliseconds", hint="e.g. 100")
    if ms > _MAX_DEADLINE_MS:
        raise ValidationError(
            f"deadline_ms {ms} is more than an hour", hint="omit deadline_ms for no deadline"
        )
    return ms / 1000.0  # <= 0 is refused by the runtime with a 504 "already passed"


def decode_tensor(name: str, obj: dict[str, Any], max_bytes: int) -> np.ndarray:
    try:
        t = TensorB64.model_validate(obj)
    except PydanticValidationError as e:
        raise ValidationError(
            f"input {name!r}: invalid base64 tensor: {pydantic_problems(e)}",
            hint='send {"b64": ..., "dtype": "float32", "shape": [1, 64]}',
        ) from e
    if len(t.b64) > max_bytes * 4 // 3 + 4:
        raise PayloadTooLargeError(f"input {name!r} is larger than {max_bytes} bytes", hint="send less data")
    try:
        raw = base64.b64decode(t.b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValidationError(
            f"input {name!r}: b64 is not valid base64", hint="encode with standard base64"
        ) from e
    dtype = np.dtype(t.dtype).newbyteorder("<")
    if any(d < 0 for d in t.shape) or int(np.prod(t.shape, dtype=np.float64)) * dtype.itemsize != len(raw):
        raise ValidationError(
            f"input {name!r}: {len(raw)} bytes do not make shape {t.shape} of {t.dtype}",
            hint="bytes must equal prod(shape) * itemsize",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(t.shape).astype(dtype.newbyteorder("="))


def load_npz_bounded(body: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """Read an ``.npz`` request body with its decompressed size bounded *before* anything is inflated.

    ``np.load`` inflates every member first: 1 MB of deflated zeros became 1.17 GB of memory. Here each
    member's declared size and its ``.npy`` header (shape x itemsize) are checked against what is left of
    ``max_bytes`` before the member is read, and ``zipfile`` never yields more than the declared size.

    Raises:
        PayloadTooLargeError: the arrays would take more than ``max_bytes``.
        InputError: the body is not an ``.npz`` of plain numeric arrays.
    """

    def too_large(what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f".npz body {what}, more than the {max_bytes} bytes allowed decompressed",
            hint="send fewer rows per request, or raise EDGEFLEET_API_MAX_BODY_BYTES",
            limit=max_bytes,
        )

    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = zf.infolist()
            # each member is an .npy header (numpy caps it at 10,000 bytes) and then the array's bytes
            if sum(i.file_size for i in infos) > max_bytes + 10_240 * len(infos):
                raise too_large("declares members that add up")
            left = max_bytes
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise InputError(
                        f".npz member {info.filename!r} is not an .npy array",
                        hint="write it with numpy.savez",
                    )
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    if dtype.hasobject:
                        raise InputError(
                            f"array {info.filename[:-4]!r} holds Python objects", hint="send numbers only"
                        )
                    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                    if nbytes > left:
                        raise too_large(f"array {info.filename[:-4]!r} has shape {list(shape)}")
                    left -= nbytes
                with zf.open(info) as f:
                    out[info.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    except (PayloadTooLargeError, InputError):
        raise
    except Exception as e:  # zipfile/npy format errors of many kinds
        raise InputError(f"body is not a valid .npz file: {e}", hint="write it with numpy.savez") from e
    return out


def decode_value(name: str, value: Any, max_bytes: int) -> Any:
    if isinstance(value, dict):
        return decode_tensor(name, value, max_bytes)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        samples = []
        for v in value:
            if set(v) != {"b64"} or not isinstance(v["b64"], str):
                raise ValidationError(
                    f"input {name!r}: byte samples must be objects with one key 'b64'",
                    hint='send [{"b64": "..."}, ...] for images or other encoded samples',
                )
            try:
                samples.append(base64.b64decode(v["b64"], validate=True))
            except (binascii.Error, ValueError) as e:
                raise ValidationError(
                    f"input {name!r}: b64 is not valid base64", hint="encode with base64"
                ) from e
        return samples
    return value


def pydantic_problems(e: PydanticValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<body>'}: {err['msg']}" for err in e.errors()[:5]
    )
