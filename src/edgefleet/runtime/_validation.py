"""Input validation against the manifest: names, dtype, shape (symbolic dims), finiteness, ranges, size.

An invalid request never reaches a model; the error says which input, what was expected and where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgefleet.errors import PayloadTooLargeError, ValidationError
from edgefleet.protocol import TensorSpec
from edgefleet.runtime._config import ValidationConfig
from edgefleet.runtime._predictor import Prediction, Predictor, PredictorMetadata

__all__ = ["Validated", "Validator", "to_array"]

_HINT = "send inputs matching GET /v1/model (names, dtypes, shapes, value ranges)"


def _where(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def to_array(name: str, value: Any, dtype: str | None = None) -> np.ndarray:
    """Turn JSON numbers / nested lists / arrays into an ndarray, refusing ragged or mixed values."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:  # ragged nested lists
            raise ValidationError(
                f"input {name!r} is not a rectangular array: {e}",
                hint="every row must have the same length (no ragged lists)",
                input=name,
            ) from e
    if arr.dtype == object and dtype != "string":
        raise ValidationError(
            f"input {name!r} is not a rectangular array of numbers",
            hint="send nested lists of numbers with the same length at each level",
            input=name,
        )
    if arr.dtype.kind in "US" and dtype != "string":
        raise ValidationError(
            f"input {name!r} holds text, but the model expects {dtype}",
            hint=_HINT,
            input=name,
            expected=dtype,
        )
    return arr


