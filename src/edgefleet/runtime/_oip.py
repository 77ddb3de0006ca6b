"""The Open Inference Protocol (KServe v2, as spoken by Triton, MLServer, KServe and ``tritonclient``).

Routes added beside ``/v1`` by :func:`add_open_inference_routes`::

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness
    GET  /v2/models/{name}[/versions/{v}]      model metadata (the served model's tensors)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

Inference requests carry model tensors (the bundle's preprocessing contract is not applied; the input
names, datatypes and shapes are the ones ``GET /v2/models/{name}`` lists) as JSON ``data`` or, with the
binary tensor extension, as raw little-endian bytes after a JSON header of
``Inference-Header-Content-Length`` bytes. They go through the same guards as ``/v1/predict``: bearer
token, rate limit, the body-size limit and the runtime's own validation. Request parameters:
``priority`` (Triton's: 0 default, 1 highest), ``timeout`` (microseconds: the request's deadline),
``binary_data_output``; per output ``binary_data``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from edgefleet.errors import EdgefleetError, InputError, NotFoundError, ValidationError
from edgefleet.runtime._predictor import Priority
from edgefleet.runtime._runtime import Runtime

__all__ = ["add_open_inference_routes", "from_v2_datatype", "to_v2_datatype"]

_V2_TO_NP = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NP_TO_V2 = {v.name: k for k, v in _V2_TO_NP.items() if k != "BYTES"}
_HEADER = "inference-header-content-length"
_HINT = "send the inputs GET /v2/models/{name} lists (name, datatype, shape)"


def to_v2_datatype(dtype: str) -> str:
    """A manifest dtype (``float32``, ``string``...) as a v2 datatype (``FP32``, ``BYTES``...)."""
    return "BYTES" if dtype == "string" else _NP_TO_V2.get(np.dtype(dtype).name, "BYTES")


def from_v2_datatype(datatype: str) -> np.dtype:
    dt = _V2_TO_NP.get(str(datatype).upper())
    if dt is None:
        raise ValidationError(f"unknown datatype {datatype!r}", hint=f"one of {sorted(_V2_TO_NP)}")
    return dt


def _triton_priority(p: Any) -> int:
    """Triton's priority (0: the default level, 1: highest, larger: lower) on edgefleet's scale."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 0:
        raise ValidationError("priority must be a non-negative integer", hint="0 default, 1 highest")
    return {0: Priority.NORMAL, 1: Priority.URGENT, 2: Priority.HIGH, 3: Priority.NORMAL}.get(p, Priority.LOW)


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ValidationError(
            f"input {name!r}: shape must be a list of at most 8 sizes", hint=_HINT, input=name
        )
    return tuple(shape)


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d  # Python ints: no overflow for a hostile shape
    return n


