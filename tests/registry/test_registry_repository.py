"""Repository: layout, publish/list/show, deltas, immutability, partial key stores, crash safety, locking."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta

import pytest
from registrytools import attacker_key, load_md, sign_and_write, tree

from edgefleet._fs import file_sha256
from edgefleet.bundle import apply_delta, read_manifest
from edgefleet.errors import (
    BundleError,
    KeyStoreError,
    NotFoundError,
    RegistryError,
    VersionExistsError,
)
from edgefleet.registry import KeyStore, RegistryConfig, Repository
from edgefleet.registry import _repository as repo_mod
from edgefleet.registry._published import delta_target_path_for, semver_key, target_path_for


class Crash(BaseException):
    """Stands in for the process dying (BaseException: no handler in the code under test catches it)."""


def test_init_layout(repo):
    names = sorted(p.name for p in repo.metadata_dir.iterdir())
    assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "root.json", "timestamp.json"]
    assert repo.root_json_path.read_bytes() == (repo.metadata_dir / "1.root.json").read_bytes()
    ts = repo.timestamp()
    # timestamp pins the snapshot by version, length and hash; snapshot pins targets the same way
    assert ts.snapshot_meta.version == 1 and ts.snapshot_meta.hashes and ts.snapshot_meta.length
    assert repo.snapshot().meta["targets.json"].hashes
    now = datetime.now(UTC)
    assert timedelta(hours=23) < ts.expires - now <= timedelta(days=1)
    assert repo.root().expires - now > timedelta(days=360)
    assert repo.targets_dir.is_dir()


def test_init_refuses_existing_repository(repo, keys):
    before = tree(repo.repo_dir)
    with pytest.raises(RegistryError, match="already holds a repository"):
        Repository.init(repo.repo_dir, keys)
    assert tree(repo.repo_dir) == before


def test_interrupted_init_leaves_no_half_repository(tmp_path, keys, monkeypatch):
    def die(*a, **k):
        raise Crash

    monkeypatch.setattr(Repository, "edit_snapshot", die)
    with pytest.raises(Crash):
        Repository.init(tmp_path / "r", keys)
    monkeypatch.undo()
    assert not (tmp_path / "r" / "metadata").exists()
    with pytest.raises(RegistryError, match="no edgefleet repository"):
        Repository(tmp_path / "r")
    Repository.init(tmp_path / "r", keys)  # a retry starts clean
    assert Repository(tmp_path / "r").status()["root"]["version"] == 1


def test_open_non_repository(tmp_path):
    with pytest.raises(RegistryError, match="no edgefleet repository") as e:
        Repository(tmp_path)
    assert "registry init" in e.value.hint


def test_publish_list_show(repo, bundles):
    r1 = repo.publish(bundles["v1"])
    assert (r1.target_path, r1.name, r1.version, r1.variant) == (
        "digits/1.0.0/cpu.tar",
        "digits",
        "1.0.0",
        "cpu",
    )
    assert (r1.length, r1.sha256) == file_sha256(bundles["v1"])
    assert r1.delta_target_path is None and not r1.unchanged and not r1.pending
    # consistent snapshot layout: hash-prefixed file under targets/
    stored = repo.targets_dir / "digits" / "1.0.0" / f"{r1.sha256}.cpu.tar"
    assert stored.read_bytes() == bundles["v1"].read_bytes()
    assert repo.target_file("digits/1.0.0/cpu.tar") == stored

    r2 = repo.publish(bundles["v2"])
    assert r2.delta_target_path == "digits/1.1.0/cpu.from-1.0.0.delta"
    assert 0 < r2.delta_length < r2.length

    listed = repo.list_versions()
    assert [p.version for p in listed] == ["1.0.0", "1.1.0"]
    assert repo.list_versions("other") == []
    shown = repo.show("digits", "1.1.0", "cpu")
    assert shown.manifest == read_manifest(bundles["v2"])
    assert shown.sha256 == r2.sha256 and shown.length == r2.length
    assert [d.base_version for d in shown.deltas] == ["1.0.0"]
    assert shown.to_dict()["manifest"]["version"] == "1.1.0"

    # custom metadata lets a device find the delta from its active version
    tf = repo.targets().targets["digits/1.1.0/cpu.from-1.0.0.delta"]
    ef = tf.custom["edgefleet"]
    assert ef["kind"] == "delta" and ef["parent_version"] == "1.0.0"
    assert ef["base_target"] == "digits/1.0.0/cpu.tar" and ef["base_sha256"] == r1.sha256
    assert ef["result_sha256"] == r2.sha256 and ef["result_length"] == r2.length
    assert repo.targets().targets["digits/1.1.0/cpu.tar"].custom["edgefleet"]["kind"] == "bundle"


def test_delta_target_rebuilds_the_new_bundle(repo, bundles, tmp_path):
    repo.publish(bundles["v1"])
    r2 = repo.publish(bundles["v2"])
    out = apply_delta(
        repo.target_file("digits/1.0.0/cpu.tar"),
        repo.target_file(r2.delta_target_path),
        tmp_path / "rebuilt.tar",
        expected_sha256=r2.sha256,
        expected_length=r2.length,
    )
    assert out.read_bytes() == bundles["v2"].read_bytes()


def test_delta_base_is_the_closest_lower_version(repo, bundles):
    repo.publish(bundles["v1"])  # 1.0.0
    repo.publish(bundles["v3"])  # 2.0.0, delta from 1.0.0
    r = repo.publish(bundles["v2"])  # 1.1.0 published later: its delta base is 1.0.0, not 2.0.0
    assert r.delta_target_path == delta_target_path_for("digits", "1.1.0", "cpu", "1.0.0")
    # variants are separate lines: the gpu bundle gets no delta from the cpu ones
    assert repo.publish(bundles["v1_gpu"]).delta_target_path is None


def test_no_delta_when_asked_or_too_large(repo, bundles, tmp_path, keys):
    repo.publish(bundles["v1"])
    assert repo.publish(bundles["v2"], delta=False).delta_target_path is None
    strict = Repository.init(tmp_path / "strict", keys, RegistryConfig(delta_max_ratio=0.01))
    strict.publish(bundles["v1"])
    assert strict.publish(bundles["v2"]).delta_target_path is None


def test_republish_same_bytes_is_a_noop(repo, bundles):
    first = repo.publish(bundles["v1"])
    before = tree(repo.repo_dir)
    again = repo.publish(bundles["v1"])
    assert again.unchanged and again.sha256 == first.sha256
    assert tree(repo.repo_dir) == before


def test_republish_different_bytes_is_refused_and_nothing_changes(repo, bundles):
    repo.publish(bundles["v1"])
    before = tree(repo.repo_dir)
    with pytest.raises(VersionExistsError, match="already published with different content") as e:
        repo.publish(bundles["v1_other"])
    assert "1.0.1" in e.value.hint
    assert e.value.status_code == 409
    assert tree(repo.repo_dir) == before
    assert not any(repo._tmp_dir.iterdir())


def test_bad_archive_is_refused_and_nothing_changes(repo, bundles, tmp_path):
    repo.publish(bundles["v1"])
    before = tree(repo.repo_dir)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(bundles["v2"].read_bytes()[:300])
    with pytest.raises(BundleError):
        repo.publish(junk)
    with pytest.raises(BundleError, match="does not exist"):
        repo.publish(tmp_path / "missing.tar")
    assert tree(repo.repo_dir) == before


@pytest.mark.parametrize("how", ["truncated", "bitflip"])
def test_damaged_bundle_with_readable_manifest_is_not_signed(repo, bundles, tmp_path, how):
    """The manifest (first entry) still reads fine; the hash check before signing catches the damage."""
    data = bytearray(bundles["v2"].read_bytes())
    read_manifest(bundles["v2"])
    if how == "truncated":
        data = data[: len(data) * 2 // 3]
    else:
        data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    assert read_manifest(bad).version == "1.1.0"
    before = tree(repo.repo_dir)
    with pytest.raises(BundleError):
        repo.publish(bad)
    assert tree(repo.repo_dir) == before
    assert not any(repo._tmp_dir.iterdir())


def test_golden_check_on_publish(tmp_path, keys, bundles):
    strict = Repository.init(tmp_path / "r", keys, RegistryConfig(verify_on_publish="golden"))
    assert strict.publish(bundles["v1"]).length == bundles["v1"].stat().st_size


def test_oversized_bundle_is_refused(tmp_path, keys, bundles):
    small = Repository.init(tmp_path / "r", keys, RegistryConfig(max_bundle_bytes=1000))
    before = tree(small.repo_dir)
    with pytest.raises(RegistryError, match="above the 1000 allowed"):
        small.publish(bundles["v1"])
    assert tree(small.repo_dir) == before


def test_config_is_kept_with_the_repository(tmp_path, keys):
    Repository.init(tmp_path / "r", keys, RegistryConfig(timestamp_expiry=timedelta(hours=2)))
    again = Repository(tmp_path / "r", keys)
    assert again.config.timestamp_expiry == timedelta(hours=2)
    again.refresh_timestamp()
    left = again.timestamp().expires - datetime.now(UTC)
    assert timedelta(hours=1) < left <= timedelta(hours=2)


def test_refresh_timestamp(repo, bundles):
    repo.publish(bundles["v1"])
    ts, snap = repo.timestamp(), repo.snapshot()
    res = repo.refresh_timestamp(expires_in=timedelta(minutes=5))
    assert res.timestamp_version == ts.version + 1
    assert res.snapshot_version == snap.version  # nothing changed: snapshot is not re-signed
    assert timedelta(minutes=4) < res.expires - datetime.now(UTC) <= timedelta(minutes=5)


def test_refresh_resigns_a_snapshot_that_expires_soon(tmp_path, keys):
    r = Repository.init(tmp_path / "r", keys, RegistryConfig(snapshot_expiry=timedelta(hours=1)))
    # more than half of the snapshot's life left: keep it
    assert not r.refresh_timestamp().snapshot_resigned
    r.config = RegistryConfig(snapshot_expiry=timedelta(days=7))  # now 1h left is less than half of 7 days
    res = r.refresh_timestamp()
    assert res.snapshot_resigned and res.snapshot_version == 2


def test_read_only_use_needs_no_keys_and_writes_name_the_key(repo, bundles):
    repo.publish(bundles["v1"])
    ro = Repository(repo.repo_dir)
    assert [p.version for p in ro.list_versions()] == ["1.0.0"]
    with pytest.raises(KeyStoreError, match="without keys"):
        ro.publish(bundles["v2"])
    with pytest.raises(KeyStoreError, match="without keys"):
        ro.refresh_timestamp()


def _split_keys(keys, tmp_path, roles, name):
    d = tmp_path / name
    d.mkdir(mode=0o700)
    for info in keys.key_files():
        if info.role in roles:
            shutil.copy2(info.path, d / info.path.name)
    return KeyStore(d)


def test_publisher_with_only_targets_key_then_server_refresh(repo, bundles, tmp_path):
    repo.publish(bundles["v1"])
    publisher = Repository(repo.repo_dir, _split_keys(repo.keys, tmp_path, {"targets"}, "pub"))
    ts_before = (repo.metadata_dir / "timestamp.json").read_bytes()
    res = publisher.publish(bundles["v2"])
    assert res.pending and res.delta_target_path
    # signed targets are on disk, but devices do not see them until the server signs snapshot+timestamp
    assert (repo.metadata_dir / "timestamp.json").read_bytes() == ts_before
    assert publisher.status()["pending"] is True
    with pytest.raises(KeyStoreError, match="no timestamp key"):
        publisher.refresh_timestamp()
    server = Repository(repo.repo_dir, _split_keys(repo.keys, tmp_path, {"snapshot", "timestamp"}, "srv"))
    out = server.refresh_timestamp()
    assert out.snapshot_resigned and out.targets_version == res.targets_version
    assert server.status()["pending"] is False
    assert server.snapshot().meta["targets.json"].version == res.targets_version


def test_publish_without_targets_key_names_it(repo, bundles, tmp_path):
    server = Repository(repo.repo_dir, _split_keys(repo.keys, tmp_path, {"snapshot", "timestamp"}, "srv"))
    before = tree(repo.repo_dir)
    with pytest.raises(KeyStoreError, match="no targets key") as e:
        server.publish(bundles["v1"])
    assert "targets-" in e.value.hint
    assert tree(repo.repo_dir) == before


def test_publish_with_an_untrusted_targets_key(repo, bundles, tmp_path):
    from edgefleet.registry import init_keys

    stranger = Repository(repo.repo_dir, init_keys(tmp_path / "stranger"))
    before = tree(repo.repo_dir)
    with pytest.raises(KeyStoreError, match="not one this repository trusts"):
        stranger.publish(bundles["v1"])
    assert tree(repo.repo_dir) == before


def test_dropped_in_targets_metadata_is_not_signed_over(repo, bundles):
    """Someone with write access drops N+1.targets.json signed by their own key: we refuse to build on it."""
    repo.publish(bundles["v1"])
    cur = repo.targets().version
    md = load_md(repo.metadata_dir / f"{cur}.targets.json")
    sign_and_write(md, [attacker_key()], repo.metadata_dir / f"{cur + 1}.targets.json")
    with pytest.raises(RegistryError, match="not signed by the key root trusts"):
        repo.publish(bundles["v2"])
    with pytest.raises(RegistryError, match="not signed by the key root trusts"):
        repo.refresh_timestamp()


def test_dropped_in_root_is_refused(repo, bundles):
    md = load_md(repo.metadata_dir / "1.root.json")
    md.signed.add_key(attacker_key().public_key, "targets")
    sign_and_write(md, [repo.keys.signers("root")[0]], repo.metadata_dir / "2.root.json")  # 1 of 2 needed
    with pytest.raises(RegistryError, match="2.root.json is not signed"):
        repo.publish(bundles["v1"])


def test_corrupted_metadata_file_is_named(repo):
    (repo.metadata_dir / "1.targets.json").write_bytes(b"{not json")
    with pytest.raises(RegistryError, match="1.targets.json") as e:
        repo.list_versions()
    assert "backup" in e.value.hint


def test_show_unknown_and_bad_names(repo):
    with pytest.raises(NotFoundError, match="not published"):
        repo.show("digits", "9.9.9", "cpu")
    with pytest.raises(RegistryError, match="not semver"):
        repo.show("digits", "../../etc", "cpu")
    with pytest.raises(RegistryError, match="variant"):
        target_path_for("digits", "1.0.0", "../x")


def test_semver_order():
    vs = ["1.10.0", "1.2.0", "1.0.0-rc.1", "1.0.0", "0.9.9", "1.0.0-rc.10", "1.0.0-alpha"]
    assert sorted(vs, key=semver_key) == [
        "0.9.9",
        "1.0.0-alpha",
        "1.0.0-rc.1",
        "1.0.0-rc.10",
        "1.0.0",
        "1.2.0",
        "1.10.0",
    ]


# --- crash safety ----------------------------------------------------------------------------


def test_crash_before_targets_metadata_leaves_repo_as_it_was(repo, bundles, monkeypatch):
    repo.publish(bundles["v1"])
    meta_before = tree(repo.metadata_dir)
    listed_before = repo.list_versions()

    def die(*a, **k):
        raise Crash

    monkeypatch.setattr(Repository, "edit_targets", die)
    with pytest.raises(Crash):
        repo.publish(bundles["v2"])
    monkeypatch.undo()
    assert tree(repo.metadata_dir) == meta_before
    assert repo.list_versions() == listed_before
    # the retry publishes normally (stray content-addressed files are harmless and reused)
    again = Repository(repo.repo_dir, repo.keys).publish(bundles["v2"])
    assert not again.unchanged and again.delta_target_path


def test_crash_after_targets_metadata_is_finished_by_next_refresh(repo, bundles, monkeypatch):
    repo.publish(bundles["v1"])
    ts_before = (repo.metadata_dir / "timestamp.json").read_bytes()

    def die(*a, **k):
        raise Crash

    monkeypatch.setattr(Repository, "do_snapshot", die)
    with pytest.raises(Crash):
        repo.publish(bundles["v2"])
    monkeypatch.undo()
    # clients still see the old, consistent state
    assert (repo.metadata_dir / "timestamp.json").read_bytes() == ts_before
    fresh = Repository(repo.repo_dir, repo.keys)
    assert fresh.status()["pending"] is True
    # the publish itself is durable: republishing says so, and the next refresh makes it visible
    assert fresh.publish(bundles["v2"]).unchanged
    fresh.refresh_timestamp()
    assert fresh.status()["pending"] is False
    assert [p.version for p in fresh.list_versions()] == ["1.0.0", "1.1.0"]


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_publishes_lose_nothing(repo, bundles):
    repo.publish(bundles["v1"])
    errors: list[BaseException] = []

    def pub(which: str) -> None:
        try:
            Repository(repo.repo_dir, repo.keys).publish(bundles[which])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=pub, args=(w,)) for w in ("v2", "v3", "v1_gpu")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {p.key for p in repo.list_versions()} == {
        "digits/1.0.0/cpu",
        "digits/1.1.0/cpu",
        "digits/2.0.0/cpu",
        "digits/1.0.0/gpu",
    }
    assert repo.targets().version == 5  # init + 4 publishes, each its own version
    repo._verify_state()


def test_lock_timeout_is_a_clear_error(tmp_path, keys, bundles):
    from edgefleet.registry._fs import exclusive_lock

    r = Repository.init(tmp_path / "r", keys, RegistryConfig(lock_timeout=0.2))
    before = tree(r.repo_dir)
    with (
        exclusive_lock(r.repo_dir / ".edgefleet" / "lock", timeout=1),
        pytest.raises(RegistryError, match="locked by another writer") as e,
    ):
        r.publish(bundles["v1"])
    assert "LOCK_TIMEOUT" in e.value.hint
    assert tree(r.repo_dir) == before


def test_public_surface():
    import edgefleet.registry as reg

    for name in ["init_keys", "KeyStore", "Repository", "RegistryConfig", "PublishResult", "PublishedBundle"]:
        assert name in reg.__all__
    assert repo_mod.target_path_for("a", "1.0.0", "cpu") == "a/1.0.0/cpu.tar"
    assert delta_target_path_for("a", "1.1.0", "cpu", "1.0.0") == "a/1.1.0/cpu.from-1.0.0.delta"
