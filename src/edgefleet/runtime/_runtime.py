"""``Runtime``: the in-process API (the HTTP API is a thin layer over it) with atomic hot swap.

Pipeline built for each served model (each part optional, from ``RuntimeConfig``)::

    Cached( Cascade( Fallback( Batcher(primary), Timeout(backup), CacheTier, Heuristic ),
                     Fallback( Timeout(large), Breaker(CloudPredictor) ) ) )

Raw inputs go through the bundle's preprocessing contract, then validation against the manifest,
then the pipeline, then the manifest's postprocessing (softmax, argmax, labels).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from edgefleet.errors import (
    ConfigError,
    DeadlineExceededError,
    EdgefleetError,
    GoldenMismatchError,
    InferenceError,
    InputError,
)
from edgefleet.protocol import Manifest
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._cache import AnswerCache, Cached, CacheTier
from edgefleet.runtime._cascade import Cascade, EscalationOutbox, resend_escalations
from edgefleet.runtime._cloud import CloudPredictor
from edgefleet.runtime._config import RuntimeConfig
from edgefleet.runtime._engines import load_engine
from edgefleet.runtime._fallback import Fallback, Heuristic
from edgefleet.runtime._guards import Breaker, Timeout
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import (
    Predictor,
    PredictorMetadata,
    Priority,
    as_prediction,
)
from edgefleet.runtime._result import Result
from edgefleet.runtime._served import _Borrowed, _is_predictor, _Served, _waker, manifest_for_model
from edgefleet.runtime._trigger import TriggerStage
from edgefleet.runtime._validation import Validator

__all__ = ["Result", "Runtime"]

log = logging.getLogger(__name__)


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
        trigger: Any = None,
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
        self._batch_delay_ms: float | None = None  # set_batch_delay's override (the device's power policy)
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
        gate = trigger if trigger is not None else self.config.trigger
        self.trigger: TriggerStage | None = None
        if gate is not None:
            self.trigger = TriggerStage(
                gate, input_name=self.config.trigger_input, watts=self.config.power_watts, metrics=self._m
            )
            t = self.trigger
            self.metrics.trigger_energy_saved.set_function(lambda: t.energy_saved_mj() or 0.0)

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
            trigger: a cheap gate in front of the model (``power.EnergyGate``, ``fn(array) -> bool`` or a
                spec such as ``"energy:-40dBFS"``; default ``config.trigger``): inputs it rejects are
                answered ``triggered=False`` without running the model.
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
                primary: Predictor
                primary = batcher = Batcher(
                    engine,
                    cfg.batcher,
                    metrics=self._m,
                    timeout_s=timeout_s,
                    max_stuck=fb.max_stuck_calls,
                    threads_per_call=cfg.engine.intra_op_threads,
                )
                if self._batch_delay_ms is not None:  # a swapped-in model keeps the policy's delay
                    batcher.set_max_delay(self._batch_delay_ms)
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
            if self.trigger is not None:
                self.trigger.watched(manifest)  # a trigger input the model lacks fails the load, not requests
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
            trig = self.trigger
            if trig is not None and (gated := trig.check(served, tensors, t0)) is not None:
                res = gated
            else:
                batcher = served.batcher
                # a bare batcher (the default pipeline) may answer on this thread: ask it directly
                if batcher is not None:
                    out = batcher.try_inline(tensors, priority, abs_deadline)
                    if out is None:
                        out = batcher.queued(tensors, priority, abs_deadline)
                else:
                    out = as_prediction(
                        served.pipeline.predict(
                            tensors, priority=priority, deadline=abs_deadline, escalate=escalate
                        ),
                        served.tier,
                    )
                res = served.finish(out, t0)
                if trig is not None:
                    trig.answered(res)
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
        if served is None or served.batcher is None or self.trigger is not None:
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
            **({"trigger": self.trigger.stats()} if self.trigger is not None else {}),
        }

    @property
    def batch_delay_ms(self) -> float | None:
        """The batching delay set by ``set_batch_delay`` (None: the configured one)."""
        return self._batch_delay_ms

    def set_batch_delay(self, ms: float | None) -> int:
        """Batch for up to ``ms`` from now on, for this and every model swapped in later (None: back to
        ``BatcherConfig.max_delay_ms``); returns how many batchers changed (0 with the batcher off)."""
        self._batch_delay_ms = ms
        served = self._served
        batchers = [p for p in self._walk(served.pipeline if served else None) if isinstance(p, Batcher)]
        for b in batchers:
            b.set_max_delay(ms)
        return len(batchers)

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
