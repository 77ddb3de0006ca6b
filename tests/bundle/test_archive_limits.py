"""Boundary tests for every cap safe extraction and patching enforce: at the limit accepted, one past refused.

The limits are set from the fixture's own figures (entry count, largest entry, total bytes, manifest
size), so an off-by-one, a cap raised tenfold or a total that forgets earlier entries cannot pass.
"""

from __future__ import annotations

import tarfile

import pytest
from bundletools import read_entries, rebuild
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.bundle import BundleConfig, read_manifest
from edgefleet.bundle._archive import check_member_name, safe_extract
from edgefleet.bundle._delta import apply_delta, make_delta, read_delta_header
from edgefleet.errors import DeltaError, ManifestError, UnsafeArchiveError

FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _figures(archive):
    with tarfile.open(archive) as tar:
        sizes = {m.name: m.size for m in tar.getmembers()}
    return len(sizes), max(sizes.values()), sum(sizes.values()), sizes["manifest.json"]


def _extract(archive, tmp_path_factory, **limits):
    dest = tmp_path_factory.mktemp("x") / "out"
    return safe_extract(archive, dest, config=BundleConfig(**limits))


@FEW
@given(slack=st.integers(-3, 3))
def test_entry_count_cap_boundary(digits_bundle, tmp_path_factory, slack):
    n, _, _, _ = _figures(digits_bundle)
    limit = n + slack
    if slack >= 0:
        out, _ = _extract(digits_bundle, tmp_path_factory, max_entries=limit)
        assert len(list(out.rglob("*"))) == n
    else:
        with pytest.raises(UnsafeArchiveError, match=f"more than {limit} entries"):
            _extract(digits_bundle, tmp_path_factory, max_entries=limit)


@FEW
@given(slack=st.integers(-3, 3))
def test_entry_bytes_cap_boundary(digits_bundle, tmp_path_factory, slack):
    _, biggest, _, _ = _figures(digits_bundle)
    limit = biggest + slack
    if slack >= 0:
        _extract(digits_bundle, tmp_path_factory, max_entry_bytes=limit)
    else:
        with pytest.raises(UnsafeArchiveError, match=f"bytes, more than {limit}"):
            _extract(digits_bundle, tmp_path_factory, max_entry_bytes=limit)


@FEW
@given(slack=st.integers(-3, 3))
def test_total_bytes_cap_counts_every_entry(digits_bundle, tmp_path_factory, slack):
    _, biggest, total, _ = _figures(digits_bundle)
    limit = total + slack
    assert biggest < total - 3, "fixture must hold several entries so a per-entry total would differ"
    if slack >= 0:
        _extract(digits_bundle, tmp_path_factory, max_total_bytes=limit)
    else:
        with pytest.raises(UnsafeArchiveError, match=f"add up to more than {limit} bytes"):
            _extract(digits_bundle, tmp_path_factory, max_total_bytes=limit)


def test_total_cap_below_the_sum_of_entries_each_under_it(digits_bundle, tmp_path):
    """Every entry fits the total on its own; only their sum does not."""
    _, biggest, total, _ = _figures(digits_bundle)
    with pytest.raises(UnsafeArchiveError, match="add up to"):
        safe_extract(digits_bundle, tmp_path / "o", config=BundleConfig(max_total_bytes=biggest + 1))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("slack", [0, 1, -1])
def test_manifest_size_cap_boundary(digits_bundle, slack):
    _, _, _, msize = _figures(digits_bundle)
    cfg = BundleConfig(max_manifest_bytes=msize + slack)
    if slack >= 0:
        assert read_manifest(digits_bundle, config=cfg).name == "digits"
    else:
        with pytest.raises(ManifestError, match=f"is {msize} bytes, more than the {msize - 1} allowed"):
            read_manifest(digits_bundle, config=cfg)


def _deep(depth: int) -> str:
    return "/".join(["d"] * (depth - 1) + ["f.bin"])


@given(depth=st.integers(1, 12))
def test_depth_limit_is_eight_components(depth):
    why = check_member_name(_deep(depth))
    assert (why is None) == (depth <= 8), (depth, why)
    if depth > 8:
        assert why == "path too deep or too long"