def _decode_bytes_elements(name: str, raw: bytes, count: int) -> np.ndarray:
    """The binary BYTES layout: each element is a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise ValidationError(f"input {name!r}: truncated BYTES data", hint=_HINT, input=name)
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ValidationError(f"input {name!r}: truncated BYTES data", hint=_HINT, input=name)
        out.append(raw[pos : pos + n])
        pos += n
    if pos != len(raw):
        raise ValidationError(f"input {name!r}: extra bytes after its elements", hint=_HINT, input=name)
    return np.array(out + [None], dtype=object)[:-1]  # keep bytes objects as they are


def _encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.ravel():
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def decode_infer_request(
    body: bytes, header_length: str | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the JSON request, {input name: array}) from an infer body, with or without binary tensors."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InputError("Inference-Header-Content-Length is not a number", hint=_HINT) from None
        if not 0 <= n <= len(body):
            raise InputError(
                f"Inference-Header-Content-Length {n} is outside the {len(body)}-byte body", hint=_HINT
            )
        head, binary = body[:n], memoryview(body)[n:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"inference request is not valid JSON: {e}", hint=_HINT) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ValidationError(
            'an inference request is {"inputs": [{name, shape, datatype, data}...]}', hint=_HINT
        )
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for item in doc["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValidationError("every input needs a name, a shape and a datatype", hint=_HINT)
        name = item["name"]
        if name in tensors:
            raise ValidationError(f"input {name!r} is given twice", hint=_HINT, input=name)
        shape = _shape(name, item.get("shape"))
        dtype = from_v2_datatype(item.get("datatype", ""))
        count = _elements(shape)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ValidationError(
                    f"input {name!r}: binary_data_size {size} runs past the body", hint=_HINT, input=name
                )
            raw = bytes(binary[offset : offset + size])
            offset += size
            if dtype.kind == "O":
                arr = _decode_bytes_elements(name, raw, count).reshape(shape)
            else:
                if count * dtype.itemsize != size:
                    raise ValidationError(
                        f"input {name!r}: {size} bytes do not make shape {list(shape)} of {item['datatype']}",
                        hint=_HINT,
                        input=name,
                    )
                arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype)
        else:
            data = item.get("data")
            if data is None:
                raise ValidationError(f"input {name!r} has no data", hint=_HINT, input=name)
            try:
                arr = np.asarray(data, dtype=None if dtype.kind == "O" else dtype)
            except (ValueError, TypeError, OverflowError) as e:
                raise ValidationError(f"input {name!r}: {e}", hint=_HINT, input=name) from e
            if arr.dtype == object or arr.dtype.kind in "US":
                if dtype.kind != "O":
                    raise ValidationError(f"input {name!r} holds text, not numbers", hint=_HINT, input=name)
                arr = arr.astype(object)
            if arr.size != count:
                raise ValidationError(
                    f"input {name!r}: {arr.size} values do not make shape {list(shape)}",
                    hint=_HINT,
                    input=name,
                )
            arr = arr.reshape(shape)
        tensors[name] = arr
    if offset != len(binary):
        raise ValidationError(f"{len(binary) - offset} bytes of binary data belong to no input", hint=_HINT)
    return doc, tensors


def encode_infer_response(
    doc: dict[str, Any],
    outputs: dict[str, np.ndarray],
    model: str,
    version: str,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str], str]:
    """(body, extra headers, content type) of an infer response, binary outputs where asked for;
    ``parameters``: the response's own (``triggered`` with a trigger stage)."""
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    if parameters is not None and parameters.get("triggered") is False:
        doc = {k: v for k, v in doc.items() if k != "outputs"}  # the model did not run: no outputs to give
    all_binary = bool(params.get("binary_data_output", False))
    wanted: dict[str, bool] = {}
    for o in doc.get("outputs") or []:
        if not isinstance(o, dict) or o.get("name") not in outputs:
            raise ValidationError(
                f"requested output {o.get('name') if isinstance(o, dict) else o!r} is not one of {sorted(outputs)}",
                hint=_HINT,
            )
        op = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
        wanted[o["name"]] = bool(op.get("binary_data", all_binary))
    if not wanted:
        wanted = {name: all_binary for name in outputs}
    items, blobs = [], []
    for name, binary in wanted.items():
        arr = np.asarray(outputs[name])
        datatype = "BYTES" if arr.dtype == object or arr.dtype.kind in "US" else _NP_TO_V2[arr.dtype.name]
        item: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = (
                _encode_bytes_elements(arr)
                if datatype == "BYTES"
                else np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            )
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            item["data"] = [
                v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()
            ]
        else:
            flat = arr.ravel()
            if flat.dtype.kind == "f" and not np.isfinite(flat).all():
                flat = np.where(np.isfinite(flat), flat, None)
            item["data"] = flat.tolist()
        items.append(item)
    resp: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": items}
    if parameters:
        resp["parameters"] = parameters
    if "id" in doc:
        resp["id"] = doc["id"]
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not blobs:
        return head, {}, "application/json"
    return (
        b"".join([head, *blobs]),
        {"Inference-Header-Content-Length": str(len(head))},
        "application/octet-stream",
    )


