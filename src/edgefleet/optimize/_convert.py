"""Bring a model in: an ONNX file or proto, a torch ``nn.Module``, a scikit-learn estimator, or a
``.tflite`` file. Exports are checked against the framework's own outputs before they are used."""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import InputError, ModelLoadError, OptimizeError
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._runner import open_runner

__all__ = ["Source", "load_source", "peek_example", "check_onnx_file"]

log = logging.getLogger(__name__)

EXPORT_OPSET = 17


@dataclass
class Source:
    """The model as a file in the work directory, with where it came from."""

    path: Path
    format: str  # "onnx" | "tflite"
    origin: str
    notes: list[str] = field(default_factory=list)
    export_max_abs_err: float | None = None


def _is_torch_module(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    try:
        import torch

        return isinstance(obj, torch.nn.Module)
    except ImportError:
        return mod.startswith("torch")


def _is_sklearn(obj: Any) -> bool:
    return any((c.__module__ or "").startswith("sklearn") for c in type(obj).__mro__) and hasattr(
        obj, "predict"
    )


def peek_example(data: Any, labels_key: str = "labels") -> dict[str, np.ndarray] | None:
    """The first sample of calibration data, with a batch axis, keyed by input name (for exports)."""
    from edgefleet.optimize._data import Dataset

    arrays: Mapping[str, Any] | None = None
    if isinstance(data, Dataset):
        return {k: np.asarray(v) for k, v in data.samples[0].items()} if data.samples else None
    if isinstance(data, (str, Path)) and Path(data).suffix == ".npz" and Path(data).is_file():
        try:
            with np.load(data, allow_pickle=False) as z:
                arrays = {k: z[k][:1] for k in z.files if k != labels_key}
        except Exception:  # noqa: BLE001 - load_data reports the real problem later
            return None
    elif isinstance(data, (str, Path)) and Path(data).suffix == ".npy" and Path(data).is_file():
        try:
            arrays = {"input": np.load(data, allow_pickle=False, mmap_mode="r")[:1]}
        except Exception:  # noqa: BLE001
            return None
    elif isinstance(data, Mapping):
        arrays = {k: np.asarray(v)[:1] for k, v in data.items() if k != labels_key}
    elif isinstance(data, np.ndarray):
        arrays = {"input": data[:1]}
    elif isinstance(data, (list, tuple)) and data:
        first = data[0]
        if isinstance(first, tuple) and len(first) == 2:
            first = first[0]
        if isinstance(first, Mapping):
            arrays = {k: np.asarray(v) for k, v in first.items()}
        else:
            arrays = {"input": np.asarray(first)}
    if not arrays:
        return None
    return {k: np.ascontiguousarray(v) for k, v in arrays.items()}


def check_onnx_file(path: Path, settings: OptimizeConfig) -> Any:
    """Load and check an ONNX file; every failure becomes a ModelLoadError naming the fix."""
    import onnx

    if not path.is_file():
        raise InputError(f"model {path} does not exist", hint="check the path to the .onnx or .tflite file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model {path} is empty (0 bytes)", hint="export or copy the model again")
    if size > settings.max_model_bytes:
        raise ModelLoadError(
            f"model {path} is {size} bytes, over the {settings.max_model_bytes} limit",
            hint="raise EDGEFLEET_OPTIMIZE_MAX_MODEL_BYTES if this is intended",
        )
    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError, OSError for missing external data, ...
        raise ModelLoadError(
            f"{path.name} is not a valid ONNX model (truncated or corrupted file?): {str(e)[:200]}",
            hint="re-export the model or copy the file again; check its size against the original",
            path=str(path),
        ) from e
    if not model.graph.node:
        raise ModelLoadError(
            f"{path.name} holds no graph nodes (truncated or not an ONNX model?)",
            hint="re-export the model or copy the file again",
            path=str(path),
        )
    _check_opsets(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelLoadError(
            f"{path.name} fails the ONNX checker: {str(e).strip().splitlines()[0][:300]}",
            hint="re-export the model; the file may be truncated or hand-edited",
            path=str(path),
        ) from e
    return model


def _check_opsets(model: Any, path: Path) -> None:
    import onnx

    from edgefleet.optimize._runner import _max_default_opset

    max_onnx = onnx.defs.onnx_opset_version()
    max_ort = _max_default_opset()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > min(max_onnx, max_ort):
            raise ModelLoadError(
                f"{path.name} needs ai.onnx opset {imp.version}, but the runtime here supports up to "
                f"{min(max_onnx, max_ort)}",
                hint=f"export the model with opset <= {min(max_onnx, max_ort)} (e.g. torch.onnx.export(..., "
                f"opset_version={EXPORT_OPSET}))",
                path=str(path),
                opset=imp.version,
            )


def load_source(
    model: Any,
    work_dir: Path,
    *,
    example_inputs: Any = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    settings: OptimizeConfig | None = None,
) -> Source:
    """Copy or export ``model`` into ``work_dir`` as ``source.onnx`` / ``source.tflite``.

    Raises:
        ModelLoadError: the file cannot be loaded (truncated, corrupted, opset too new).
        OptimizeError: an export failed or disagrees with the framework's outputs.
    """
    settings = settings or OptimizeConfig()
    work_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.exists():
            raise InputError(f"model {p} does not exist", hint="check the path to the .onnx or .tflite file")
        if p.suffix.lower() == ".tflite":
            dst = work_dir / "source.tflite"
            shutil.copyfile(p, dst)
            open_runner(dst).close()  # validates
            return Source(dst, "tflite", f"tflite file {p.name}")
        if p.suffix.lower() not in (".onnx", ".ort", ""):
            raise InputError(
                f"model {p} has suffix {p.suffix!r}; expected .onnx or .tflite",
                hint="export the model to ONNX first (torch.onnx.export, skl2onnx) or pass the module to optimize()",
            )
        proto = check_onnx_file(p, settings)
        dst = work_dir / "source.onnx"
        _save(proto, dst)
        return Source(dst, "onnx", f"onnx file {p.name}")
    try:
        import onnx

        if isinstance(model, onnx.ModelProto):
            dst = work_dir / "source.onnx"
            _save(model, dst)
            check_onnx_file(dst, settings)
            return Source(dst, "onnx", "onnx ModelProto")
    except ImportError:  # pragma: no cover
        pass
    if _is_torch_module(model):
        return _export_torch(model, work_dir, example_inputs, input_names, output_names, settings)
    if _is_sklearn(model):
        return _export_sklearn(model, work_dir, example_inputs, input_names, settings)
    raise InputError(
        f"cannot optimize a {type(model).__name__}",
        hint="pass an .onnx/.tflite path, an onnx.ModelProto, a torch nn.Module or a scikit-learn estimator",
    )


def _save(proto: Any, dst: Path) -> None:
    import onnx

    onnx.save_model(proto, str(dst))


def _example_dict(example_inputs: Any, input_names: list[str] | None) -> dict[str, np.ndarray]:
    if example_inputs is None:
        raise InputError(
            "exporting a framework model needs example inputs",
            hint="pass example_inputs=..., or calibration data whose first sample can serve as one",
        )
    if isinstance(example_inputs, Mapping):
        ex = {k: _to_numpy(v) for k, v in example_inputs.items()}
        if input_names and list(ex) != list(input_names):
            ex = dict(zip(input_names, ex.values(), strict=False))
        return ex
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    names = input_names or (["input"] if len(items) == 1 else [f"input_{i}" for i in range(len(items))])
    if len(names) != len(items):
        raise InputError(
            f"{len(items)} example inputs but {len(names)} input names",
            hint="give one name per example input",
        )
    return {n: _to_numpy(v) for n, v in zip(names, items, strict=True)}


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [y for x in out for y in _flatten(x)]
    if isinstance(out, Mapping):
        return [y for x in out.values() for y in _flatten(x)]
    return [out]


def _compare(ref: list[np.ndarray], got: list[np.ndarray], atol: float) -> float:
    if len(ref) != len(got):
        raise OptimizeError(
            f"the exported model has {len(got)} outputs, the original {len(ref)}",
            hint="return plain tensors (or a tuple of tensors) from forward()",
        )
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        r = np.asarray(r)
        g = np.asarray(g)
        if r.shape != g.shape:
            raise OptimizeError(
                f"exported output shape {list(g.shape)} differs from the original {list(r.shape)}",
                hint="check dynamic axes of the export",
            )
        if r.dtype.kind in "iub":
            diff = float(np.mean(r != g))
            if diff > 0.01:
                raise OptimizeError(
                    f"exported model disagrees with the original on {diff:.1%} of integer outputs",
                    hint="check the export (ops with data-dependent control flow may not trace)",
                )
            continue
        err = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))) if r.size else 0.0
        scale = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
        worst = max(worst, err)
        if not np.isfinite(err) or err > atol * scale:
            raise OptimizeError(
                f"exported ONNX model disagrees with the original: max abs error {err:.3g} (allowed {atol * scale:.3g})",
                hint="the export is not faithful (data-dependent control flow, training-mode layers?): "
                "call model.eval() and check unsupported ops",
                max_abs_err=err,
            )
    return worst