@given(length=st.integers(1, 260))
def test_name_length_limit_is_200_characters(length):
    name = "a" * length
    why = check_member_name(name)
    assert (why is None) == (length <= 200), (length, why)


def test_name_length_limit_counts_the_whole_path():
    name = "/".join(["a" * 49] * 4)  # 199 characters, depth 4
    assert check_member_name(name) is None
    assert check_member_name(name + "b") is None  # 200
    assert check_member_name(name + "bc") == "path too deep or too long"  # 201


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("model.onnx", True),
        ("a", True),
        ("0x", True),
        ("docs/readme.md", True),
        ("-x", False),
        (".hidden", False),
        ("_x", False),
        ("a/.b", False),
        ("", False),
        ("a\\b", False),
        ("a\x00b", False),
        ("C:evil", False),
        ("/abs", False),
        ("a/", False),
        ("a/./b", False),
        ("./model.onnx", False),
        ("a//b", False),
        ("a/../b", False),
        ("a b", False),
    ],
)
def test_member_name_rules(name, ok):
    assert (check_member_name(name) is None) == ok


@pytest.mark.parametrize("depth", [8, 9])
def test_deep_entry_extracts_at_the_depth_limit_and_is_refused_past_it(digits_bundle, tmp_path, depth):
    name = _deep(depth)
    deep = rebuild(digits_bundle, tmp_path / "deep.tar", replace={name: b"payload"})
    if depth <= 8:
        out, manifest = safe_extract(deep, tmp_path / "out")
        assert (out / name).read_bytes() == b"payload"
        assert name in manifest.files
    else:
        with pytest.raises(UnsafeArchiveError, match="too deep or too long"):
            safe_extract(deep, tmp_path / "out")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("length", [200, 201])
def test_long_entry_name_extracts_at_the_limit_and_is_refused_past_it(digits_bundle, tmp_path, length):
    name = "n" * (length - 4) + ".bin"
    long = rebuild(digits_bundle, tmp_path / "long.tar", replace={name: b"payload"})
    if length <= 200:
        out, _ = safe_extract(long, tmp_path / "out")
        assert (out / name).read_bytes() == b"payload"
    else:
        with pytest.raises(UnsafeArchiveError, match="too deep or too long"):
            safe_extract(long, tmp_path / "out")


def test_archive_is_flushed_and_fsynced_whole_before_it_appears(tmp_path, monkeypatch):
    """write_archive's durability: fsync sees every byte (flushed first), and only then the rename."""
    import os

    from edgefleet.bundle._archive import write_archive

    src = tmp_path / "model.onnx"
    src.write_bytes(b"m" * 5000)
    out = tmp_path / "out" / "b.tar"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)
        assert not out.exists(), "fsync must come before the rename"
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_archive(out, b"{}", {"model.onnx": src}, mtime=0)
    assert synced and synced[0] == out.stat().st_size  # flushed: nothing left in a buffer at fsync
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


def test_every_entry_is_checked_not_only_the_first(digits_bundle, tmp_path):
    """A bad name placed last (after the manifest and all model files) is still refused."""
    entries = read_entries(digits_bundle)
    names = sorted(n for n in entries if n != "manifest.json")
    bad = rebuild(digits_bundle, tmp_path / "bad.tar", replace={"zz/" + _deep(9): b"x"})
    assert names  # the hostile entry sorts after every real one
    with pytest.raises(UnsafeArchiveError, match="too deep"):
        safe_extract(bad, tmp_path / "out")