def add_open_inference_routes(
    app: Any,
    runtime: Runtime,
    *,
    dependencies: list[Any],
    read_body: Callable[[Request], Awaitable[bytes]],
    limiter: Any,
) -> Callable[[Request, str, str | None], Awaitable[Response]]:
    """Add the ``/v2`` routes to ``app`` (guarded by ``dependencies``, bodies read by ``read_body``).

    Returns the infer handler, ``fn(request, name, version)``, for callers that route it themselves.
    """
    import edgefleet

    def served(name: str, version: str | None = None) -> Any:
        try:
            m = runtime.manifest
        except EdgefleetError:
            m = None
        if m is None or m.name != name or (version is not None and version != m.version):
            raise _not_found(name, version)
        return m

    def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        m = served(name, version)

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "datatype": to_v2_datatype(s.dtype),
                    "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in s.shape],
                }
                for s in specs
            ]

        return {
            "name": m.name,
            "versions": [m.version],
            "platform": "onnxruntime_onnx" if m.model_format == "onnx" else m.model_format,
            "inputs": tensors(m.inputs),
            "outputs": tensors(m.outputs),
        }

    def ready(name: str, version: str | None = None) -> Response:
        try:
            served(name, version)
        except NotFoundError as e:
            return _v2_error(e)  # not 200: tritonclient's is_model_ready() reads False
        return JSONResponse({"ready": True})

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        served(name, version)
        body = await read_body(request)
        if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            raise InputError("compressed request bodies are not accepted", hint="send it uncompressed")
        doc, tensors = decode_infer_request(body, request.headers.get(_HEADER))
        params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
        deadline = None
        if params.get("timeout") is not None:
            t = params["timeout"]
            if isinstance(t, bool) or not isinstance(t, int | float) or t <= 0:
                raise ValidationError("timeout must be a positive number of microseconds", hint=_HINT)
            deadline = t / 1e6
        result = await runtime.apredict(
            tensors,
            priority=_triton_priority(params.get("priority", 0)),
            deadline=deadline,
            preprocessed=True,
            limiter=limiter,
        )
        content, headers, ctype = encode_infer_response(
            doc,
            result.outputs,
            result.model,
            result.version,
            None if result.triggered is None else {"triggered": result.triggered},
        )
        return Response(content, media_type=ctype, headers=headers)

    g = dependencies

    @app.get("/v2", dependencies=g, summary="Open Inference Protocol: server metadata")
    async def v2_server() -> Any:
        return {
            "name": "edgefleet",
            "version": getattr(edgefleet, "__version__", "0"),
            "extensions": ["binary_tensor_data"],
        }

    @app.get("/v2/health/live", summary="Open Inference Protocol: liveness (no token needed)")
    async def v2_live() -> Any:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Open Inference Protocol: readiness (no token needed)")
    async def v2_ready() -> Any:
        if not runtime.status()["serving"]:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/v2/models/{name}", dependencies=g, summary="Open Inference Protocol: model metadata")
    async def v2_model(name: str) -> Any:
        try:
            return metadata(name)
        except EdgefleetError as e:
            return _v2_error(e)

    @app.get("/v2/models/{name}/versions/{version}", dependencies=g, include_in_schema=False)
    async def v2_model_version(name: str, version: str) -> Any:
        try:
            return metadata(name, version)
        except EdgefleetError as e:
            return _v2_error(e)

    @app.get("/v2/models/{name}/ready", dependencies=g, summary="Open Inference Protocol: model readiness")
    async def v2_model_ready(name: str) -> Any:
        return ready(name)

    @app.get("/v2/models/{name}/versions/{version}/ready", dependencies=g, include_in_schema=False)
    async def v2_model_version_ready(name: str, version: str) -> Any:
        return ready(name, version)

    @app.post("/v2/models/{name}/infer", dependencies=g, summary="Open Inference Protocol: inference")
    async def v2_infer(request: Request, name: str) -> Any:
        try:
            return await infer(request, name)
        except EdgefleetError as e:
            return _v2_error(e)

    @app.post("/v2/models/{name}/versions/{version}/infer", dependencies=g, include_in_schema=False)
    async def v2_infer_version(request: Request, name: str, version: str) -> Any:
        try:
            return await infer(request, name, version)
        except EdgefleetError as e:
            return _v2_error(e)

    async def infer_answering_errors(request: Request, name: str, version: str | None) -> Response:
        try:
            return await infer(request, name, version)
        except EdgefleetError as e:
            return _v2_error(e)

    return infer_answering_errors


def _not_found(name: str, version: str | None) -> NotFoundError:
    what = f"{name} version {version}" if version else name
    return NotFoundError(
        f"model {what} is not served here", hint="GET /v2/models/{name} with the served name"
    )


def _v2_error(e: EdgefleetError) -> Response:
    """An error in the v2 shape (``error`` is the message, as tritonclient shows it) plus edgefleet's code."""
    body = e.to_dict()
    body["code"], body["error"] = body["error"], str(e)
    headers = {}
    retry = getattr(e, "retry_after", None) or e.details.get("retry_after")
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(np.ceil(float(retry)))))
    return JSONResponse(body, status_code=e.status_code, headers=headers)
