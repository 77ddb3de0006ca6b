"""The agreement between the director's assignment and the signed TUF targets metadata.

The repository side is a signed ``TargetFile`` handed straight to ``check_assignment`` (the TUF refresh is
stubbed out; the real repository is exercised by the agent flow and registry attack tests), so every
refusal rule is pinned: the length, a shared sha256 (never only another hash), and every shared hash.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuf.api.metadata import Metadata, Root, TargetFile

from edgefleet.agent import TrustedRepository
from edgefleet.errors import VerificationError
from edgefleet.protocol import Assignment

DATA = b"bundle bytes " * 100
SHA256 = hashlib.sha256(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
PATH = "digits/digits-1.0.0-cpu.tar"


class _Updater:
    def __init__(self, info):
        self.info = info

    def get_targetinfo(self, path):
        return self.info if self.info is not None and path == self.info.path else None


@pytest.fixture
def repo(tmp_path):
    r = TrustedRepository(tmp_path / "meta", "https://repo.example", b"{}", fetcher=None)
    r.refreshes = 0

    def refresh():
        r.refreshes += 1

    r.refresh = refresh
    return r


def _signed(repo, *, length=len(DATA), hashes=None):
    info = TargetFile(length=length, hashes=hashes or {"sha256": SHA256, "sha512": SHA512}, path=PATH)
    repo._updater = _Updater(info)
    return info


def _assignment(*, length=len(DATA), hashes=None, path=PATH):
    return Assignment(
        name="digits",
        version="1.0.0",
        variant="cpu",
        target_path=path,
        length=length,
        hashes={"sha256": SHA256} if hashes is None else hashes,
    )


def test_agreeing_assignment_is_accepted_and_refreshes_first(repo):
    info = _signed(repo)
    assert repo.check_assignment(_assignment()) is info
    assert repo.check_assignment(_assignment(hashes={"sha256": SHA256.upper()})) is info  # hex case
    assert repo.refreshes == 2  # always against the newest signed state


def test_assignment_without_sha256_is_refused_even_if_another_hash_agrees(repo):
    _signed(repo)
    with pytest.raises(VerificationError, match="no sha256") as e:
        repo.check_assignment(_assignment(hashes={"sha512": SHA512}))
    assert e.value.details["reason"] == "hash_missing"


def test_assignment_with_no_hash_at_all_is_refused(repo):
    _signed(repo)
    with pytest.raises(VerificationError) as e:
        repo.check_assignment(_assignment(hashes={}))
    assert e.value.details["reason"] == "hash_missing"


def test_sha256_the_signed_metadata_lacks_is_refused(repo):
    _signed(repo, hashes={"sha512": SHA512})
    with pytest.raises(VerificationError) as e:
        repo.check_assignment(_assignment(hashes={"sha256": SHA256, "sha512": SHA512}))
    assert e.value.details["reason"] == "hash_missing"


def test_differing_sha256_is_refused(repo):
    _signed(repo)
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(VerificationError, match="sha256 .* differs") as e:
        repo.check_assignment(_assignment(hashes={"sha256": wrong}))
    assert e.value.details["reason"] == "hash_mismatch"


def test_every_shared_hash_must_agree_not_only_sha256(repo):
    _signed(repo)
    wrong512 = hashlib.sha512(b"other").hexdigest()
    with pytest.raises(VerificationError, match="sha512 .* differs") as e:
        repo.check_assignment(_assignment(hashes={"sha256": SHA256, "sha512": wrong512}))
    assert e.value.details["reason"] == "hash_mismatch"


def test_hash_only_the_director_knows_is_ignored(repo):
    info = _signed(repo, hashes={"sha256": SHA256})
    assert repo.check_assignment(_assignment(hashes={"sha256": SHA256, "blake2b": "00"})) is info


@given(delta=st.integers(-3, 3).filter(bool))
def test_length_must_match_exactly(tmp_path_factory, delta):
    r = TrustedRepository(tmp_path_factory.mktemp("m"), "https://repo.example", b"{}", fetcher=None)
    r.refresh = lambda: None
    _signed(r)
    with pytest.raises(VerificationError, match="bytes, signed metadata says") as e:
        r.check_assignment(_assignment(length=len(DATA) + delta))
    assert e.value.details["reason"] == "length_mismatch"


def test_unsigned_target_is_refused(repo):
    _signed(repo)
    with pytest.raises(VerificationError, match="not in the signed targets metadata") as e:
        repo.check_assignment(_assignment(path="digits/never-signed.tar"))
    assert e.value.details["reason"] == "not_signed"
    assert repo.find("digits/never-signed.tar") is None
    assert repo.find(PATH) is not None


def test_downloaded_file_is_checked_against_the_signed_length_and_hashes(repo, tmp_path):
    info = _signed(repo)
    good = tmp_path / "good.tar"
    good.write_bytes(DATA)
    repo.verify_file(info, good)
    for bad_bytes in (DATA[:-1], DATA + b"x", b"X" + DATA[1:]):
        bad = tmp_path / "bad.tar"
        bad.write_bytes(bad_bytes)
        with pytest.raises(VerificationError, match="does not match its signed hashes") as e:
            repo.verify_file(info, bad)
        assert e.value.details["reason"] == "hash_mismatch"


@pytest.mark.parametrize("consistent", [True, False])
def test_target_url_is_hash_prefixed_under_consistent_snapshots(repo, consistent):
    info = _signed(repo)
    Metadata(Root(consistent_snapshot=consistent)).to_file(str(repo.metadata_dir / "root.json"))
    want = f"digits/{SHA256}.digits-1.0.0-cpu.tar" if consistent else PATH
    assert repo.url(info) == f"https://repo.example/targets/{want}"


def test_repository_url_gets_one_trailing_slash_and_metadata_caps_are_passed_on(tmp_path):
    r = TrustedRepository(tmp_path, "https://repo.example/", b"{}", fetcher=None, max_metadata_bytes=1234)
    assert r.base == "https://repo.example/"
    assert r._cfg.snapshot_max_length == 1234 and r._cfg.targets_max_length == 1234


def test_metadata_directory_is_created_with_its_parents_and_may_exist(tmp_path):
    deep = tmp_path / "state" / "tuf" / "metadata"
    TrustedRepository(deep, "https://repo.example", b"{}", fetcher=None)
    assert deep.is_dir()
    again = TrustedRepository(deep, "https://repo.example", b"{}", fetcher=None)  # a restart: it exists
    assert again.metadata_dir == deep and again.base == "https://repo.example/"