def _export_torch(
    module: Any,
    work_dir: Path,
    example_inputs: Any,
    input_names: list[str] | None,
    output_names: list[str] | None,
    settings: OptimizeConfig,
) -> Source:
    import torch

    ex = _example_dict(example_inputs, input_names)
    names = list(ex)
    module = module.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in ex.values())
    with torch.no_grad():
        ref = [_to_numpy(o) for o in _flatten(module(*args))]
    outs = output_names or (["output"] if len(ref) == 1 else [f"output_{i}" for i in range(len(ref))])
    dst = work_dir / "source.onnx"
    dyn = {n: {0: "batch"} for n in [*names, *outs]}
    notes = []
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    batch = torch.export.Dim("batch")
                    torch.onnx.export(
                        module,
                        args,
                        str(dst),
                        input_names=names,
                        output_names=outs,
                        dynamic_shapes=tuple({0: batch} for _ in args),
                        dynamo=True,
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        module,
                        args,
                        str(dst),
                        input_names=names,
                        output_names=outs,
                        dynamic_axes=dyn,
                        opset_version=EXPORT_OPSET,
                        dynamo=False,
                    )
            exporter = "dynamo" if dynamo else "torchscript"
            break
        except Exception as e:  # noqa: BLE001 - try the other exporter, report both if both fail
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {str(e).strip()[:300]}")
    else:
        raise OptimizeError(
            "torch.onnx.export failed: " + " | ".join(errors),
            hint="check that forward() takes tensors and returns tensors; unsupported ops need a custom export",
        )
    runner = open_runner(dst)
    got = runner.run(ex)
    err = _compare(ref, [got[o.name] for o in runner.outputs], settings.export_atol)
    # A second batch size proves the batch axis really is dynamic.
    try:
        ex2 = {k: np.concatenate([v, v], axis=0) for k, v in ex.items()}
        args2 = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in ex2.values())
        with torch.no_grad():
            ref2 = [_to_numpy(o) for o in _flatten(module(*args2))]
        got2 = runner.run(ex2)
        err = max(err, _compare(ref2, [got2[o.name] for o in runner.outputs], settings.export_atol))
    except OptimizeError:
        raise
    except Exception as e:  # noqa: BLE001 - a fixed-batch export still works at batch 1
        notes.append(f"batch axis is not dynamic after export ({str(e)[:120]})")
    runner.close()
    notes.insert(0, f"exported with the {exporter} exporter; max abs error vs torch {err:.2e}")
    return Source(dst, "onnx", f"torch {type(module).__name__}", notes, err)


