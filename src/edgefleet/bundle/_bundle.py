"""Build, open and verify bundles."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError as PydanticValidationError

from edgefleet._fs import sha256_file
from edgefleet.bundle._archive import (
    MANIFEST_NAME,
    check_member_name,
    safe_extract,
    verify_files,
    write_archive,
    write_npz,
)
from edgefleet.bundle._config import BundleConfig, settings
from edgefleet.bundle._golden import (
    GOLDEN_FILE,
    Golden,
    RawInputs,
    compare_outputs,
    encode_raw,
    load_golden,
    raw_len,
    raw_slice,
)
from edgefleet.bundle._model import ModelRunner, check_runtime_requirements, model_format, onnx_opset
from edgefleet.bundle._preprocess import Preprocess
from edgefleet.bundle._reference import compute_reference, softmax, summarize_features
from edgefleet.errors import (
    BundleError,
    GoldenMismatchError,
    InputError,
    IntegrityError,
    ManifestError,
)
from edgefleet.protocol import (
    Budgets,
    FileEntry,
    GoldenSpec,
    Lineage,
    Manifest,
    Metrics,
    Postprocess,
    PreprocessStep,
    RuntimeRequirements,
    TensorSpec,
)

__all__ = [
    "Bundle",
    "Golden",
    "VerifyReport",
    "create_bundle",
    "compare_outputs",
    "GOLDEN_FILE",
    "REFERENCE_FILE",
]

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"
_RESERVED = {MANIFEST_NAME, GOLDEN_FILE, REFERENCE_FILE, "model.onnx", "model.tflite"}
_REF_CHUNK = 256  # reference inputs run through the model in chunks of this many samples


@dataclass
class VerifyReport:
    """What ``Bundle.verify`` checked."""

    key: str
    ok: bool
    files_checked: int
    golden_count: int
    preprocess_max_abs_err: float | None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- bundle ------------------------------------------------------------------------------------------------


class Bundle:
    """An opened (extracted and hash-checked) bundle.

    Use ``Bundle.open(archive)`` for an archive or ``Bundle.from_dir(path)`` for an extracted directory.
    A bundle extracted into a temporary directory removes it on ``close()`` (or leaving a ``with`` block).
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        *,
        owned: bool = False,
        config: BundleConfig | None = None,
        model_bytes: Callable[[], bytes] | None = None,
    ) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self._model_bytes = model_bytes  # the model is not on disk in clear: its bytes come from here
        self._owned = owned
        self._config = config or settings()
        self._golden: Golden | None = None
        self._reference: dict[str, Any] | None = None
        self.preprocess = Preprocess(manifest.preprocess)

    @classmethod
    def open(
        cls, archive: Path, extract_to: Path | None = None, *, config: BundleConfig | None = None
    ) -> Bundle:
        """Safely extract ``archive`` and check every file's sha256 and size against the manifest.

        Raises:
            IntegrityError, UnsafeArchiveError, ManifestError, SchemaVersionError, PreprocessError.
        """
        cfg = config or settings()
        root, manifest = safe_extract(Path(archive), extract_to, config=cfg)
        try:
            return cls(root, manifest, owned=extract_to is None, config=cfg)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def from_dir(
        cls,
        root: Path,
        *,
        check: bool = True,
        config: BundleConfig | None = None,
        model_bytes: Callable[[], bytes] | None = None,
    ) -> Bundle:
        """Open an already extracted bundle directory (hashes re-checked unless ``check=False``).

        ``model_bytes``: the model file is kept elsewhere (e.g. encrypted at rest) and is absent from
        ``root``; this returns its plaintext, which is checked against the manifest's hash on every load.
        """
        root = Path(root)
        mp = root / MANIFEST_NAME
        if not mp.is_file():
            raise BundleError(f"{root} has no {MANIFEST_NAME}", hint="is this an extracted bundle directory?")
        cfg = config or settings()
        if mp.stat().st_size > cfg.max_manifest_bytes:
            raise ManifestError(
                f"{mp} is larger than {cfg.max_manifest_bytes} bytes", hint="rebuild the bundle"
            )
        manifest = Manifest.from_json(mp.read_bytes())
        b = cls(root, manifest, config=cfg, model_bytes=model_bytes)
        if check:
            verify_files(root, b._on_disk())
        return b

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the extraction directory if this bundle created it as a temporary directory."""
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
            self._owned = False

    def __repr__(self) -> str:
        return f"Bundle({self.manifest.key}, root={str(self.root)!r})"

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model_file

    @property
    def golden(self) -> Golden:
        """The golden set (loaded on first use)."""
        if self._golden is None:
            spec = self.manifest.golden
            if spec is None or GOLDEN_FILE not in self.manifest.files:
                raise BundleError(
                    f"bundle {self.manifest.key} has no golden set", hint="rebuild with create_bundle"
                )
            self._golden = load_golden(self.root / GOLDEN_FILE, spec, max_bytes=self._config.max_golden_bytes)
        return self._golden

    @property
    def reference(self) -> dict[str, Any] | None:
        """``reference.json`` (None if the bundle has none)."""
        if self._reference is None:
            p = self.root / REFERENCE_FILE
            if REFERENCE_FILE not in self.manifest.files:
                return None
            if p.stat().st_size > self._config.max_reference_bytes:
                raise BundleError(
                    f"{REFERENCE_FILE} is too large", hint="EDGEFLEET_BUNDLE_MAX_REFERENCE_BYTES"
                )
            try:
                self._reference = json.loads(p.read_bytes())
            except ValueError as e:
                raise IntegrityError(
                    f"{REFERENCE_FILE} is not valid JSON: {e}", hint="rebuild the bundle"
                ) from e
        return self._reference

    def runner(self) -> ModelRunner:
        """A fresh inference session on the bundle's model (ModelLoadError if it cannot load)."""
        src = self.model_source
        return ModelRunner(
            self.model_path, self.manifest.model_format, model_bytes=src if isinstance(src, bytes) else None
        )

    @property
    def model_source(self) -> Path | bytes:
        """The model file's path, or its bytes (hash-checked) when the model is not on disk in clear.

        Raises:
            IntegrityError: the bytes are not the file the manifest hashes.
        """
        if self._model_bytes is None:
            return self.model_path
        data = self._model_bytes()
        entry = self.manifest.files.get(self.manifest.model_file)
        if entry is None or len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise IntegrityError(
                f"model {self.manifest.model_file} of {self.manifest.key} is not the file its manifest hashes",
                hint="the stored model changed; assign the release again to download it",
            )
        return data

    def _on_disk(self) -> Manifest:
        """The manifest of the files under ``root`` (all but the model when its bytes come from elsewhere)."""
        if self._model_bytes is None:
            return self.manifest
        files = {k: v for k, v in self.manifest.files.items() if k != self.manifest.model_file}
        return self.manifest.model_copy(update={"files": files})

    def model_inputs(self, raw: RawInputs) -> dict[str, np.ndarray]:
        """Raw inputs -> model feeds through the bundle's contract."""
        return _feeds(self.manifest.inputs, self.preprocess, raw)

    def verify(self, *, files: bool = True) -> VerifyReport:
        """Re-check every hash, rerun the contract and the model on the golden set in a fresh session.

        ``files=False`` skips the hash re-check, for a bundle whose files were checked when it was opened.

        Raises:
            IntegrityError: a file changed. ModelLoadError: the runtime cannot load the model.
            GoldenMismatchError: the contract or the model gives different results than at build time.
        """
        t0 = time.perf_counter()
        key = self.manifest.key
        checked = verify_files(self.root, self._on_disk()) if files else 0
        golden = self.golden
        check_runtime_requirements(self.manifest)
        runner = self.runner()
        _check_signature(key, self.manifest, runner)
        feeds = self.model_inputs(golden.inputs_raw)
        pre_err: float | None = None
        pre_cmp = compare_outputs(feeds, golden.inputs, atol=golden.atol, rtol=golden.rtol)
        for name, r in pre_cmp.items():
            if r.get("max_abs_err") is not None:
                pre_err = max(pre_err or 0.0, r["max_abs_err"])
            if not r["ok"]:
                raise GoldenMismatchError(
                    f"bundle {key}: the preprocessing contract gives different model inputs than at build "
                    f"time for {name!r} ({_describe(r)})",
                    hint="the preprocessing library on this machine (e.g. Pillow) behaves differently; "
                    "pin it or rebuild the bundle here",
                    input=name,
                )
        actual = runner.run(feeds)
        cmp = compare_outputs(actual, golden.expected, atol=golden.atol, rtol=golden.rtol)
        bad = {k: v for k, v in cmp.items() if not v["ok"]}
        if bad:
            detail = "; ".join(f"{k}: {_describe(v)}" for k, v in bad.items())
            raise GoldenMismatchError(
                f"bundle {key}: the model's outputs on the golden set differ from the expected ones ({detail})",
                hint="the model file does not match this bundle's golden set, or this runtime computes "
                "differently; do not activate it",
                outputs=bad,
            )
        return VerifyReport(key, True, checked, golden.count, pre_err, cmp, time.perf_counter() - t0)


