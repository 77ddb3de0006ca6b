"""A remote model as a Predictor: POST the model tensors to an HTTP endpoint, check what comes back.

Wire format (the same as ``POST /v1/predict`` of ``edgefleet serve`` with ``"preprocessed": true``)::

    request:  {"inputs": {"input": [[...], ...]}, "preprocessed": true, "escalate": false}
    response: {"outputs": {"probabilities": [[...], ...], ...}, ...}
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from edgefleet.errors import DeadlineExceededError, InferenceError
from edgefleet.runtime._config import CloudConfig
from edgefleet.runtime._predictor import Prediction, PredictorMetadata, batch_rows, check_deadline

__all__ = ["CloudPredictor"]

log = logging.getLogger(__name__)


def _jsonable(arr: np.ndarray) -> Any:
    return arr.tolist()


class CloudPredictor:
    """Sends batches to ``url`` and validates the answer (status, size, JSON, names, shapes, values).

    Every failure (unreachable, slow, HTTP error, garbage) becomes an InferenceError, so it composes
    with :class:`Breaker` and :class:`Fallback`; the timeout is the sooner of the configured one and
    the request's deadline.
    """

    def __init__(
        self,
        url: str,
        metadata: PredictorMetadata,
        *,
        config: CloudConfig | None = None,
        tier: str = "cloud",
        transport: Any = None,
    ) -> None:
        import httpx

        self.url = url
        self.config = config or CloudConfig()
        self._meta = metadata.replace(tier=tier, max_batch_size=None, extra={"url": url})
        headers = {"Accept": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        self._client = httpx.Client(
            headers=headers, transport=transport, timeout=self.config.timeout_s, follow_redirects=False
        )
        self._out_specs = {s.name: s for s in self._meta.outputs}

    @property
    def metadata(self) -> PredictorMetadata:
        return self._meta

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        import httpx

        deadline = opts.get("deadline")
        check_deadline(deadline, "before the cloud call")
        timeout = self.config.timeout_s
        if deadline is not None:
            timeout = min(timeout, max(0.001, deadline - time.monotonic()))
        body = {
            "inputs": {k: _jsonable(v) for k, v in batch.items()},
            "preprocessed": True,
            "escalate": False,
        }
        rows = batch_rows(batch)
        try:
            with self._client.stream("POST", self.url, json=body, timeout=timeout) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise InferenceError(
                        f"cloud endpoint answered HTTP {resp.status_code}: {resp.text[:200]}",
                        hint="check the cloud service; the local answer is used meanwhile",
                        status=resp.status_code,
                    )
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > self.config.max_response_bytes:
                        raise InferenceError(
                            f"cloud response is larger than {self.config.max_response_bytes} bytes",
                            hint="the cloud endpoint is misbehaving; check its logs",
                        )
                    chunks.append(chunk)
        except httpx.TimeoutException as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    "request deadline passed during the cloud call",
                    hint="send a longer deadline to allow escalation",
                ) from e
            raise InferenceError(
                f"cloud endpoint did not answer within {timeout:.2f} s",
                hint="the cloud is slow or unreachable; the local answer is used meanwhile",
            ) from e
        except httpx.HTTPError as e:
            raise InferenceError(
                f"cloud endpoint unreachable: {type(e).__name__}: {e}",
                hint="check the network and the cloud URL; escalations wait in the outbox",
            ) from e
        return self._parse(b"".join(chunks), rows)

    def _parse(self, raw: bytes, rows: int) -> Prediction:
        def bad(why: str) -> InferenceError:
            return InferenceError(
                f"cloud endpoint returned a malformed answer: {why}",
                hint="the cloud speaks another protocol or is broken; check its version",
            )

        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"not JSON ({e})") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), dict):
            raise bad("no 'outputs' object")
        out: dict[str, np.ndarray] = {}
        for name, value in doc["outputs"].items():
            spec = self._out_specs.get(name)
            if spec is None:
                continue  # extra outputs the local model does not know are ignored
            try:
                arr = np.asarray(value, dtype=None if spec.dtype == "string" else spec.dtype)
            except (ValueError, TypeError, OverflowError) as e:
                raise bad(f"output {name!r} is not a {spec.dtype} array") from e
            if arr.ndim == 0 or arr.shape[0] != rows:
                raise bad(f"output {name!r} has shape {list(arr.shape)}, expected {rows} rows")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise bad(f"output {name!r} has non-finite values")
            out[name] = arr
        if not out:
            raise bad(f"none of the expected outputs {sorted(self._out_specs)}")
        return Prediction(out, tiers=(self._meta.tier,) * rows)

    def close(self) -> None:
        self._client.close()