def _export_sklearn(
    est: Any, work_dir: Path, example_inputs: Any, input_names: list[str] | None, settings: OptimizeConfig
) -> Source:
    from skl2onnx import to_onnx

    ex = _example_dict(example_inputs, input_names or ["input"])
    if len(ex) != 1:
        raise InputError("scikit-learn models take one input array", hint="pass a single example array")
    name, x = next(iter(ex.items()))
    x = np.asarray(x, dtype=np.float32)
    is_clf = hasattr(est, "predict_proba")
    options = {id(est): {"zipmap": False}} if is_clf else None
    try:
        onx = to_onnx(est, x, options=options, target_opset={"": EXPORT_OPSET, "ai.onnx.ml": 3})
    except Exception as e:  # noqa: BLE001 - skl2onnx raises many types
        raise OptimizeError(
            f"skl2onnx cannot convert {type(est).__name__}: {str(e)[:300]}",
            hint="check that the estimator is fitted and supported by skl2onnx",
        ) from e
    old = onx.graph.input[0].name
    for node in onx.graph.node:
        node.input[:] = [name if i == old else i for i in node.input]
    onx.graph.input[0].name = name
    dst = work_dir / "source.onnx"
    _save(onx, dst)
    runner = open_runner(dst)
    xb = np.concatenate([x, x], axis=0)
    got = runner.run({name: xb})
    ref: list[np.ndarray] = []
    out_names = [o.name for o in runner.outputs]
    if is_clf:
        ref = [est.predict(xb), est.predict_proba(xb).astype(np.float32)]
    else:
        ref = [np.asarray(est.predict(xb)).reshape(got[out_names[0]].shape)]
    err = _compare(ref[: len(out_names)], [got[n] for n in out_names][: len(ref)], settings.export_atol)
    runner.close()
    return Source(
        dst,
        "onnx",
        f"scikit-learn {type(est).__name__}",
        [f"converted with skl2onnx; max abs error {err:.2e}"],
        err,
    )
