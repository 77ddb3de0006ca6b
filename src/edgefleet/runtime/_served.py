"""One served model (manifest, contract, validator, pipeline, in-flight accounting) and the small parts the
runtime assembles it from: borrowed shared predictors, the per-batch event-loop waker, bare-model manifests."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import (
    ValidationError,
)
from edgefleet.protocol import Manifest, Postprocess
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._cascade import score_output_of
from edgefleet.runtime._config import RuntimeConfig
from edgefleet.runtime._predictor import (
    Prediction,
    Predictor,
    PredictorMetadata,
)
from edgefleet.runtime._result import Result, softmax
from edgefleet.runtime._validation import Validator, to_array

__all__ = ["manifest_for_model"]

log = logging.getLogger("edgefleet.runtime._runtime")


class _Borrowed:
    """A shared predictor inside a per-model pipeline: closing the pipeline does not close it."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner

    @property
    def metadata(self) -> PredictorMetadata:
        return self.inner.metadata

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        return self.inner.predict(batch, **opts)  # type: ignore[return-value]

    def close(self) -> None:
        pass


def _is_predictor(obj: Any) -> bool:
    return callable(getattr(obj, "predict", None)) and hasattr(obj, "metadata")


class _LoopWaker:
    """Wakes an event loop once per batch, not once per request.

    The batcher answers a batch's tickets one after the other from its worker thread; each
    ``call_soon_threadsafe`` is a write to the loop's self-pipe, so the futures to settle are
    collected and settled by a single scheduled callback.
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[Any] = []

    def add(self, fut: Any) -> None:
        with self.lock:
            self.pending.append(fut)
            first = len(self.pending) == 1
        if first:
            with contextlib.suppress(RuntimeError):  # the loop is closing; its callers are gone
                self.loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        with self.lock:
            futs, self.pending = self.pending, []
        for fut in futs:
            if not fut.done():
                fut.set_result(None)


_WAKERS: dict[int, _LoopWaker] = {}
_WAKERS_LOCK = threading.Lock()


def _waker(loop: Any, fut: Any) -> Any:
    key = id(loop)
    w = _WAKERS.get(key)
    if w is None or w.loop is not loop:
        with _WAKERS_LOCK:
            w = _WAKERS.get(key)
            if w is None or w.loop is not loop:
                w = _WAKERS[key] = _LoopWaker(loop)
    return lambda _ticket: w.add(fut)


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "model"
    return s[:64]


def manifest_for_model(path: Path, metadata: PredictorMetadata, version: str = "0.0.0") -> Manifest:
    """A manifest for a bare model file (no contract; postprocess picks the score output)."""
    score = score_output_of(metadata)
    return Manifest(
        name=_slug(path.stem),
        version=version,
        variant="local",
        model_file=path.name,
        model_format="tflite" if path.suffix == ".tflite" else "onnx",
        inputs=list(metadata.inputs),
        outputs=list(metadata.outputs),
        postprocess=Postprocess(output=score, argmax=score is not None),
    )


class _Served:
    """One served model: its manifest, contract, validator and pipeline, plus in-flight accounting."""

    def __init__(
        self,
        manifest: Manifest,
        pipeline: Predictor,
        *,
        contract: Any,
        validator: Validator | None,
        config: RuntimeConfig,
        bundle: Any = None,
        owns_bundle: bool = False,
    ) -> None:
        self.manifest = manifest
        self.pipeline = pipeline
        self.contract = contract
        self.validator = validator
        self.config = config
        self.bundle = bundle
        self.owns_bundle = owns_bundle
        self.inflight = 0
        self.retired = False
        self.lock = threading.Lock()  # the raw lock: entering it is cheaper than the Condition
        self.cond = threading.Condition(self.lock)
        self.input_names = [s.name for s in manifest.inputs]
        self.tier = pipeline.metadata.tier
        # the HTTP API awaits this batcher directly when nothing else is stacked on it
        self.batcher = pipeline if isinstance(pipeline, Batcher) else None
        pp = manifest.postprocess
        self.post = pp if config.postprocess and pp.task == "classification" else None
        self.score = None
        if self.post is not None:
            names = {s.name for s in manifest.outputs}
            self.score = pp.output if pp.output in names else score_output_of(pipeline.metadata)

    # --- request path -----------------------------------------------------------------------------

    def prepare(self, raw: Any, *, contract: bool = True) -> dict[str, np.ndarray]:
        """Raw inputs → model tensors: contract (if any), then validation (if on)."""
        if contract and self.contract is not None:
            if isinstance(raw, Mapping):
                if set(raw) != set(self.input_names):
                    raise ValidationError(
                        f"inputs {sorted(map(str, raw))} do not match the model's {self.input_names}",
                        hint="send one raw input per model input (see GET /v1/model)",
                    )
                raw = raw[self.input_names[0]]
            if not isinstance(raw, np.ndarray | list | tuple):
                raise ValidationError(
                    f"raw input must be a batch (a list or an array), not {type(raw).__name__}",
                    hint="wrap one example in a list",
                )
            if (
                isinstance(raw, list | tuple)
                and raw
                and not isinstance(raw[0], bytes | bytearray | memoryview)
            ):
                # JSON numbers: one C-level conversion lets the contract run vectorised over the batch
                raw = to_array(self.input_names[0], raw)
            tensors = {self.input_names[0]: self.contract.apply(raw)}
        elif type(raw) is dict:
            tensors = raw if self.validator is not None else raw.copy()  # the validator returns a new dict
        elif isinstance(raw, Mapping):
            tensors = dict(raw)
        elif len(self.input_names) == 1:
            tensors = {self.input_names[0]: raw}
        else:
            raise ValidationError(
                f"the model has inputs {self.input_names}; pass a mapping of name to array",
                hint="send {'inputs': {name: array, ...}}",
            )
        if self.validator is not None:
            return self.validator.check(tensors)
        for k, v in tensors.items():
            if not isinstance(v, np.ndarray):
                tensors[k] = to_array(k, v)
        return tensors

    def finish(self, out: Prediction, t0: float) -> Result:
        m = self.manifest
        res = Result(
            outputs=out,
            tiers=out.tiers,
            events=out.events,
            model=m.name,
            version=m.version,
            variant=m.variant,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )
        if self.post is not None and self.score is not None and self.score in out:
            scores = np.asarray(out[self.score], dtype=np.float32)
            if scores.ndim == 2 and scores.shape[1] > 1:
                if self.post.softmax:
                    scores = res.outputs[self.score] = softmax(scores)
                res._post = (self.post, scores)  # confidence, classes, labels: on first use
        return res

    # --- lifetime ---------------------------------------------------------------------------------

    def retire(self) -> None:
        """Take no new requests (the ones running finish)."""
        with self.cond:
            self.retired = True

    def drain(self, timeout: float) -> bool:
        """Wait until no request is running on this model; False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: self.inflight == 0, timeout)

    def close(self) -> None:
        try:
            self.pipeline.close()
        finally:
            if self.owns_bundle and self.bundle is not None:
                self.bundle.close()
