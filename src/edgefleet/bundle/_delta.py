"""Binary deltas between two bundle archives (zstd patch-from or bsdiff4), self-describing and verified.

A patch file is a fixed header followed by the payload::

    magic "EFDELTA\\0" | format u8 | method u8 | reserved u16 | zstd window_log u32 |
    base sha256 (32) | base length u64 | target sha256 (32) | target length u64 | payload sha256 (32)

so ``apply_delta`` refuses a patch made for another base, a corrupted payload, or a patch that does not
produce the archive the caller trusts (``expected_sha256`` from TUF) before writing anything.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from edgefleet._fs import atomic_write
from edgefleet.bundle._config import BundleConfig, settings
from edgefleet.errors import DeltaError, IntegrityError

__all__ = ["DeltaInfo", "make_delta", "apply_delta", "read_delta_header", "DELTA_MAGIC"]

log = logging.getLogger(__name__)

DELTA_MAGIC = b"EFDELTA\x00"
_FORMAT = 1
_HEADER = struct.Struct(">8sBBHI32sQ32sQ32s")
_METHODS = {"zstd": 1, "bsdiff": 2}
_METHOD_NAMES = {v: k for k, v in _METHODS.items()}
_MAX_WINDOW_LOG = 31  # zstd's limit on 64-bit hosts


@dataclass(frozen=True)
class DeltaInfo:
    """What a patch file says about itself."""

    method: str
    size: int
    base_sha256: str
    base_length: int
    target_sha256: str
    target_length: int
    path: str | None = None

    @property
    def ratio(self) -> float:
        """Patch size as a fraction of the target archive."""
        return self.size / self.target_length if self.target_length else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def _window_log(*lengths: int) -> int:
    # patch-from needs a window covering the base (the "dictionary") and the target
    return min(_MAX_WINDOW_LOG, max(10, math.ceil(math.log2(max(1, *lengths))) + 1))


def _zstd_module():
    """zstd with prefix support: the standard library's ``compression.zstd`` (3.14+) or its backport.

    python-zstandard cannot do patch-from: it loads a base as a digested dictionary, which zstd truncates
    or indexes sparsely past ~16 MB, so a 100 MB base gave no matches at all (docs/benchmarks/bundle.md).
    """
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[no-redef]
        except ImportError as e:
            raise DeltaError(
                "zstd deltas need backports.zstd on Python < 3.14", hint="pip install 'backports.zstd'"
            ) from e
    return zstd


def _zstd_diff(old: bytes, new: bytes, level: int) -> tuple[bytes, int]:
    zstd = _zstd_module()
    wlog = _window_log(len(old), len(new))
    p = zstd.CompressionParameter
    options = {p.compression_level: level, p.window_log: wlog, p.enable_long_distance_matching: 1}
    # patch-from: the base is a raw *prefix* (referenced once, fully indexed by long-distance matching)
    prefix = zstd.ZstdDict(old, is_raw=True).as_prefix
    return zstd.compress(new, options=options, zstd_dict=prefix), wlog


def _zstd_patch(old: bytes, payload: bytes, wlog: int, target_length: int) -> bytes:
    zstd = _zstd_module()
    d = zstd.ZstdDecompressor(
        zstd_dict=zstd.ZstdDict(old, is_raw=True).as_prefix,
        options={zstd.DecompressionParameter.window_log_max: wlog},
    )
    out = d.decompress(payload, max_length=target_length)  # bounded: a hostile patch cannot balloon
    if not d.eof or d.unused_data:
        raise DeltaError("patch payload does not end where its header says", hint="the patch is corrupted")
    return out


def make_delta(
    old_archive: Path,
    new_archive: Path,
    out_patch: Path,
    method: Literal["auto", "zstd", "bsdiff"] = "auto",
    *,
    config: BundleConfig | None = None,
) -> DeltaInfo:
    """Write a patch that turns ``old_archive`` into ``new_archive``.

    Args:
        method: ``auto`` uses ``BundleConfig.delta_method`` (zstd; see docs/benchmarks/bundle.md).

    Returns:
        The patch's header information and size.
    """
    cfg = config or settings()
    m = cfg.delta_method if method == "auto" else method
    if m not in _METHODS:
        raise DeltaError(f"unknown delta method {method!r}", hint="use auto, zstd or bsdiff")
    old_archive, new_archive, out_patch = Path(old_archive), Path(new_archive), Path(out_patch)
    for p in (old_archive, new_archive):
        if not p.is_file():
            raise DeltaError(f"{p} does not exist or is not a file", hint="check the path")
    old, new = old_archive.read_bytes(), new_archive.read_bytes()
    if len(new) > cfg.max_patch_target_bytes:
        raise DeltaError(
            f"{new_archive} is larger than {cfg.max_patch_target_bytes} bytes",
            hint="EDGEFLEET_BUNDLE_MAX_PATCH_TARGET_BYTES raises the cap",
        )
    wlog = 0
    if m == "zstd":
        payload, wlog = _zstd_diff(old, new, cfg.zstd_level)
    else:
        import bsdiff4

        payload = bsdiff4.diff(old, new)
    info = DeltaInfo(
        method=m,
        size=_HEADER.size + len(payload),
        base_sha256=hashlib.sha256(old).hexdigest(),
        base_length=len(old),
        target_sha256=hashlib.sha256(new).hexdigest(),
        target_length=len(new),
        path=str(out_patch),
    )
    header = _HEADER.pack(
        DELTA_MAGIC,
        _FORMAT,
        _METHODS[m],
        0,
        wlog,
        bytes.fromhex(info.base_sha256),
        info.base_length,
        bytes.fromhex(info.target_sha256),
        info.target_length,
        hashlib.sha256(payload).digest(),
    )
    atomic_write(out_patch, header + payload)
    log.info(
        "delta %s -> %s: %d bytes (%.1f%% of target, %s)",
        old_archive,
        new_archive,
        info.size,
        100 * info.ratio,
        m,
    )
    return info


def _parse_header(data: bytes, source: str) -> tuple[DeltaInfo, int, bytes]:
    if len(data) < _HEADER.size or not data.startswith(DELTA_MAGIC):
        raise DeltaError(
            f"{source} is not an edgefleet delta (bad magic or too short)",
            hint="make patches with `edgefleet bundle diff`",
        )
    magic, fmt, method, _res, wlog, base, blen, target, tlen, psha = _HEADER.unpack_from(data)
    if fmt != _FORMAT:
        raise DeltaError(
            f"{source} is delta format {fmt}; this edgefleet reads format {_FORMAT}",
            hint="upgrade edgefleet, or download the full bundle",
        )
    if method not in _METHOD_NAMES:
        raise DeltaError(f"{source} names an unknown delta method {method}", hint="the patch is corrupted")
    info = DeltaInfo(_METHOD_NAMES[method], len(data), base.hex(), blen, target.hex(), tlen, source)
    return info, wlog, psha


def read_delta_header(patch: Path) -> DeltaInfo:
    """Read a patch's header (which base it applies to, which target it produces)."""
    patch = Path(patch)
    if not patch.is_file():
        raise DeltaError(f"patch {patch} does not exist", hint="check the path")
    with open(patch, "rb") as f:
        head = f.read(_HEADER.size)
    info, _, _ = _parse_header(head, str(patch))
    return DeltaInfo(**(asdict(info) | {"size": patch.stat().st_size}))