def _describe(r: dict[str, Any]) -> str:
    if "reason" in r:
        return r["reason"]
    err = r.get("max_abs_err")
    return f"{r['mismatched_samples']} samples off" + (
        f", max abs error {err:.3g}" if err is not None else ""
    )


def _check_signature(key: str, manifest: Manifest, runner: ModelRunner) -> None:
    def sig(specs: list[TensorSpec]) -> list[tuple[str, str]]:
        return [(s.name, s.dtype) for s in specs]

    if sig(runner.inputs) != sig(manifest.inputs) or sig(runner.outputs) != sig(manifest.outputs):
        raise GoldenMismatchError(
            f"bundle {key}: the model's tensors ({sig(runner.inputs)} -> {sig(runner.outputs)}) differ from "
            f"the manifest's ({sig(manifest.inputs)} -> {sig(manifest.outputs)})",
            hint="the model file was swapped; do not activate this bundle",
        )


def _feeds(inputs: list[TensorSpec], pre: Preprocess, raw: RawInputs) -> dict[str, np.ndarray]:
    if isinstance(raw, dict):
        if len(pre):
            raise InputError(
                "raw inputs given per model input (a dict) cannot go through a preprocessing contract",
                hint="use a contract with a single-input model, or pass preprocessed arrays without one",
            )
        missing = [s.name for s in inputs if s.name not in raw]
        if missing:
            raise InputError(f"raw inputs lack model inputs {missing}", hint="give one array per model input")
        return {s.name: _as_declared(np.asarray(raw[s.name]), s) for s in inputs}
    if len(inputs) != 1:
        raise InputError(
            f"the model has {len(inputs)} inputs ({[s.name for s in inputs]}); pass raw inputs as a dict",
            hint="a preprocessing contract feeds single-input models only",
        )
    x = pre.apply(raw) if len(pre) else np.asarray(raw)
    return {inputs[0].name: _as_declared(np.asarray(x), inputs[0])}


