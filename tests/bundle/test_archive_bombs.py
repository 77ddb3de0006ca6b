"""Archive bombs: members that expand on extraction are refused before a byte is written (issue 11)."""

from __future__ import annotations

import io
import tarfile

import pytest

from edgefleet.bundle._archive import safe_extract
from edgefleet.errors import UnsafeArchiveError


def _gnu_sparse_member(name: str, realsize: int, data: bytes) -> bytes:
    """A GNU sparse ('S') header + data: ``len(data)`` bytes on disk that extract to ``realsize`` bytes."""
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    buf = bytearray(ti.tobuf(format=tarfile.GNU_FORMAT))
    buf[156:157] = tarfile.GNUTYPE_SPARSE
    # one sparse struct: the data sits at the very end of a file of realsize bytes (the rest is a hole)
    buf[386:398] = tarfile.itn(realsize - len(data), 12, tarfile.GNU_FORMAT)
    buf[398:410] = tarfile.itn(len(data), 12, tarfile.GNU_FORMAT)
    buf[482] = 0  # not extended
    buf[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    buf[148:156] = b"        "
    chksum = sum(buf[:512])
    buf[148:156] = b"%06o\0 " % chksum
    pad = (-len(data)) % 512
    return bytes(buf) + data + b"\0" * pad


def _sparse_bomb(digits_bundle, tmp_path):
    out = io.BytesIO()
    with (
        tarfile.open(digits_bundle) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m))
        tar.fileobj.write(_gnu_sparse_member("model.bin", 2 << 30, b"x" * 4096))
        tar.offset += 512 + 4096
    bomb = tmp_path / "bomb.tar"
    bomb.write_bytes(out.getvalue())
    return bomb


def test_sparse_bomb_peak_memory_and_disk_stay_flat(digits_bundle, tmp_path):
    """In a fresh process: refused, peak RSS barely moves and nothing lands on disk."""
    import json
    import subprocess
    import sys

    bomb = _sparse_bomb(digits_bundle, tmp_path)
    code = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from edgefleet.bundle._archive import safe_extract\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    safe_extract(Path(sys.argv[1]), Path(sys.argv[2])); outcome = 'accepted'\n"
        "except Exception as e:\n"
        "    outcome = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps({'outcome': outcome, "
        "'grew_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))\n"
    )
    dest = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", code, str(bomb), str(dest)], capture_output=True, text=True, timeout=300
    )
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["outcome"].startswith("UnsafeArchiveError") and "sparse" in res["outcome"], res
    assert res["grew_kib"] < 32 * 1024, res
    assert not dest.exists() or sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) == 0


def test_gnu_sparse_member_is_refused_before_extraction(digits_bundle, tmp_path):
    # a real bundle's members, then a 2 GiB sparse member carried by 4 KiB of data
    out = io.BytesIO()
    with (
        tarfile.open(digits_bundle) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m))
        tar.fileobj.write(_gnu_sparse_member("model.bin", 2 << 30, b"x" * 4096))
        tar.offset += 512 + 4096
    bomb = tmp_path / "bomb.tar"
    bomb.write_bytes(out.getvalue())
    assert bomb.stat().st_size < 1 << 20

    with tarfile.open(bomb) as t:  # the fixture really is what a sparse bomb looks like to tarfile
        m = t.getmember("model.bin")
        assert m.issparse() and m.isreg() and m.size == 2 << 30

    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        safe_extract(bomb, dest)
    assert not dest.exists() or not any(dest.rglob("*"))