def apply_delta(
    old_archive: Path,
    patch: Path,
    out: Path,
    *,
    expected_sha256: str,
    expected_length: int | None = None,
    config: BundleConfig | None = None,
) -> Path:
    """Rebuild the new archive from ``old_archive`` and ``patch`` and verify it before it appears at ``out``.

    Args:
        expected_sha256: sha256 the result must have (from a trusted source, e.g. TUF targets metadata).
        expected_length: its length, when known.

    Raises:
        DeltaError: not a patch, corrupted, made for another base or for another target.
        IntegrityError: the result does not hash to ``expected_sha256``.
        Nothing is written at ``out`` on any error (an existing file there is left untouched).
    """
    cfg = config or settings()
    old_archive, patch, out = Path(old_archive), Path(patch), Path(out)
    for p in (old_archive, patch):
        if not p.is_file():
            raise DeltaError(f"{p} does not exist or is not a file", hint="check the path")
    expected_sha256 = expected_sha256.lower()
    data = patch.read_bytes()
    info, wlog, psha = _parse_header(data, str(patch))
    if info.target_sha256 != expected_sha256 or (
        expected_length is not None and info.target_length != expected_length
    ):
        raise DeltaError(
            f"{patch} produces {info.target_sha256[:16]}... ({info.target_length} bytes), not the expected "
            f"{expected_sha256[:16]}...",
            hint="this patch is for another version; download the right patch or the full bundle",
        )
    if info.target_length > cfg.max_patch_target_bytes:
        raise DeltaError(
            f"{patch} would produce {info.target_length} bytes, more than {cfg.max_patch_target_bytes}",
            hint="EDGEFLEET_BUNDLE_MAX_PATCH_TARGET_BYTES raises the cap",
        )
    if info.method == "zstd" and wlog != _window_log(info.base_length, info.target_length):
        raise DeltaError(
            f"{patch} asks for a zstd window of 2^{wlog}, not what its sizes need",
            hint="the patch is corrupted or hostile; download the full bundle",
        )
    payload = data[_HEADER.size :]
    if hashlib.sha256(payload).digest() != psha:
        raise DeltaError(f"{patch} is corrupted (payload hash mismatch)", hint="download the patch again")
    old = old_archive.read_bytes()
    base_sha = hashlib.sha256(old).hexdigest()
    if len(old) != info.base_length or base_sha != info.base_sha256:
        raise DeltaError(
            f"{patch} applies to base {info.base_sha256[:16]}... ({info.base_length} bytes), but "
            f"{old_archive.name} is {base_sha[:16]}... ({len(old)} bytes)",
            hint="apply the patch to the version it was made from, or download the full bundle",
            base_expected=info.base_sha256,
            base_actual=base_sha,
        )
    try:
        if info.method == "zstd":
            new = _zstd_patch(old, payload, wlog, info.target_length)
        else:
            import bsdiff4

            new = bsdiff4.patch(old, payload)
    except DeltaError:
        raise
    except Exception as e:  # ZstdError, bsdiff4's ValueError/RuntimeError
        raise DeltaError(f"{patch} cannot be applied: {e}", hint="download the full bundle instead") from e
    new_sha = hashlib.sha256(new).hexdigest()
    if len(new) != info.target_length or new_sha != expected_sha256:
        raise IntegrityError(
            f"applying {patch.name} gave {new_sha[:16]}... ({len(new)} bytes), expected "
            f"{expected_sha256[:16]}... ({info.target_length} bytes)",
            hint="download the full bundle instead",
        )
    atomic_write(out, new)
    return out