@pytest.fixture(scope="module")
def patch_v2(digits_bundle, digits_bundle_v2, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch") / "v1-v2.patch"
    make_delta(digits_bundle, digits_bundle_v2, out, method="zstd")
    return out


@pytest.mark.parametrize("slack", [0, 1, -1])
def test_patch_target_cap_boundary_when_applying(digits_bundle, digits_bundle_v2, patch_v2, tmp_path, slack):
    info = read_delta_header(patch_v2)
    cfg = BundleConfig(max_patch_target_bytes=info.target_length + slack)
    out = tmp_path / "new.tar"
    if slack >= 0:
        apply_delta(digits_bundle, patch_v2, out, expected_sha256=info.target_sha256, config=cfg)
        assert out.read_bytes() == digits_bundle_v2.read_bytes()
    else:
        with pytest.raises(DeltaError, match=f"would produce {info.target_length} bytes, more than"):
            apply_delta(digits_bundle, patch_v2, out, expected_sha256=info.target_sha256, config=cfg)
        assert not out.exists()


@pytest.mark.parametrize("slack", [0, -1])
def test_patch_target_cap_boundary_when_making(digits_bundle, digits_bundle_v2, tmp_path, slack):
    size = digits_bundle_v2.stat().st_size
    cfg = BundleConfig(max_patch_target_bytes=size + slack)
    out = tmp_path / "p.patch"
    if slack >= 0:
        assert (
            make_delta(digits_bundle, digits_bundle_v2, out, method="zstd", config=cfg).target_length == size
        )
    else:
        with pytest.raises(DeltaError, match=f"larger than {size - 1} bytes"):
            make_delta(digits_bundle, digits_bundle_v2, out, method="zstd", config=cfg)
        assert not out.exists()


def test_patch_expected_length_must_match(digits_bundle, patch_v2, tmp_path):
    info = read_delta_header(patch_v2)
    out = tmp_path / "new.tar"
    apply_delta(
        digits_bundle, patch_v2, out, expected_sha256=info.target_sha256, expected_length=info.target_length
    )
    for wrong in (info.target_length - 1, info.target_length + 1):
        with pytest.raises(DeltaError, match="not the expected"):
            apply_delta(
                digits_bundle,
                patch_v2,
                tmp_path / "x.tar",
                expected_sha256=info.target_sha256.upper(),
                expected_length=wrong,
            )


def test_delta_functions_take_plain_string_paths(digits_bundle, digits_bundle_v2, tmp_path):
    patch = tmp_path / "p.patch"
    info = make_delta(str(digits_bundle), str(digits_bundle_v2), str(patch), method="zstd")
    assert read_delta_header(str(patch)).target_sha256 == info.target_sha256
    out = apply_delta(
        str(digits_bundle), str(patch), str(tmp_path / "n.tar"), expected_sha256=info.target_sha256
    )
    assert out.read_bytes() == digits_bundle_v2.read_bytes()


def _repacked(patch, out, payload_edit):
    """The patch with its payload edited and the header's payload hash recomputed (a well-formed lie)."""
    import hashlib

    from edgefleet.bundle._delta import _HEADER

    data = patch.read_bytes()
    fields = list(_HEADER.unpack_from(data))
    payload = payload_edit(data[_HEADER.size :])
    fields[-1] = hashlib.sha256(payload).digest()
    out.write_bytes(_HEADER.pack(*fields) + payload)
    return out


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda p: p + b"trailing bytes", "does not end where its header says"),
        (lambda p: p[: len(p) // 2], "cannot be applied|does not end where"),
        (lambda p: b"\x00" * len(p), "cannot be applied"),
    ],
)
def test_well_hashed_but_broken_payload_is_a_delta_error(digits_bundle, patch_v2, tmp_path, edit, pattern):
    info = read_delta_header(patch_v2)
    bad = _repacked(patch_v2, tmp_path / "bad.patch", edit)
    with pytest.raises(DeltaError, match=pattern):
        apply_delta(digits_bundle, bad, tmp_path / "n.tar", expected_sha256=info.target_sha256)
    assert not (tmp_path / "n.tar").exists()


def test_missing_zstd_is_a_clear_delta_error(monkeypatch):
    import sys

    from edgefleet.bundle._delta import _zstd_module

    monkeypatch.setitem(sys.modules, "compression", None)
    monkeypatch.setitem(sys.modules, "backports", None)
    with pytest.raises(DeltaError, match="need backports.zstd") as e:
        _zstd_module()
    assert e.value.hint