def _as_declared(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``x`` in the input's declared numeric dtype (rows that came as JSON are float64; a float32 model
    refuses them); strings and matching dtypes pass as they are."""
    if spec.dtype in ("string", "bool") or x.dtype == np.dtype(spec.dtype) or x.dtype.kind not in "biuf":
        return x
    return x.astype(spec.dtype)


def _created(created: datetime | None) -> datetime:
    if created is None:
        sde = os.environ.get("SOURCE_DATE_EPOCH")
        if sde:
            try:
                return datetime.fromtimestamp(int(sde), tz=UTC)
            except ValueError as e:
                raise InputError(
                    f"SOURCE_DATE_EPOCH={sde!r} is not an integer", hint="unset or fix it"
                ) from e
        return datetime.now(UTC).replace(microsecond=0)
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _score_output(outputs: dict[str, np.ndarray], post: Postprocess) -> str | None:
    if post.task != "classification":
        return None
    if post.output is not None:
        if post.output not in outputs:
            raise InputError(
                f"postprocess.output {post.output!r} is not a model output ({sorted(outputs)})",
                hint="name one of the model's outputs",
            )
        return post.output
    for name, v in outputs.items():
        if np.issubdtype(v.dtype, np.floating) and v.ndim == 2 and v.shape[1] > 1:
            return name
    return None


def _extra_files(extra_files: dict[str, Path] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, src in (extra_files or {}).items():
        why = check_member_name(name)
        if why or name in _RESERVED:
            raise InputError(
                f"extra file name {name!r} is not allowed: {why or 'reserved name'}",
                hint="use a relative name like 'labels.txt' or 'docs/card.md'",
            )
        src = Path(src)
        if not src.is_file():
            raise InputError(f"extra file {src} does not exist", hint="check the path")
        out[name] = src
    return out


def create_bundle(
    model: Path,
    out: Path,
    *,
    name: str,
    version: str,
    variant: str,
    inputs_raw: RawInputs,
    preprocess: Preprocess | Sequence[dict[str, Any] | PreprocessStep] | None = None,
    reference_raw: RawInputs | None = None,
    postprocess: Postprocess | None = None,
    metrics: Metrics | None = None,
    lineage: Lineage | None = None,
    budgets: Budgets | None = None,
    runtime: RuntimeRequirements | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    created: datetime | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Build a bundle archive at ``out``.

    Runs ``model`` on the golden inputs (after the contract) in a fresh session and stores the outputs as
    the expected ones; computes reference statistics on ``reference_raw`` (default: the golden inputs);
    infers the input/output tensor specs from the model. Same arguments -> byte-identical archive
    (``created`` defaults to ``SOURCE_DATE_EPOCH`` or now).

    Returns:
        ``out``.

    Raises:
        ModelLoadError, PreprocessError, InputError, ManifestError; nothing is written on failure.
    """
    model, out = Path(model), Path(out)
    fmt = model_format(model)
    created_at = _created(created)
    post = (postprocess or Postprocess()).model_copy(deep=True)
    _precheck_identity(name, version, variant)
    if atol < 0 or rtol < 0:
        raise InputError("atol and rtol must be >= 0", hint="e.g. atol=1e-4, rtol=1e-3")
    if raw_len(inputs_raw) == 0:
        raise InputError("the golden set is empty", hint="pass at least one raw input sample")
    extras = _extra_files(extra_files)
    pre = preprocess if isinstance(preprocess, Preprocess) else Preprocess(list(preprocess or []))

    runner = ModelRunner(model, fmt)
    feeds = _feeds(runner.inputs, pre, inputs_raw)
    expected = runner.run(feeds)
    for k, v in expected.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise BundleError(
                f"the model outputs NaN/inf for {k!r} on the golden inputs",
                hint="check the golden inputs and the contract (e.g. scaling) match what the model expects",
            )
    score = _score_output(expected, post)
    if score is not None and post.output is None:
        post.output = score

    ref_raw = inputs_raw if reference_raw is None else reference_raw
    reference = _reference(runner, pre, ref_raw, post, score, settings())

    kind, raw_arrays = encode_raw(inputs_raw)
    meta = json.dumps({"raw_kind": kind}, sort_keys=True).encode()
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(meta, dtype=np.uint8), **raw_arrays}
    arrays.update({f"input/{k}": v for k, v in feeds.items()})
    arrays.update({f"expected/{k}": v for k, v in expected.items()})

    rt = (runtime or RuntimeRequirements()).model_copy(deep=True)
    if rt.opset is None and fmt == "onnx":
        rt.opset = onnx_opset(model)
    mets = (metrics or Metrics()).model_copy(deep=True)
    if mets.size_bytes is None:
        mets.size_bytes = model.stat().st_size

    with tempfile.TemporaryDirectory(prefix="edgefleet-create-") as tmp:
        t = Path(tmp)
        model_file = f"model.{fmt}"
        write_npz(t / GOLDEN_FILE, arrays)
        (t / REFERENCE_FILE).write_bytes(
            json.dumps(reference, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        )
        files: dict[str, Path] = {
            model_file: model,
            GOLDEN_FILE: t / GOLDEN_FILE,
            REFERENCE_FILE: t / REFERENCE_FILE,
        }
        files.update(extras)
        entries = {n: FileEntry(sha256=sha256_file(p), size=p.stat().st_size) for n, p in files.items()}
        try:
            manifest = Manifest(
                name=name,
                version=version,
                variant=variant,
                created=created_at,
                model_file=model_file,
                model_format=fmt,  # type: ignore[arg-type]
                runtime=rt,
                inputs=runner.inputs,
                outputs=runner.outputs,
                preprocess=pre.to_manifest(),
                postprocess=post,
                metrics=mets,
                budgets=budgets or Budgets(),
                golden=GoldenSpec(count=raw_len(inputs_raw), atol=atol, rtol=rtol),
                lineage=lineage or Lineage(),
                files=entries,
            )
        except PydanticValidationError as e:
            raise ManifestError(
                f"cannot build the manifest: {e}", hint="check name, version and variant"
            ) from e
        write_archive(out, manifest.to_json(), files, mtime=int(created_at.timestamp()))
    log.info("bundle %s written to %s", manifest.key, out)
    return out


def _precheck_identity(name: str, version: str, variant: str) -> None:
    """Fail on a bad name/version/variant before spending time running the model."""
    try:
        Manifest(name=name, version=version, variant=variant, inputs=[], outputs=[])
    except PydanticValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ManifestError(
            f"invalid bundle identity: {problems}",
            hint="name/variant: lowercase slug like 'digits' / 'cpu-int8'; version: semver like 1.4.0",
        ) from e


def _reference(
    runner: ModelRunner,
    pre: Preprocess,
    raw: RawInputs,
    post: Postprocess,
    score: str | None,
    cfg: BundleConfig,
) -> dict[str, Any]:
    n = raw_len(raw)
    if n == 0:
        raise InputError(
            "the reference data is empty", hint="pass at least one sample, or omit reference_raw"
        )
    first = runner.inputs[0].name
    feats, probs = [], []
    names: list[str] = []
    for lo in range(0, n, _REF_CHUNK):
        part = raw_slice(raw, lo, min(n, lo + _REF_CHUNK))
        feeds = _feeds(runner.inputs, pre, part)
        names, f = summarize_features(feeds[first])
        feats.append(f)
        if score is not None:
            s = runner.run(feeds)[score].astype(np.float64)
            probs.append(softmax(s) if post.softmax else s)
    return compute_reference(
        np.concatenate(feats),
        names,
        np.concatenate(probs) if probs else None,
        labels=post.labels,
        n_bins=cfg.reference_bins,
        sample_size=cfg.reference_sample_size,
    ) | {"input": first, "score_output": score}
