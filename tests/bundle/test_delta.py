"""Deltas between bundle archives: both methods round-trip; wrong bases and corrupted patches are refused."""

from __future__ import annotations

import hashlib

import pytest

from edgefleet.bundle import BundleConfig, apply_delta, make_delta, read_delta_header
from edgefleet.errors import DeltaError


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["zstd", "bsdiff"])
def test_round_trip(digits_bundle, digits_bundle_v2, tmp_path, method):
    info = make_delta(digits_bundle, digits_bundle_v2, tmp_path / "p.delta", method=method)
    assert info.method == method
    assert info.size == (tmp_path / "p.delta").stat().st_size
    assert info.target_sha256 == _sha(digits_bundle_v2) and info.base_sha256 == _sha(digits_bundle)
    assert info.size < digits_bundle_v2.stat().st_size  # a delta smaller than what it rebuilds
    out = apply_delta(
        digits_bundle,
        tmp_path / "p.delta",
        tmp_path / "new.tar",
        expected_sha256=info.target_sha256,
        expected_length=info.target_length,
    )
    assert out.read_bytes() == digits_bundle_v2.read_bytes()
    assert read_delta_header(tmp_path / "p.delta") == info


def test_auto_uses_configured_method(digits_bundle, digits_bundle_v2, tmp_path):
    assert make_delta(digits_bundle, digits_bundle_v2, tmp_path / "a").method == "zstd"
    cfg = BundleConfig(delta_method="bsdiff")
    assert make_delta(digits_bundle, digits_bundle_v2, tmp_path / "b", config=cfg).method == "bsdiff"


@pytest.fixture
def patch(digits_bundle, digits_bundle_v2, tmp_path):
    info = make_delta(digits_bundle, digits_bundle_v2, tmp_path / "p.delta")
    return tmp_path / "p.delta", info


def _refused(tmp_path, fn, error, pattern):
    out = tmp_path / "out" / "new.tar"
    with pytest.raises(error, match=pattern) as ei:
        fn(out)
    assert ei.value.hint
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_wrong_base(digits_bundle_v2, patch, tmp_path):
    p, info = patch
    _refused(
        tmp_path,
        lambda out: apply_delta(digits_bundle_v2, p, out, expected_sha256=info.target_sha256),
        DeltaError,
        r"applies to base .* but digits-1.1.0-cpu.tar is",
    )


@pytest.mark.parametrize("where", ["payload", "header-base", "magic"])
def test_corrupted_patch(digits_bundle, patch, tmp_path, where):
    p, info = patch
    data = bytearray(p.read_bytes())
    pos = {"payload": len(data) - 5, "header-base": 20, "magic": 0}[where]
    data[pos] ^= 0x40
    bad = tmp_path / "bad.delta"
    bad.write_bytes(bytes(data))
    pattern = {"payload": "corrupted", "header-base": "applies to base", "magic": "not an edgefleet delta"}[
        where
    ]
    _refused(
        tmp_path,
        lambda out: apply_delta(digits_bundle, bad, out, expected_sha256=info.target_sha256),
        DeltaError,
        pattern,
    )


def test_truncated_patch(digits_bundle, patch, tmp_path):
    p, info = patch
    for n in (10, 140, p.stat().st_size - 1):
        bad = tmp_path / f"t{n}.delta"
        bad.write_bytes(p.read_bytes()[:n])
        _refused(
            tmp_path,
            lambda out, b=bad: apply_delta(digits_bundle, b, out, expected_sha256=info.target_sha256),
            DeltaError,
            "not an edgefleet delta|corrupted",
        )


def test_patch_for_another_target(digits_bundle, patch, tmp_path):
    p, info = patch
    _refused(
        tmp_path,
        lambda out: apply_delta(digits_bundle, p, out, expected_sha256="ab" * 32),
        DeltaError,
        "not the expected abababab",
    )
    _refused(
        tmp_path,
        lambda out: apply_delta(
            digits_bundle, p, out, expected_sha256=info.target_sha256, expected_length=info.target_length + 1
        ),
        DeltaError,
        "produces",
    )


def test_existing_output_is_left_untouched_on_failure(digits_bundle_v2, patch, tmp_path):
    p, info = patch
    out = tmp_path / "current.tar"
    out.write_bytes(b"the good old archive")
    with pytest.raises(DeltaError):
        apply_delta(digits_bundle_v2, p, out, expected_sha256=info.target_sha256)
    assert out.read_bytes() == b"the good old archive"
    assert sorted(x.name for x in tmp_path.iterdir() if ".partial" in x.name) == []


def test_target_cap(digits_bundle, patch, tmp_path):
    p, info = patch
    cfg = BundleConfig(max_patch_target_bytes=1000)
    _refused(
        tmp_path,
        lambda out: apply_delta(digits_bundle, p, out, expected_sha256=info.target_sha256, config=cfg),
        DeltaError,
        "more than 1000",
    )


def test_make_delta_bad_input(digits_bundle, tmp_path):
    with pytest.raises(DeltaError, match="does not exist"):
        make_delta(digits_bundle, tmp_path / "missing.tar", tmp_path / "p")
    with pytest.raises(DeltaError, match="unknown delta method"):
        make_delta(digits_bundle, digits_bundle, tmp_path / "p", method="xdelta")  # type: ignore[arg-type]
    assert not (tmp_path / "p").exists()


def test_hostile_window_in_header_is_refused(digits_bundle, patch, tmp_path):
    p, info = patch
    data = bytearray(p.read_bytes())
    data[12:16] = (31).to_bytes(4, "big")  # ask the decoder for a 2 GiB window
    bad = tmp_path / "w.delta"
    bad.write_bytes(bytes(data))
    _refused(
        tmp_path,
        lambda out: apply_delta(digits_bundle, bad, out, expected_sha256=info.target_sha256),
        DeltaError,
        "window",
    )
