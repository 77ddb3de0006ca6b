"""The ground-floor filesystem primitives (edgefleet._fs) every package writes and hashes through."""

from __future__ import annotations

import hashlib
import os

import pytest

from edgefleet import _fs


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    _fs.atomic_write(p, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(_fs.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _fs.atomic_write(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_sets_the_mode_despite_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        _fs.atomic_write(tmp_path / "sub" / "k.pem", b"x", mode=0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "k.pem").stat().st_mode & 0o777 == 0o640


def test_hashes_stream_across_chunks(tmp_path):
    data = os.urandom((1 << 20) * 2 + 17)  # crosses two chunk boundaries
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert _fs.file_sha256(p) == (len(data), hashlib.sha256(data).hexdigest())
    assert _fs.sha256_file(p) == hashlib.sha256(data).hexdigest()
    n, sha = _fs.copy_hashed(p, tmp_path / "copy")
    assert (n, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "copy").read_bytes() == data
    with pytest.raises(FileExistsError):
        _fs.copy_hashed(p, tmp_path / "copy")  # never overwrites
