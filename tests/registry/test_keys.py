"""Key directory: permissions, threshold, partial key stores and clear errors for bad key files."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from registrytools import tree

from edgefleet.errors import KeyStoreError
from edgefleet.registry import KeyStore, Repository, init_keys


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_init_keys_permissions_roles_and_threshold(tmp_path):
    store = init_keys(tmp_path / "k", root_keys=3, root_threshold=2)
    assert _mode(tmp_path / "k") == 0o700
    files = sorted(p.name for p in (tmp_path / "k").glob("*.pem"))
    assert len(files) == 6
    for p in (tmp_path / "k").iterdir():
        assert _mode(p) == 0o600, p
    assert [k.role for k in store.key_files()].count("root") == 3
    assert store.roles == ["root", "targets", "snapshot", "timestamp"]
    assert json.loads((tmp_path / "k" / "keystore.json").read_text())["root_threshold"] == 2
    # every key is distinct, and reloading from disk gives the same key ids
    ids = [k.keyid for k in store.key_files()]
    assert len(set(ids)) == 6
    again = KeyStore(tmp_path / "k")
    assert [k.keyid for k in again.key_files()] == ids
    assert again.root_threshold == 2


def test_repository_root_uses_threshold(tmp_path):
    store = init_keys(tmp_path / "k", root_keys=5, root_threshold=3)
    repo = Repository.init(tmp_path / "repo", store)
    root = repo.root()
    assert root.roles["root"].threshold == 3
    assert len(root.roles["root"].keyids) == 5
    assert root.consistent_snapshot is True
    for role in ("targets", "snapshot", "timestamp"):
        assert root.roles[role].keyids == [store.signers(role)[0].public_key.keyid]


@pytest.mark.parametrize(("n", "t"), [(0, 1), (3, 0), (3, 4)])
def test_bad_threshold_is_refused_and_nothing_written(tmp_path, n, t):
    with pytest.raises(KeyStoreError, match="root"):
        init_keys(tmp_path / "k", root_keys=n, root_threshold=t)
    assert not (tmp_path / "k").exists()


def test_existing_keys_are_not_overwritten_without_flag(tmp_path):
    init_keys(tmp_path / "k")
    before = tree(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="already holds 6 keys") as e:
        init_keys(tmp_path / "k")
    assert "--overwrite" in e.value.hint
    assert tree(tmp_path / "k") == before
    init_keys(tmp_path / "k", root_keys=1, root_threshold=1, overwrite=True)
    after = KeyStore(tmp_path / "k")
    assert len(after.key_files()) == 4
    assert not set(before) & {p.name for p in (tmp_path / "k").glob("*.pem")}


def test_publisher_keystore_with_only_targets_key_names_missing_role(tmp_path):
    full = init_keys(tmp_path / "k")
    pub = tmp_path / "publisher"
    pub.mkdir(mode=0o700)
    src = full.key_files()[3].path  # the targets key
    assert src.name.startswith("targets-")
    shutil.copy2(src, pub / src.name)
    store = KeyStore(pub)
    assert store.roles == ["targets"]
    assert store.signers("targets")[0].public_key.keyid == full.signers("targets")[0].public_key.keyid
    with pytest.raises(KeyStoreError) as e:
        store.signers("timestamp")
    assert "no timestamp key" in e.value.message and str(pub) in e.value.message
    assert e.value.hint


def test_group_readable_key_is_refused(tmp_path):
    init_keys(tmp_path / "k")
    victim = next((tmp_path / "k").glob("targets-*.pem"))
    os.chmod(victim, 0o644)
    with pytest.raises(KeyStoreError, match="can be read by other users") as e:
        KeyStore(tmp_path / "k")
    assert "chmod 600" in e.value.hint


def test_corrupted_key_file_is_named(tmp_path):
    init_keys(tmp_path / "k")
    victim = next((tmp_path / "k").glob("snapshot-*.pem"))
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(KeyStoreError, match="cannot load private key") as e:
        KeyStore(tmp_path / "k")
    assert victim.name in e.value.message


def test_renamed_key_file_is_refused(tmp_path):
    init_keys(tmp_path / "k")
    a = next((tmp_path / "k").glob("snapshot-*.pem"))
    b = next((tmp_path / "k").glob("timestamp-*.pem"))
    # swap contents: each file now holds the other role's key
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(KeyStoreError, match="not the key its name says"):
        KeyStore(tmp_path / "k")


def test_missing_directory(tmp_path):
    with pytest.raises(KeyStoreError, match="does not exist") as e:
        KeyStore(tmp_path / "nope")
    assert "keys init" in e.value.hint


def test_init_repository_needs_every_role(tmp_path):
    full = init_keys(tmp_path / "k")
    for info in full.key_files():
        if info.role == "snapshot":
            info.path.unlink()
    with pytest.raises(KeyStoreError, match="no snapshot key"):
        Repository.init(tmp_path / "repo", KeyStore(tmp_path / "k"))
    assert tree(tmp_path / "repo") == {}
