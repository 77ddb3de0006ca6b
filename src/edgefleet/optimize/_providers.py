"""Variants measured per execution provider: each provider the profile (or ``--providers``) lists runs
every working variant through ``_ep_probe.py`` — in this interpreter when this onnxruntime has the
provider, or in the interpreter configured for it (``EDGEFLEET_OPTIMIZE_PROVIDER_PYTHONS``, e.g. a venv
with ``onnxruntime-openvino``, which replaces the ``onnxruntime`` module and so cannot live beside it).
A provider found in neither is reported "not available here", never estimated."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefleet.errors import ConfigError
from edgefleet.optimize._config import OptimizeConfig
from edgefleet.optimize._data import Dataset
from edgefleet.optimize._quality import Task, measure_quality
from edgefleet.optimize._report import ProviderFigures, ProviderResult, VariantResult

__all__ = ["PROVIDERS", "ProviderFigures", "ProviderResult", "provider_names", "measure_providers"]

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}
_PROBE = Path(__file__).with_name("_ep_probe.py")


def provider_names(spec: str) -> list[str]:
    """``cpu,openvino`` (or full onnxruntime names) -> onnxruntime provider names, CPU first."""
    out: list[str] = []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        name = PROVIDERS.get(raw.lower(), raw if raw.endswith("ExecutionProvider") else None)
        if name is None:
            raise ConfigError(
                f"execution provider {raw!r} is unknown",
                hint=f"use {', '.join(PROVIDERS)} or an onnxruntime name such as OpenVINOExecutionProvider",
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError("--providers names no provider", hint="e.g. --providers cpu,openvino")
    return out


def _short(provider: str) -> str:
    return next((k for k, v in PROVIDERS.items() if v == provider), provider)


def _interpreter(provider: str, settings: OptimizeConfig) -> tuple[str | None, str]:
    """The Python that has ``provider``: this one, the configured one, or None with the reason."""
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return sys.executable, ""
    other = settings.provider_pythons.get(_short(provider)) or settings.provider_pythons.get(provider)
    if not other:
        return None, (
            f"onnxruntime {ort.__version__} here has no {provider} and no interpreter is configured for it "
            f'(EDGEFLEET_OPTIMIZE_PROVIDER_PYTHONS=\'{{"{_short(provider)}": "/path/to/python"}}\')'
        )
    try:
        r = subprocess.run(
            [other, "-c", "import json, onnxruntime as o; print(json.dumps(o.get_available_providers()))"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        found = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        return None, f"the interpreter configured for it ({other}) cannot be asked: {e}"
    if provider not in found:
        return None, f"the interpreter configured for it ({other}) has no {provider} (it has {found})"
    return other, ""


def measure_providers(
    providers: list[str],
    results: list[VariantResult],
    paths: dict[str, Path],
    evald: Dataset,
    task: Task,
    max_drop: float,
    settings: OptimizeConfig,
    say: Callable[[str], None] = lambda _line: None,
) -> list[ProviderResult]:
    """Every working variant on every listed provider: latency at batch 1 on the first evaluation sample,
    quality on the first ``settings.provider_samples`` against fp32 run here on the CPU provider."""
    from edgefleet.optimize._runner import OrtRunner

    k = min(len(evald), settings.provider_samples)
    samples = evald.samples[:k]
    labels = None if evald.labels is None else evald.labels[:k]
    cpu = OrtRunner(paths["fp32"], threads=1)
    try:
        ref: dict[str, list[np.ndarray]] = {o.name: [] for o in cpu.outputs}
        for smp in samples:
            for name, arr in cpu.run(smp).items():
                ref[name].append(arr)
    finally:
        cpu.close()
    base_quality = measure_quality(task, ref, ref, labels).score
    ok = [r for r in results if r.status == "ok" and r.name in paths]
    out = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-ep-") as tmp:
        feed = Path(tmp) / "inputs.npz"
        np.savez(feed, **{f"{i}/{k}": v for i, s in enumerate(samples) for k, v in s.items()})
        for provider in providers:
            python, why = _interpreter(provider, settings)
            if python is None:
                out.append(ProviderResult(provider=provider, status="not available here", note=why))
                say(f"{_short(provider)}: not available here")
                continue
            pr = ProviderResult(
                provider=provider,
                status="measured",
                interpreter=None if python == sys.executable else python,
            )
            for r in ok:
                say(f"{_short(provider)}: measuring {r.name}")
                pr.variants.append(_probe(python, provider, r.name, paths[r.name], feed, Path(tmp), settings))
                fig = pr.variants[-1]
                if fig.error is None:
                    got = _outputs(Path(tmp) / f"{r.name}.npz", len(samples))
                    q = measure_quality(task, ref, got, labels)
                    fig.drop = base_quality - q.score
            with_ort = [f for f in pr.variants if f.error is None]
            if with_ort:
                pr.onnxruntime = _version(Path(tmp) / f"{with_ort[0].variant}.npz")
            fits = [f for f in with_ort if f.drop is not None and f.drop <= max_drop + 1e-9 and f.p50_ms]
            pr.best = min(fits, key=lambda f: f.p50_ms or float("inf")).variant if fits else None
            out.append(pr)
    return out


def _probe(
    python: str, provider: str, name: str, model: Path, feed: Path, tmp: Path, settings: OptimizeConfig
) -> ProviderFigures:
    dst = tmp / f"{name}.npz"
    cmd = [python, str(_PROBE), str(model), provider, str(feed), str(dst), str(settings.provider_runs)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.memory_timeout_s)
    except subprocess.TimeoutExpired:
        return ProviderFigures(variant=name, error=f"timed out after {settings.memory_timeout_s:g} s")
    if r.returncode != 0 or not dst.exists():
        text = (r.stdout + r.stderr).strip().splitlines()
        return ProviderFigures(variant=name, error=(text[-1] if text else f"exit {r.returncode}")[:200])
    with np.load(dst) as z:
        f = json.loads(str(z["figures"]))
    return ProviderFigures(
        variant=name, p50_ms=f["p50_ms"], p95_ms=f["p95_ms"], init_ms=f["init_ms"], ran_on=f["providers"]
    )


def _outputs(path: Path, n: int) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    with np.load(path) as z:
        for i in range(n):
            for key in z.files:
                if key.startswith(f"{i}/"):
                    out.setdefault(key.split("/", 1)[1], []).append(z[key])
    return out


def _version(path: Path) -> str | None:
    with np.load(path) as z:
        return json.loads(str(z["figures"]))["onnxruntime"]
