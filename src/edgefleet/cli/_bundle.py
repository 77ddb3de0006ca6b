"""``edgefleet bundle create | inspect | verify | diff | apply``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edgefleet.cli._common import console, load_preprocess, print_json
from edgefleet.errors import InputError

if TYPE_CHECKING:
    from edgefleet.protocol import Manifest

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

bundle_app = typer.Typer(help="Build, inspect, verify and diff model bundles.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")


def _load_raw(path: Path) -> Any:
    """Raw inputs from an .npy, an .npz (one array, an 'x' array, or one array per model input) or an image folder."""
    import numpy as np

    if not path.exists():
        raise InputError(f"{path} does not exist", hint="pass an .npy/.npz file or a folder of images")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(
                f"{path} holds no image files", hint=f"expected {', '.join(sorted(_IMAGE_SUFFIXES))}"
            )
        return [p.read_bytes() for p in files]
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if len(arrays) == 1:
                return next(iter(arrays.values()))
            if "x" in arrays:
                return arrays["x"]
            return arrays
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}", hint="save inputs with numpy.save / numpy.savez") from e
    raise InputError(
        f"{path}: unsupported input file {path.suffix!r}", hint="use .npy, .npz or a folder of images"
    )


def _head(raw: Any, n: int) -> Any:
    if isinstance(raw, dict):
        return {k: v[:n] for k, v in raw.items()}
    return raw[:n]


def _labels(value: str | None) -> list[str] | None:
    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [v.strip() for v in value.split(",")]


@bundle_app.command("create")
def create(
    model: Path = typer.Option(..., "--model", "-m", help="ONNX (or .tflite) model file."),
    name: str = typer.Option(..., help="Model name (lowercase slug)."),
    version: str = typer.Option(..., help="Semver version, e.g. 1.4.0."),
    variant: str = typer.Option("cpu", help="Hardware class, e.g. cpu-int8, pi4."),
    golden: Path = typer.Option(..., help="Raw inputs: .npy, .npz or a folder of images."),
    golden_count: int = typer.Option(32, min=1, help="How many of them form the golden set (the first N)."),
    reference: Path | None = typer.Option(
        None, help="Raw data for reference statistics (default: all of --golden)."
    ),
    preprocess: Path | None = typer.Option(None, help="Preprocessing contract: JSON/YAML list of steps."),
    labels: str | None = typer.Option(None, help="Class labels: a file (one per line) or comma-separated."),
    softmax: bool = typer.Option(False, "--softmax", help="The scores output is logits; apply softmax."),
    atol: float = typer.Option(1e-4, help="Golden-set absolute tolerance."),
    rtol: float = typer.Option(1e-3, help="Golden-set relative tolerance."),
    out: Path = typer.Option(..., "-o", "--out", help="Archive to write (.tar)."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Build a bundle: run the model on the golden inputs, compute reference statistics, write the archive."""
    from edgefleet.bundle import create_bundle, read_manifest
    from edgefleet.protocol import Postprocess

    raw = _load_raw(golden)
    ref = _load_raw(reference) if reference is not None else raw
    steps = load_preprocess(preprocess) if preprocess is not None else None
    with console.status(f"building {name} {version} ({variant})..."):
        create_bundle(
            model,
            out,
            name=name,
            version=version,
            variant=variant,
            inputs_raw=_head(raw, golden_count),
            preprocess=steps,
            reference_raw=ref,
            postprocess=Postprocess(softmax=softmax, labels=_labels(labels)),
            atol=atol,
            rtol=rtol,
        )
    manifest = read_manifest(out)
    if json_out:
        print_json(
            manifest.model_dump(mode="json") | {"archive": str(out), "archive_bytes": out.stat().st_size}
        )
    else:
        console.print(f"[green]created[/] {out} ({out.stat().st_size:,} bytes): {manifest.key}")


