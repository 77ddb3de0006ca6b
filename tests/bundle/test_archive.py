"""Archive safety: truncated, bit-flipped, tampered and hostile archives are refused and leave nothing behind."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
from bundletools import read_entries, rebuild, tree, write_tar

from edgefleet.bundle import Bundle, BundleConfig, read_manifest
from edgefleet.bundle._archive import safe_extract
from edgefleet.errors import (
    BundleError,
    IntegrityError,
    ManifestError,
    SchemaVersionError,
    UnsafeArchiveError,
)


def _assert_nothing_left(tmp_path, dest, systmp):
    assert not dest.exists(), "refused archive must not leave the destination"
    leftovers = [p.name for p in dest.parent.iterdir() if ".partial" in p.name]
    assert leftovers == []
    assert list(systmp.iterdir()) == []


def test_layout_manifest_first_and_fixed_metadata(digits_bundle):
    with tarfile.open(digits_bundle) as tar:
        members = tar.getmembers()
    assert members[0].name == "manifest.json"
    assert [m.name for m in members[1:]] == sorted(m.name for m in members[1:])
    assert {(m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, "", "", 0o644)}
    assert len({m.mtime for m in members}) == 1
    assert all(m.pax_headers == {} for m in members)


def test_read_manifest_reads_only_the_manifest(digits_bundle, tmp_path):
    m = read_manifest(digits_bundle)
    assert m.key == "digits/1.0.0/cpu"
    # a bundle whose model bytes were cut off still yields its manifest cheaply ...
    cut = tmp_path / "cut.tar"
    cut.write_bytes(digits_bundle.read_bytes()[:4096])
    assert read_manifest(cut).key == m.key
    # ... but cannot be opened
    with pytest.raises(IntegrityError, match="truncated or corrupted"):
        Bundle.open(cut, tmp_path / "x")


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello, this is not a tar file" * 100)
    with pytest.raises(IntegrityError, match="not a readable bundle archive"):
        read_manifest(junk)
    other = write_tar(tmp_path / "other.tar", [("readme.txt", b"hi")])
    with pytest.raises(ManifestError, match="not an edgefleet bundle"):
        read_manifest(other)
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "missing.tar")


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.9, 0.999])
def test_truncated_archive(digits_bundle, tmp_path, private_tmp, cut):
    data = digits_bundle.read_bytes()
    bad = tmp_path / "t.tar"
    # cut inside the file contents (tar padding at the very end is ignored by design, so stay before it)
    end = data.rstrip(b"\0")
    bad.write_bytes(end[: int(len(end) * cut)])
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError) as ei:
        Bundle.open(bad, dest)
    assert ei.value.hint
    _assert_nothing_left(tmp_path, dest, private_tmp)


def _offset_of(archive, name):
    with tarfile.open(archive) as tar:
        m = tar.getmember(name)
        return m.offset, m.offset_data


@pytest.mark.parametrize(
    ("name", "where"), [("model.onnx", "data"), ("golden.npz", "data"), ("model.onnx", "header")]
)
def test_bit_flipped_archive(digits_bundle, tmp_path, private_tmp, name, where):
    data = bytearray(digits_bundle.read_bytes())
    header, body = _offset_of(digits_bundle, name)
    pos = body + 100 if where == "data" else header + 10  # header: inside the entry name field
    data[pos] ^= 0x01
    bad = tmp_path / "flip.tar"
    bad.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError):
        Bundle.open(bad, dest)
    _assert_nothing_left(tmp_path, dest, private_tmp)


def test_random_bit_flips_never_pass_silently(digits_bundle, tmp_path, rng):
    """Any single bit flip is refused, or lands in padding and changes nothing that is extracted."""
    original = digits_bundle.read_bytes()
    with Bundle.open(digits_bundle, tmp_path / "ref") as good:
        want = tree(good.root)
    for i, pos in enumerate(rng.integers(0, len(original), size=25)):
        data = bytearray(original)
        data[pos] ^= 1 << int(rng.integers(0, 8))
        bad = tmp_path / f"f{i}.tar"
        bad.write_bytes(bytes(data))
        try:
            b = Bundle.open(bad, tmp_path / f"o{i}")
        except BundleError:
            assert not (tmp_path / f"o{i}").exists()
            continue
        assert tree(b.root) == want, f"flip at {pos} changed extracted content without an error"


def test_manifest_hash_mismatch(digits_bundle, tmp_path, private_tmp):
    def edit(m):
        m.files["model.onnx"].sha256 = "0" * 64

    bad = rebuild(digits_bundle, tmp_path / "bad.tar", manifest_edit=edit)
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="model.onnx has sha256 .* the manifest says 0000") as ei:
        Bundle.open(bad, dest)
    assert "tampered" in ei.value.hint
    _assert_nothing_left(tmp_path, dest, private_tmp)


def test_size_mismatch_and_unlisted_or_missing_files(digits_bundle, tmp_path):
    def grow(m):
        m.files["golden.npz"].size += 1

    with pytest.raises(IntegrityError, match="golden.npz is .* bytes, the manifest says"):
        Bundle.open(rebuild(digits_bundle, tmp_path / "a.tar", manifest_edit=grow), tmp_path / "a")
    extra = read_entries(digits_bundle)
    entries = (
        [("manifest.json", extra.pop("manifest.json"))] + sorted(extra.items()) + [("payload.sh", b"rm -rf")]
    )
    with pytest.raises(IntegrityError, match=r"unlisted: \['payload.sh'\]"):
        Bundle.open(write_tar(tmp_path / "b.tar", entries), tmp_path / "b")
    missing = [e for e in entries if e[0] not in ("payload.sh", "reference.json")]
    with pytest.raises(IntegrityError, match=r"missing: \['reference.json'\]"):
        Bundle.open(write_tar(tmp_path / "c.tar", missing), tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_manifest_from_newer_schema(digits_bundle, tmp_path, private_tmp):
    entries = read_entries(digits_bundle)
    obj = json.loads(entries.pop("manifest.json"))
    obj["schema_version"] = 99
    obj["shiny_new_field"] = {"x": 1}
    bad = write_tar(
        tmp_path / "new.tar", [("manifest.json", json.dumps(obj).encode()), *sorted(entries.items())]
    )
    with pytest.raises(SchemaVersionError, match="schema_version 99 is newer") as ei:
        read_manifest(bad)
    assert "upgrade edgefleet" in ei.value.hint
    dest = tmp_path / "out"
    with pytest.raises(SchemaVersionError):
        Bundle.open(bad, dest)
    _assert_nothing_left(tmp_path, dest, private_tmp)


def test_oversized_manifest_refused_before_parsing(digits_bundle, tmp_path):
    entries = read_entries(digits_bundle)
    entries.pop("manifest.json")
    huge = b'{"name": "' + b"x" * (2 << 20) + b'"}'
    bad = write_tar(tmp_path / "big.tar", [("manifest.json", huge), *sorted(entries.items())])
    with pytest.raises(ManifestError, match="more than the 1048576 allowed"):
        read_manifest(bad)
    # the cap is configurable, and checked against the tar header before any byte is read
    with pytest.raises(ManifestError, match=r"manifest.json is \d+ bytes, more than the 100 allowed"):
        read_manifest(digits_bundle, config=BundleConfig(max_manifest_bytes=100))


def _hostile(digits_bundle, tmp_path, extra):
    entries = read_entries(digits_bundle)
    manifest = entries.pop("manifest.json")
    return write_tar(tmp_path / "evil.tar", [("manifest.json", manifest), *sorted(entries.items()), *extra])


def _link(name, target, kind):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return ti


HOSTILE = {
    "dotdot": ([("../evil.txt", b"owned")], "'..' or '.' component"),
    "nested-dotdot": ([("docs/../../evil.txt", b"owned")], "'..' or '.' component"),
    "absolute": ([("/tmp/evil-edgefleet.txt", b"owned")], "absolute path"),
    "symlink": ([_link("model2.onnx", "/etc/passwd", tarfile.SYMTYPE)], "symlink to '/etc/passwd'"),
    "hardlink": ([_link("model2.onnx", "/etc/passwd", tarfile.LNKTYPE)], "hardlink"),
    "device": ([_link("dev", "", tarfile.CHRTYPE)], "not a regular file"),
    "directory": ([_link("sub", "", tarfile.DIRTYPE)], "not a regular file"),
    "duplicate": ([("model.onnx", b"second copy")], "duplicate entry 'model.onnx'"),
    "odd-chars": ([("we ird\n.txt", b"x")], "characters outside"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_entries_refused(digits_bundle, tmp_path, private_tmp, case):
    extra, pattern = HOSTILE[case]
    evil = _hostile(digits_bundle, tmp_path, extra)
    dest = tmp_path / "deep" / "out"
    before = tree(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=pattern) as ei:
        Bundle.open(evil, dest)
    assert ei.value.hint
    _assert_nothing_left(tmp_path, dest, private_tmp)
    assert tree(tmp_path) == before
    assert not (tmp_path / "deep" / "evil.txt").exists()


def test_count_and_size_caps(digits_bundle, tmp_path):
    with pytest.raises(UnsafeArchiveError, match="more than 2 entries"):
        safe_extract(digits_bundle, tmp_path / "a", config=BundleConfig(max_entries=2))
    with pytest.raises(UnsafeArchiveError, match=r"entry '[a-z.]+' is \d+ bytes, more than 5000"):
        safe_extract(digits_bundle, tmp_path / "b", config=BundleConfig(max_entry_bytes=5000))
    with pytest.raises(UnsafeArchiveError, match="add up to more than 30000"):
        safe_extract(digits_bundle, tmp_path / "c", config=BundleConfig(max_total_bytes=30000))
    assert not any((tmp_path / d).exists() for d in "abc")


def test_destination_must_be_new_or_empty(digits_bundle, tmp_path):
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not an empty directory"):
        Bundle.open(digits_bundle, dest)
    assert tree(dest) == {"keep.txt": b"mine"}
    empty = tmp_path / "empty"
    empty.mkdir()
    b = Bundle.open(digits_bundle, empty)
    assert (empty / "model.onnx").is_file() and b.root == empty


def test_temporary_extraction_is_removed_on_close(digits_bundle, private_tmp):
    with Bundle.open(digits_bundle) as b:
        assert b.root.parent == private_tmp and b.model_path.is_file()
    assert list(private_tmp.iterdir()) == []


def test_tampering_after_extraction_is_caught(digits_bundle, tmp_path):
    root = tmp_path / "x"
    Bundle.open(digits_bundle, root)
    (root / "reference.json").write_text("{}")
    with pytest.raises(IntegrityError, match="reference.json"):
        Bundle.from_dir(root)
    shutil.copy(root / "golden.npz", root / "extra.bin")
    (root / "reference.json").unlink()
    with pytest.raises(IntegrityError, match="reference.json listed in the manifest is missing"):
        Bundle.from_dir(root)
