"""Helpers for bundle tests: build tampered or hostile archives, snapshot directories."""

from __future__ import annotations

import hashlib
import io
import tarfile
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.protocol import FileEntry, Manifest

CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SCALE = [{"op": "scale", "factor": 1 / 16}]


def read_entries(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def write_tar(out: Path, entries: list[tuple[str, bytes] | tarfile.TarInfo]) -> Path:
    """Write a tar with exactly these entries (bytes for files, or a bare TarInfo for links/devices)."""
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tar.addfile(e)
            else:
                name, data = e
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return out


def rebuild(
    archive: Path,
    out: Path,
    *,
    replace: dict[str, bytes] | None = None,
    rehash: bool = True,
    manifest_edit=None,
) -> Path:
    """Re-pack a bundle with some files replaced; with ``rehash`` the manifest is updated to match,
    so only deeper checks (golden set, model load) can catch the change."""
    entries = read_entries(archive)
    manifest = Manifest.from_json(entries["manifest.json"])
    for name, data in (replace or {}).items():
        entries[name] = data
        if rehash:
            manifest.files[name] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    if manifest_edit is not None:
        manifest_edit(manifest)
    entries["manifest.json"] = manifest.to_json()
    ordered = [("manifest.json", entries.pop("manifest.json"))] + sorted(entries.items())
    return write_tar(out, ordered)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to prove nothing changed)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def build_tflite_dense(w, b, path: Path) -> Path:
    """Write a real one-layer TFLite model (FULLY_CONNECTED: scores = x @ w.T + b, dynamic batch).

    Built with LiteRT's own flatbuffer schema, so tests need no TensorFlow.
    """
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as s

    def tensor(name, shape, buf, sig=None):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buf
        if sig is not None:
            t.shapeSignature = list(sig)
        return t

    m = s.ModelT()
    m.version = 3
    m.buffers = [s.BufferT() for _ in range(4)]
    m.buffers[2].data = list(np.asarray(w, np.float32).tobytes())
    m.buffers[3].data = list(np.asarray(b, np.float32).tobytes())
    n_out, n_in = w.shape
    sg = s.SubGraphT()
    sg.name = "main"
    sg.tensors = [
        tensor("x", [1, n_in], 0, [-1, n_in]),
        tensor("scores", [1, n_out], 1, [-1, n_out]),
        tensor("w", w.shape, 2),
        tensor("b", b.shape, 3),
    ]
    sg.inputs, sg.outputs = [0], [1]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 2, 3], [1]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    sg.operators = [op]
    m.subgraphs = [sg]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    m.operatorCodes = [code]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path