def _manifest_tables(m: Manifest) -> None:
    from rich.table import Table

    t = Table(title=f"{m.key}", show_header=False)
    t.add_row("created", m.created.isoformat())
    t.add_row("model", f"{m.model_file} ({m.model_format})")
    t.add_row(
        "runtime",
        f"onnxruntime {m.runtime.onnxruntime}, opset {m.runtime.opset}, "
        f"{', '.join(m.runtime.execution_providers)}",
    )
    t.add_row(
        "postprocess",
        f"{m.postprocess.task}, output={m.postprocess.output}, softmax={m.postprocess.softmax}"
        + (f", {len(m.postprocess.labels)} labels" if m.postprocess.labels else ""),
    )
    if m.golden:
        t.add_row("golden", f"{m.golden.count} samples, atol={m.golden.atol}, rtol={m.golden.rtol}")
    if m.lineage.parent_version:
        t.add_row("parent", m.lineage.parent_version)
    if m.metrics.accuracy is not None:
        t.add_row("accuracy", f"{m.metrics.accuracy:.4f}")
    console.print(t)
    io = Table("tensor", "name", "dtype", "shape")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            io.add_row(kind, s.name, s.dtype, str(s.shape))
    console.print(io)
    if m.preprocess:
        pt = Table("#", "op", "parameters", title="preprocessing contract")
        for i, s in enumerate(m.preprocess):
            params = {k: v for k, v in s.model_dump().items() if k != "op"}
            pt.add_row(str(i), s.op, ", ".join(f"{k}={v}" for k, v in params.items()))
        console.print(pt)
    ft = Table("file", "bytes", "sha256")
    for name, e in sorted(m.files.items()):
        ft.add_row(name, f"{e.size:,}", e.sha256[:16] + "...")
    console.print(ft)


@bundle_app.command("inspect")
def inspect(
    archive: Path = typer.Argument(..., help="Bundle archive."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show a bundle's manifest (reads manifest.json only)."""
    from edgefleet.bundle import read_manifest

    m = read_manifest(archive)
    if json_out:
        print_json(m.model_dump(mode="json"))
    else:
        _manifest_tables(m)


@bundle_app.command("verify")
def verify(
    archive: Path = typer.Argument(..., help="Bundle archive."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every hash, then rerun the contract and the golden set in a fresh ONNX Runtime session."""
    from edgefleet.bundle import Bundle

    with console.status(f"verifying {archive}..."), Bundle.open(archive) as b:
        report = b.verify()
    if json_out:
        print_json(report.to_dict())
        return
    console.print(
        f"[green]ok[/] {report.key}: {report.files_checked} files hashed, "
        f"{report.golden_count} golden samples match ({report.seconds:.2f}s)"
    )


@bundle_app.command("diff")
def diff(
    old: Path = typer.Argument(..., help="Old bundle archive (the base)."),
    new: Path = typer.Argument(..., help="New bundle archive (the target)."),
    out: Path = typer.Option(..., "-o", "--out", help="Patch file to write."),
    method: str = typer.Option("auto", help="auto, zstd or bsdiff."),
    json_out: bool = typer.Option(False, "--json", help="Print patch info as JSON."),
) -> None:
    """Write a binary delta from OLD to NEW."""
    from edgefleet.bundle import make_delta

    if method not in ("auto", "zstd", "bsdiff"):
        raise InputError(f"unknown method {method!r}", hint="use auto, zstd or bsdiff")
    with console.status("computing delta..."):
        info = make_delta(old, new, out, method=method)  # type: ignore[arg-type]
    if json_out:
        print_json(info.to_dict())
    else:
        console.print(
            f"[green]wrote[/] {out}: {info.size:,} bytes ({100 * info.ratio:.1f}% of the new archive, {info.method})"
        )


@bundle_app.command("apply")
def apply(
    old: Path = typer.Argument(..., help="Old bundle archive (the base the patch was made from)."),
    patch: Path = typer.Argument(..., help="Patch file from `bundle diff`."),
    out: Path = typer.Option(..., "-o", "--out", help="Archive to write."),
    expected_sha256: str | None = typer.Option(
        None, help="sha256 the result must have (default: the patch header's, which only guards corruption)."
    ),
    expected_length: int | None = typer.Option(None, help="Length the result must have."),
) -> None:
    """Rebuild NEW from OLD and a patch; the result is verified before it is written."""
    from edgefleet.bundle import apply_delta, read_delta_header

    info = read_delta_header(patch)
    if expected_sha256 is None:
        console.print("[yellow]note:[/] no --expected-sha256: checking against the patch header only")
    apply_delta(
        old,
        patch,
        out,
        expected_sha256=expected_sha256 or info.target_sha256,
        expected_length=expected_length,
    )
    console.print(f"[green]wrote[/] {out} (sha256 {info.target_sha256[:16]}... verified)")


def schema_text() -> str:
    """The manifest's JSON Schema as committed in docs/manifest.schema.json (sorted keys, 2-space indent)."""
    import json

    from edgefleet.protocol import manifest_json_schema

    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"


@bundle_app.command("schema")
def schema(
    out: Path | None = typer.Option(None, "-o", "--out", help="Write to this file instead of stdout."),
) -> None:
    """Print (or write) the JSON Schema of manifest.json."""
    text = schema_text()
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        console.print(f"[green]wrote[/] {out}")