class Validator:
    """Checks (and safely casts) a batch of named arrays against ``specs``."""

    def __init__(self, specs: Sequence[TensorSpec], config: ValidationConfig | None = None) -> None:
        self.specs = {s.name: s for s in specs}
        self.config = config or ValidationConfig()
        self._fast = self._plan()

    def _plan(self) -> tuple[tuple[Any, ...], ...] | None:
        """Per input: (name, dtype, fixed dims by axis, symbolic dims by axis, finite?, range) for check_fast.

        None when some input takes the general path every time (text, or a spec the fast path does not
        cover).
        """
        plan = []
        for name, spec in self.specs.items():
            if spec.dtype == "string":
                return None
            dtype = np.dtype(spec.dtype)
            fixed = tuple((axis, d) for axis, d in enumerate(spec.shape) if isinstance(d, int) and d >= 0)
            symbolic = tuple((axis, d) for axis, d in enumerate(spec.shape) if not isinstance(d, int))
            finite = self.config.check_finite and dtype.kind == "f"
            vr = spec.value_range if self.config.check_range and dtype.kind in "fiub" else None
            plan.append((name, dtype, len(spec.shape), fixed, symbolic, finite, vr))
        return tuple(plan)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.check(batch)

    def check(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The batch as arrays of the declared dtypes; raises ValidationError on the first problem."""
        out = self._check_fast(batch)
        return out if out is not None else self._check(batch)

    def _check_fast(self, batch: Any) -> dict[str, np.ndarray] | None:
        """The common case without allocating: a dict holding exactly the inputs, as arrays of the
        declared dtype and rank, within the limits, finite and in range, judged with whole-array
        reductions (a sum is finite only if every value is; min and max bound the range). Anything
        else (or any doubt) returns None and the general check runs, with its precise error messages.
        """
        plan = self._fast
        if plan is None or type(batch) is not dict or len(batch) != len(plan):
            return None
        cfg = self.config
        total = 0
        dims: dict[str, int] | None = None
        for name, dtype, ndim, fixed, symbolic, finite, vr in plan:
            arr = batch.get(name)
            if type(arr) is not np.ndarray or arr.dtype != dtype or arr.ndim != ndim:
                return None
            shape = arr.shape
            for axis, want in fixed:
                if shape[axis] != want:
                    return None
            for axis, sym in symbolic:
                got = shape[axis]
                if got == 0 or (axis == 0 and got > cfg.max_rows):
                    return None
                if dims is None:
                    dims = {sym: got}
                elif dims.setdefault(sym, got) != got:
                    return None
            total += arr.nbytes
            if total > cfg.max_payload_bytes:
                return None
            if vr is not None:
                if arr.size and not (vr[0] <= arr.min() and arr.max() <= vr[1]):  # False for NaN too
                    return None
            elif finite and not math.isfinite(arr.sum()):  # an overflowing sum also goes the long way
                return None
        return dict(batch)

    def _check(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(batch, Mapping):
            raise ValidationError(
                f"inputs must be a mapping of input name to array, not {type(batch).__name__}", hint=_HINT
            )
        unknown = sorted(set(batch) - set(self.specs))
        if unknown and not self.config.allow_unknown_inputs:
            raise ValidationError(
                f"unknown input(s) {unknown}; the model takes {sorted(self.specs)}",
                hint=_HINT,
                unknown=unknown,
                expected=sorted(self.specs),
            )
        missing = sorted(set(self.specs) - set(batch))
        if missing:
            raise ValidationError(
                f"missing input(s) {missing}; the model takes {sorted(self.specs)}",
                hint=_HINT,
                missing=missing,
            )
        out: dict[str, np.ndarray] = {}
        dims: dict[str, tuple[int, str]] = {}
        total = 0
        for name, spec in self.specs.items():
            arr = to_array(name, batch[name], spec.dtype)
            total += arr.nbytes
            if total > self.config.max_payload_bytes:
                raise PayloadTooLargeError(
                    f"inputs are larger than {self.config.max_payload_bytes} bytes",
                    hint="send fewer rows per request, or raise EDGEFLEET_VALIDATION_MAX_PAYLOAD_BYTES",
                    limit=self.config.max_payload_bytes,
                )
            arr = self._dtype(name, spec, arr)
            self._shape(name, spec, arr, dims)
            if arr.dtype.kind == "f" and self.config.check_finite:
                finite = np.isfinite(arr)
                if not finite.all():
                    idx = tuple(np.argwhere(~finite)[0])
                    raise ValidationError(
                        f"input {name!r} has a non-finite value ({arr[idx]}) at {_where(idx)}",
                        hint="replace NaN and Inf before sending",
                        input=name,
                        index=list(map(int, idx)),
                    )
            if spec.value_range is not None and self.config.check_range and arr.dtype.kind in "fiub":
                lo, hi = spec.value_range
                bad = (arr < lo) | (arr > hi)
                if bad.any():
                    idx = tuple(np.argwhere(bad)[0])
                    raise ValidationError(
                        f"input {name!r} value {arr[idx]} at {_where(idx)} is outside [{lo}, {hi}]",
                        hint="check the preprocessing: the model was trained on this range",
                        input=name,
                        index=list(map(int, idx)),
                        value_range=[lo, hi],
                    )
            out[name] = arr
        return out

    def _dtype(self, name: str, spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
        if spec.dtype == "string":
            if arr.dtype.kind not in "USO":
                raise ValidationError(f"input {name!r} must be text, got {arr.dtype}", hint=_HINT, input=name)
            return arr.astype(object)
        want = np.dtype(spec.dtype)
        if arr.dtype == want:
            return arr
        if arr.size == 0:
            return arr.astype(want)
        ok = np.can_cast(arr.dtype, want, casting="same_kind") or (
            arr.dtype.kind in "iub" and want.kind in "iuf"
        )
        if not ok:
            raise ValidationError(
                f"input {name!r} has dtype {arr.dtype}, the model expects {want} "
                f"(a {arr.dtype.kind!r} value cannot become {want.kind!r} without loss)",
                hint=_HINT,
                input=name,
                expected=str(want),
                got=str(arr.dtype),
            )
        if want.kind in "iu" and arr.dtype.kind in "iub":
            info = np.iinfo(want)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise ValidationError(
                    f"input {name!r} has values outside {want} ({lo}..{hi})",
                    hint=_HINT,
                    input=name,
                )
        if want.kind == "f" and arr.dtype.kind == "f" and want.itemsize < arr.dtype.itemsize:
            with np.errstate(over="ignore"):
                cast = arr.astype(want)
            if self.config.check_finite and not np.isfinite(cast).all() and np.isfinite(arr).all():
                idx = tuple(np.argwhere(~np.isfinite(cast))[0])
                raise ValidationError(
                    f"input {name!r} value {arr[idx]} at {_where(idx)} overflows {want}",
                    hint=_HINT,
                    input=name,
                    index=list(map(int, idx)),
                )
            return cast
        return arr.astype(want)

    def _shape(self, name: str, spec: TensorSpec, arr: np.ndarray, dims: dict[str, tuple[int, str]]) -> None:
        if arr.ndim != len(spec.shape):
            raise ValidationError(
                f"input {name!r} has shape {list(arr.shape)}, the model expects {spec.shape}",
                hint=_HINT + "; the first dimension is the batch (wrap one example in a list)",
                input=name,
                expected=spec.shape,
                got=list(arr.shape),
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(want, int):
                if want >= 0 and want != got:
                    raise ValidationError(
                        f"input {name!r} has {got} at axis {axis}, the model expects {want} "
                        f"(shape {spec.shape})",
                        hint=_HINT,
                        input=name,
                        axis=axis,
                        expected=spec.shape,
                        got=list(arr.shape),
                    )
                continue
            if got == 0:
                raise ValidationError(
                    f"input {name!r} is empty at axis {axis}", hint="send at least one row", input=name
                )
            bound = dims.get(want)
            if bound is not None and bound[0] != got:
                raise ValidationError(
                    f"dimension {want!r} is {bound[0]} in input {bound[1]!r} but {got} in {name!r}",
                    hint="inputs sharing a symbolic dimension must agree on its size",
                    input=name,
                )
            dims[want] = (got, name)
            if axis == 0 and got > self.config.max_rows:
                raise PayloadTooLargeError(
                    f"input {name!r} has {got} rows, more than the {self.config.max_rows} allowed",
                    hint="split the request, or raise EDGEFLEET_VALIDATION_MAX_ROWS",
                    input=name,
                )


class Validated:
    """A predictor that validates every batch against ``inner``'s input specs first."""

    def __init__(self, inner: Predictor, config: ValidationConfig | None = None) -> None:
        self.inner = inner
        self.validator = Validator(inner.metadata.inputs, config)

    @property
    def metadata(self) -> PredictorMetadata:
        return self.inner.metadata

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        return self.inner.predict(self.validator.check(batch), **opts)  # type: ignore[return-value]

    def close(self) -> None:
        self.inner.close()
