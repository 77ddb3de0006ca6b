"""``Runtime``: the in-process API (the HTTP API is a thin layer over it) with atomic hot swap.

Pipeline built for each served model (each part optional, from ``RuntimeConfig``)::

    Cached( Cascade( Fallback( Batcher(primary), Timeout(backup), CacheTier, Heuristic ),
                     Fallback( Timeout(large), Breaker(CloudPredictor) ) ) )

Raw inputs go through the bundle's preprocessing contract, then validation against the manifest,
then the pipeline, then the manifest's postprocessing (softmax, argmax, labels).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError as PydanticValidationError

from edgefleet.errors import (
    ConfigError,
    DeadlineExceededError,
    EdgefleetError,
    GoldenMismatchError,
    InferenceError,
    InputError,
    ValidationError,
)
from edgefleet.protocol import Manifest, Postprocess
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._cache import AnswerCache, Cached, CacheTier
from edgefleet.runtime._cascade import Cascade, EscalationOutbox, resend_escalations, score_output_of
from edgefleet.runtime._cloud import CloudPredictor
from edgefleet.runtime._config import RuntimeConfig
from edgefleet.runtime._engines import load_engine
from edgefleet.runtime._fallback import Fallback, Heuristic
from edgefleet.runtime._guards import Breaker, Timeout
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import (
    Event,
    Prediction,
    Predictor,
    PredictorMetadata,
    Priority,
    as_prediction,
)
from edgefleet.runtime._validation import Validator, to_array

__all__ = ["Result", "Runtime"]

log = logging.getLogger(__name__)


class Result:
    """One answer of the runtime: outputs, where each row came from, and the postprocessed view.

    ``classes``, ``labels`` and ``confidence`` (the manifest's postprocessing) are worked out on first
    use, so a caller that reads only the outputs never pays for them.
    """

    __slots__ = (
        "outputs",
        "tiers",
        "events",
        "model",
        "version",
        "variant",
        "latency_ms",
        "_classes",
        "_labels",
        "_confidence",
        "_post",
    )

    def __init__(
        self,
        outputs: dict[str, np.ndarray],
        tiers: tuple[str, ...],
        events: tuple[Event, ...],
        model: str,
        version: str,
        variant: str,
        latency_ms: float,
        classes: np.ndarray | None = None,
        labels: list[str] | None = None,
        confidence: np.ndarray | None = None,
    ) -> None:
        self.outputs = outputs
        self.tiers = tiers
        self.events = events
        self.model = model
        self.version = version
        self.variant = variant
        self.latency_ms = latency_ms
        self._classes = classes
        self._labels = labels
        self._confidence = confidence
        self._post: tuple[Postprocess, np.ndarray] | None = None  # (postprocess, scores) still to apply

    def __repr__(self) -> str:
        shapes = {k: getattr(v, "shape", None) for k, v in self.outputs.items()}
        return f"Result({shapes}, model={self.model!r}, tier={self.tier!r}, latency_ms={self.latency_ms:.3f})"

    def _postprocess(self) -> None:
        post, probs = self._post  # type: ignore[misc]
        self._post = None
        self._confidence = probs.max(axis=1)
        if post.argmax:
            self._classes = probs.argmax(axis=1)
            labels = post.labels
            if labels:
                self._labels = [labels[i] if i < len(labels) else str(i) for i in self._classes]

    @property
    def classes(self) -> np.ndarray | None:
        if self._post is not None:
            self._postprocess()
        return self._classes

    @classes.setter
    def classes(self, value: np.ndarray | None) -> None:
        self._classes = value

    @property
    def labels(self) -> list[str] | None:
        if self._post is not None:
            self._postprocess()
        return self._labels

    @labels.setter
    def labels(self, value: list[str] | None) -> None:
        self._labels = value

    @property
    def confidence(self) -> np.ndarray | None:
        if self._post is not None:
            self._postprocess()
        return self._confidence

    @confidence.setter
    def confidence(self, value: np.ndarray | None) -> None:
        self._confidence = value

    @property
    def tier(self) -> str:
        """The tier that answered every row, or ``mixed``."""
        tiers = self.tiers
        if not tiers:
            return "none"
        first = tiers[0]
        return first if len(tiers) == 1 or tiers.count(first) == len(tiers) else "mixed"

    @property
    def fallback(self) -> bool:
        return any(e.kind == "fallback" for e in self.events)

    @property
    def escalated(self) -> bool:
        return any(e.kind == "escalated" for e in self.events)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the body of ``POST /v1/predict``)."""
        rows = []
        for i, tier in enumerate(self.tiers):
            row: dict[str, Any] = {"tier": tier}
            if self.classes is not None:
                row["class"] = int(self.classes[i])
            if self.labels is not None:
                row["label"] = self.labels[i]
            if self.confidence is not None:
                row["confidence"] = round(float(self.confidence[i]), 6)
            rows.append(row)
        return {
            "model": {"name": self.model, "version": self.version, "variant": self.variant},
            "outputs": {k: _jsonable(v) for k, v in self.outputs.items()},
            "predictions": rows,
            "tier": self.tier,
            "events": [
                {"kind": e.kind, "tier": e.tier, "detail": e.detail, "rows": e.rows} for e in self.events
            ],
            "latency_ms": round(self.latency_ms, 3),
        }


def _jsonable(v: np.ndarray) -> Any:
    # JSON has no NaN/Inf; a model that emits them gets null rather than an invalid document
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        return np.where(np.isfinite(v), v, None).tolist()
    return v.tolist()


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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
                    scores = res.outputs[self.score] = _softmax(scores)
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


class Runtime:
    """Serves one model (hot-swappable) through the configured pipeline.

    Use :meth:`from_bundle` (a bundle archive, an extracted bundle directory, a ``Bundle``, or a bare
    ``.onnx``/``.tflite`` file). Thread-safe: call :meth:`predict` from many threads at once.
    """

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        *,
        backup: Any = None,
        large: Any = None,
        cloud_url: str | None = None,
        outbox: EscalationOutbox | None = None,
        heuristic: Any = None,
        metrics: RuntimeMetrics | None = None,
        wrap: Callable[[Predictor], Predictor] | None = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self._wrap = wrap
        self.metrics = metrics or RuntimeMetrics()
        self._m = self.metrics if self.config.metrics else None
        # read at scrape time, so the request path pays nothing for it
        self.metrics.inflight.set_function(lambda: self._served.inflight if self._served else 0)
        self._lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._served: _Served | None = None
        self._closed = False
        self.outbox = outbox
        self.cache = AnswerCache(self.config.cache) if self.config.cache.enabled else None
        self._backup_src, self._large_src, self._heuristic_src = backup, large, heuristic
        self._cloud_url = cloud_url or self.config.cloud.url
        self._shared: list[Predictor] = []
        self._backup: Predictor | None = None
        self._large: Predictor | None = None
        self._cloud: Predictor | None = None
        self._targets: list[Predictor] = []

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def from_bundle(cls, source: Any, config: RuntimeConfig | None = None, **kw: Any) -> Runtime:
        """Load ``source`` and start serving it.

        Args:
            source: a ``Bundle``, a bundle archive, an extracted bundle directory, a model file, or
                a Predictor (served as is, e.g. an engine wrapped by telemetry).
            config: runtime settings (default: from ``EDGEFLEET_*`` environment variables).
            backup: a fallback model (same inputs): Bundle, path or Predictor.
            large: a larger model to escalate low-confidence answers to: Bundle, path or Predictor.
            cloud_url: an HTTP endpoint to escalate to (behind a circuit breaker).
            outbox: where escalations wait when they cannot be sent (``telemetry.Outbox``).
            heuristic: a last-resort answer: a mapping of output name to one row, or ``fn(batch)``.
            wrap: ``fn(pipeline) -> predictor`` applied to each served model's pipeline (observers).
        """
        rt = cls(config, **kw)
        try:
            rt.swap(source)
        except BaseException:
            rt.close()
            raise
        return rt

    def _open(self, source: Any) -> tuple[Any, bool, Manifest | None, Path | bytes | None]:
        """(bundle or None, whether we own it, manifest or None, model path (or bytes) or None)."""
        if hasattr(source, "manifest") and hasattr(source, "model_path"):
            model = getattr(source, "model_source", None)  # bytes when the model is not on disk in clear
            return (
                source,
                False,
                source.manifest,
                model if isinstance(model, bytes) else Path(source.model_path),
            )
        path = Path(source)
        if not path.exists():
            raise InputError(
                f"{path} does not exist", hint="pass a bundle archive, a bundle directory or a model file"
            )
        if path.suffix in (".onnx", ".tflite"):
            return None, False, None, path
        from edgefleet.bundle import Bundle

        b = Bundle.from_dir(path) if path.is_dir() else Bundle.open(path)
        return b, True, b.manifest, Path(b.model_path)

    def _engine(self, path: Path | bytes, manifest: Manifest | None, tier: str) -> Predictor:
        cfg = self.config.engine
        if manifest is None:
            return load_engine(path, config=cfg, tier=tier)
        eng = load_engine(
            path,
            model_format=manifest.model_format,
            config=cfg,
            name=manifest.name,
            version=manifest.version,
            tier=tier,
            inputs=manifest.inputs,
            outputs=manifest.outputs,
        )
        if manifest.postprocess.output:
            eng._meta = eng.metadata.replace(  # type: ignore[attr-defined]
                extra={**eng.metadata.extra, "score_output": manifest.postprocess.output}
            )
        return eng

    def _guard(self, p: Predictor) -> Predictor:
        fb = self.config.fallback
        return Timeout(p, fb.timeout_ms / 1000, max_stuck=fb.max_stuck_calls) if fb.timeout_ms else p

    def _side(self, src: Any, tier: str) -> Predictor:
        """A backup or large model from a path, a Bundle or a Predictor."""
        if _is_predictor(src):
            return src
        bundle, owns, manifest, path = self._open(src)
        eng = self._engine(path, manifest, tier)  # type: ignore[arg-type]
        if owns:  # the session holds the model in memory; the extracted files can go
            bundle.close()
        return eng

    def _build_shared(self, primary_meta: PredictorMetadata) -> None:
        """Backup, large model and cloud: built once, shared by every served model across swaps."""
        if self._backup_src is not None and self._backup is None:
            self._backup = self._guard(self._side(self._backup_src, "backup"))
            self._shared.append(self._backup)
        targets: list[Predictor] = []
        if self._large_src is not None and self._large is None:
            self._large = self._guard(self._side(self._large_src, "large"))
            self._shared.append(self._large)
        if self._large is not None:
            targets.append(self._large)
        if self._cloud_url and self._cloud is None:
            cloud = CloudPredictor(self._cloud_url, primary_meta, config=self.config.cloud)
            self._cloud = Breaker(cloud, self.config.breaker, metrics=self._m)
            self._shared.append(self._cloud)
        if self._cloud is not None:
            targets.append(self._cloud)
        self._targets = targets

    def _build(self, source: Any) -> _Served:
        cfg = self.config
        if _is_predictor(source):  # an engine or a composition built by the caller
            bundle, owns, manifest, path = None, False, None, None
        else:
            bundle, owns, manifest, path = self._open(source)
        try:
            if path is None:
                engine: Predictor = source
                meta = engine.metadata
                try:
                    manifest = manifest_for_model(Path(f"{meta.name}.onnx"), meta, meta.version)
                except PydanticValidationError:  # a version that is not semver: call it 0.0.0
                    manifest = manifest_for_model(Path(f"{meta.name}.onnx"), meta)
            else:
                engine = self._engine(path, manifest, "primary")
            if manifest is None:
                manifest = manifest_for_model(path, engine.metadata)  # type: ignore[arg-type]
            contract = None
            if cfg.preprocess and bundle is not None and len(bundle.preprocess):
                contract = bundle.preprocess
            if bundle is not None and cfg.golden_check and manifest.golden is not None:
                self._golden_check(bundle, engine)
            self._build_shared(engine.metadata)
            fb = cfg.fallback
            if cfg.batcher.enabled:  # the batcher's watchdog enforces the model timeout
                timeout_s = fb.timeout_ms / 1000 if fb.timeout_ms else None
                primary: Predictor = Batcher(
                    engine, cfg.batcher, metrics=self._m, timeout_s=timeout_s, max_stuck=fb.max_stuck_calls
                )
            else:
                primary = self._guard(engine)
            tiers: list[Predictor] = [primary]
            if self._backup is not None:
                tiers.append(_Borrowed(self._backup))
            if self.cache is not None:
                tiers.append(CacheTier(self.cache, engine.metadata))
            if self._heuristic_src is not None:
                h = self._heuristic_src
                tiers.append(h if isinstance(h, Heuristic) else Heuristic(h, engine.metadata))
            pipeline: Predictor = (
                Fallback(*tiers, config=cfg.fallback, breaker=cfg.breaker, metrics=self._m)
                if len(tiers) > 1
                else primary
            )
            if self._targets:
                large: Predictor = (
                    _Borrowed(self._targets[0])
                    if len(self._targets) == 1
                    else Fallback(
                        *map(_Borrowed, self._targets),
                        config=cfg.fallback.model_copy(update={"breaker": False}),
                        metrics=self._m,
                    )
                )
                esc = cfg.escalation
                updates: dict[str, Any] = {}
                if esc.score_output is None and manifest.postprocess.output:
                    updates["score_output"] = manifest.postprocess.output
                if "softmax" not in esc.model_fields_set and manifest.postprocess.softmax:
                    updates["softmax"] = True
                pipeline = Cascade(
                    pipeline,
                    large,
                    config=esc.model_copy(update=updates),
                    outbox=self.outbox,
                    metrics=self._m,
                )
            if self.cache is not None:
                pipeline = Cached(pipeline, self.cache, metrics=self._m)
            if self._wrap is not None:  # e.g. telemetry's Aggregator; applied again to every swapped-in model
                pipeline = self._wrap(pipeline)
            validator = Validator(manifest.inputs, cfg.validation) if cfg.validation.enabled else None
            return _Served(
                manifest,
                pipeline,
                contract=contract,
                validator=validator,
                config=cfg,
                bundle=bundle,
                owns_bundle=owns,
            )
        except BaseException:
            if owns and bundle is not None:
                bundle.close()
            raise

    def _golden_check(self, bundle: Any, engine: Predictor) -> None:
        """Run the bundle's golden set through the contract and this engine before serving it."""
        from edgefleet.bundle import compare_outputs

        golden = bundle.golden
        feeds = bundle.model_inputs(golden.inputs_raw)
        got = engine.predict(feeds)
        cmp = compare_outputs(dict(got), golden.expected, atol=golden.atol, rtol=golden.rtol)
        bad = {k: v for k, v in cmp.items() if not v["ok"]}
        if bad:
            raise GoldenMismatchError(
                f"bundle {bundle.manifest.key} fails its golden set on this runtime: {bad}",
                hint="do not serve this bundle; rebuild it or check the runtime version",
                outputs=bad,
            )

    # --- serving ----------------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        served = self._served
        if served is None:
            raise InferenceError("no model is loaded", hint="call Runtime.swap(bundle) first")
        return served.manifest

    @property
    def pipeline(self) -> Predictor:
        """The predictor composition serving requests now."""
        served = self._served
        if served is None:
            raise InferenceError("no model is loaded", hint="call Runtime.swap(bundle) first")
        return served.pipeline

    def _acquire(self) -> _Served:
        # One lock per request: a model retired by swap() is never entered again, so a request that
        # read the old reference just before the switch retries on the new one.
        while True:
            served = self._served
            if served is None:
                raise InferenceError("the runtime is not serving", hint="it is closed or has no model")
            with served.lock:
                if not served.retired:
                    served.inflight += 1
                    return served

    @staticmethod
    def _release(served: _Served) -> None:
        with served.lock:
            served.inflight -= 1
            if served.inflight == 0 and served.retired:
                served.cond.notify_all()

    def _deadline(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        if deadline <= 0:
            self._count_error("deadline_exceeded")
            raise DeadlineExceededError(
                f"deadline of {deadline * 1000:.0f} ms has already passed; the request was not run",
                hint="send a positive deadline in the future",
            )
        return time.monotonic() + deadline

    def _failed(self, e: BaseException) -> EdgefleetError:
        if isinstance(e, EdgefleetError):
            self._count_error(e.code)
            return e
        log.error("unexpected error while answering", exc_info=e)  # a bug or a library error
        self._count_error("inference")
        return InferenceError(f"unexpected error: {type(e).__name__}: {e}", hint="see the runtime log")

    def predict(
        self,
        raw_inputs: Any,
        *,
        priority: int = Priority.NORMAL,
        deadline: float | None = None,
        escalate: bool | None = None,
        preprocessed: bool = False,
    ) -> Result:
        """Answer one request.

        Args:
            raw_inputs: ``{input name: value}`` or, for a single-input model, the value itself: a
                batch (axis 0 = rows) of raw samples the bundle's contract turns into model input.
            priority: higher is served first when the batcher has a queue (:class:`Priority`).
            deadline: seconds from now; the request fails with DeadlineExceededError rather than
                answer later, and is never run once it has passed.
            escalate: None escalates by confidence, True always, False never.
            preprocessed: the inputs are model tensors already: skip the contract (not validation).

        Raises:
            ValidationError, PreprocessError, PayloadTooLargeError: the input is wrong (4xx).
            OverloadedError, DeadlineExceededError, InferenceError: the runtime could not answer.
        """
        t0 = time.perf_counter()
        abs_deadline = self._deadline(deadline)
        served = self._acquire()
        try:
            tensors = served.prepare(raw_inputs, contract=not preprocessed)
            out = as_prediction(
                served.pipeline.predict(tensors, priority=priority, deadline=abs_deadline, escalate=escalate),
                served.tier,
            )
            res = served.finish(out, t0)
        except Exception as e:
            err = self._failed(e)
            if err is e:
                raise
            raise err from e
        finally:
            self._release(served)
        if self._m:
            self._m.answered(res.tier, res.latency_ms / 1000)
        return res

    async def apredict(
        self,
        raw_inputs: Any,
        *,
        priority: int = Priority.NORMAL,
        deadline: float | None = None,
        escalate: bool | None = None,
        preprocessed: bool = False,
        limiter: Any = None,
    ) -> Result:
        """:meth:`predict` for asyncio callers (the HTTP API), with the same behaviour.

        When the pipeline is just the batcher, the request is queued from the event loop and awaited
        without occupying a thread; otherwise the whole call runs in a worker thread (``limiter``: an
        ``anyio.CapacityLimiter`` bounding those threads).
        """
        import asyncio

        served = self._served
        if served is None or served.batcher is None:
            import functools

            import anyio

            call = functools.partial(
                self.predict,
                raw_inputs,
                priority=priority,
                deadline=deadline,
                escalate=escalate,
                preprocessed=preprocessed,
            )
            return await anyio.to_thread.run_sync(call, limiter=limiter)
        t0 = time.perf_counter()
        abs_deadline = self._deadline(deadline)
        served = self._acquire()
        try:
            batcher = served.batcher
            if batcher is None:  # swapped to a pipeline without a bare batcher meanwhile
                out = served.pipeline.predict(
                    served.prepare(raw_inputs, contract=not preprocessed),
                    priority=priority,
                    deadline=abs_deadline,
                    escalate=escalate,
                )
            else:
                tensors = served.prepare(raw_inputs, contract=not preprocessed)
                # a model cheaper than a thread hand-off answers on the event loop itself
                out = batcher.try_inline(tensors, priority, abs_deadline, cheap_only=True)
            if out is None:
                ticket = batcher.submit(tensors, priority=priority, deadline=abs_deadline)
                loop = asyncio.get_running_loop()
                fut = loop.create_future()
                ticket.on_done(_waker(loop, fut))
                try:
                    if abs_deadline is None:
                        await fut
                    else:
                        await asyncio.wait_for(fut, max(0.0, abs_deadline - time.monotonic()))
                except TimeoutError:
                    batcher.cancel(ticket)
                    if not ticket.wait(0):
                        raise DeadlineExceededError(
                            "request deadline passed while it waited for the model",
                            hint="send a longer deadline, or lower the load on this device",
                        ) from None
                out = ticket.result(0)
            res = served.finish(as_prediction(out, served.tier), t0)
        except Exception as e:
            err = self._failed(e)
            if err is e:
                raise
            raise err from e
        finally:
            self._release(served)
        if self._m:
            self._m.answered(res.tier, res.latency_ms / 1000)
        return res

    def _count_error(self, code: str) -> None:
        if self._m:
            self._m.refused(code)

    # --- hot swap ---------------------------------------------------------------------------------

    def swap(self, source: Any) -> Manifest:
        """Load ``source`` beside the current model, switch atomically, drain and close the old one.

        Requests already running finish on the old model; new ones go to the new model; none fails
        because of the swap. If the new model cannot load or fails its golden set, the old one keeps
        serving and the error is raised.
        """
        with self._swap_lock:
            if self._closed:
                raise ConfigError("the runtime is closed", hint="create a new Runtime")
            new = self._build(source)
            with self._lock:
                old, self._served = self._served, new
            if old is not None:
                old.retire()
            m = new.manifest
            if self._m:
                self._m.serving(m.name, m.version, m.variant)
                if old is not None:
                    self._m.swaps.inc()
            log.info("serving %s", m.key)
            if old is not None:
                if not old.drain(self.config.drain_timeout_s):
                    log.warning(
                        "old model still has %d requests after %.0f s; closing it anyway",
                        old.inflight,
                        self.config.drain_timeout_s,
                    )
                old.close()
            return m

    # --- escalation outbox ------------------------------------------------------------------------

    def resend_escalations(self, limit: int = 100) -> int:
        """Send escalations waiting in the outbox to the cloud (when it is reachable again)."""
        if self.outbox is None or self._cloud is None:
            return 0
        return resend_escalations(
            self.outbox, self._cloud, kind=self.config.escalation.outbox_kind, limit=limit
        )

    def status(self) -> dict[str, Any]:
        """What is served and how the guards stand (for ``GET /v1/model`` and logs)."""
        served = self._served
        breakers = {}
        for p in self._walk(served.pipeline if served else None):
            if isinstance(p, Breaker):
                breakers[p.breaker.name] = p.breaker.state
        return {
            "serving": served is not None and not self._closed,
            "inflight": served.inflight if served else 0,
            "breakers": breakers,
            "cache_entries": len(self.cache) if self.cache is not None else None,
        }

    def _walk(self, p: Any) -> list[Any]:
        seen, todo = [], [p]
        while todo:
            x = todo.pop()
            if x is None or any(x is s for s in seen):
                continue
            seen.append(x)
            for attr in ("inner", "small", "large"):
                todo.append(getattr(x, attr, None))
            todo.extend(getattr(x, "tiers", ()))
        return seen

    def close(self) -> None:
        """Stop serving: wait for running requests (up to ``drain_timeout_s``), then free everything."""
        with self._swap_lock:
            with self._lock:
                self._closed = True
                served, self._served = self._served, None
            if served is not None:
                served.retire()
                served.drain(self.config.drain_timeout_s)
                served.close()
            for p in self._shared:
                p.close()
            self._shared.clear()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
