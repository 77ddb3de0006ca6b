"""Signing keys at rest: passphrase-encrypted private keys, and root keys split across folders (USB sticks)."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from registrytools import Client, load_md, mirror, tree

from edgefleet.errors import KeyStoreError
from edgefleet.registry import KeyStore, Repository, RepositoryServer, init_keys

PASS = "correct horse battery staple"


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _files(store: KeyStore, role: str) -> list:
    return [k for k in store.key_files() if k.role == role]


def test_root_and_targets_keys_are_encrypted_and_load_only_with_the_passphrase(tmp_path):
    store = init_keys(tmp_path / "k", root_keys=3, root_threshold=2, passphrase=PASS)
    ids = {k.keyid for k in store.key_files()}
    assert _mode(tmp_path / "k") == 0o700
    for info in store.key_files():
        data = info.path.read_bytes()
        assert _mode(info.path) == 0o600
        if info.role in ("root", "targets"):
            assert info.encrypted and b"BEGIN ENCRYPTED PRIVATE KEY" in data
            assert b"BEGIN PRIVATE KEY" not in data
            with pytest.raises(
                TypeError
            ):  # cryptography: "Password was not given but private key is encrypted"
                load_pem_private_key(data, password=None)
            with pytest.raises(ValueError):
                load_pem_private_key(data, password=b"wrong")
            assert load_pem_private_key(data, password=PASS.encode()) is not None
        else:  # online keys stay unencrypted: the server signs with them unattended
            assert not info.encrypted and data.startswith(b"-----BEGIN PRIVATE KEY-----")

    locked = KeyStore(tmp_path / "k")  # no passphrase: encrypted keys are listed, not usable
    assert locked.roles == ["root", "targets", "snapshot", "timestamp"]
    assert locked.can_sign("timestamp") and locked.can_sign("snapshot")
    assert not locked.can_sign("targets") and not locked.can_sign("root")
    with pytest.raises(KeyStoreError, match="encrypted and no passphrase") as e:
        locked.signers("targets")
    assert "--passphrase-file" in e.value.hint and "EDGEFLEET_KEYS_PASSPHRASE" in e.value.hint

    unlocked = KeyStore(tmp_path / "k", passphrase=PASS)
    assert {k.keyid for k in unlocked.key_files()} == ids
    assert unlocked.signers("targets")[0].public_key.keyid == store.signers("targets")[0].public_key.keyid
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore(tmp_path / "k", passphrase="not it")


def test_encrypt_online_encrypts_every_key_and_needs_a_passphrase(tmp_path):
    with pytest.raises(KeyStoreError, match="needs a passphrase"):
        init_keys(tmp_path / "k", encrypt_online=True)
    with pytest.raises(KeyStoreError, match="empty"):
        init_keys(tmp_path / "k", passphrase="")
    assert not (tmp_path / "k").exists()
    store = init_keys(tmp_path / "k", root_keys=1, root_threshold=1, passphrase=PASS, encrypt_online=True)
    assert all(k.encrypted for k in store.key_files())
    assert not KeyStore(tmp_path / "k").can_sign("timestamp")


def test_signing_without_or_with_a_wrong_passphrase_is_refused_and_writes_nothing(tmp_path, bundles):
    keys = tmp_path / "k"
    init_keys(keys, passphrase=PASS)
    with pytest.raises(KeyStoreError, match="encrypted and no passphrase"):
        Repository.init(tmp_path / "repo", KeyStore(keys))
    assert tree(tmp_path / "repo", skip=()) == {}
    repo = Repository.init(tmp_path / "repo", KeyStore(keys, passphrase=PASS))
    repo.publish(bundles["v1"])
    before_repo, before_keys = tree(repo.repo_dir, skip=()), tree(keys, skip=())

    no_pass = Repository(repo.repo_dir, KeyStore(keys))
    with pytest.raises(KeyStoreError, match="targets key .* is encrypted"):
        no_pass.publish(bundles["v2"])
    for role in ("root", "targets", "snapshot", "timestamp"):
        with pytest.raises(KeyStoreError, match="encrypted"):
            no_pass.rotate_key(role)
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        Repository(repo.repo_dir, KeyStore(keys, passphrase="guess"))
    assert tree(repo.repo_dir, skip=()) == before_repo
    assert tree(keys, skip=()) == before_keys

    # the online keys are not encrypted: the server refreshes the timestamp without the passphrase
    ts_before = load_md(repo.metadata_dir / "timestamp.json").signed.version
    assert no_pass.refresh_timestamp().timestamp_version == ts_before + 1
    # with the passphrase, publishing and rotating work, and the new targets key is encrypted too
    signing = Repository(repo.repo_dir, KeyStore(keys, passphrase=PASS))
    signing.publish(bundles["v2"])
    res = signing.rotate_key("targets")
    (new,) = _files(KeyStore(keys), "targets")
    assert new.keyid == res.new_keyids[0][:16] and new.locked and new.encrypted


def test_split_root_folders_sign_a_root_rotation_a_device_follows(tmp_path, bundles):
    keys = tmp_path / "keys"
    sticks = [tmp_path / "media" / f"usb{i}" for i in (1, 2, 3)]
    store = init_keys(keys, root_keys=3, root_threshold=2, root_dirs=sticks, passphrase=PASS)
    # no root key beside the online keys; one root key per stick, each stick 0700
    assert not list(keys.glob("root-*.pem"))
    for stick in sticks:
        assert _mode(stick) == 0o700
        (only,) = stick.iterdir()
        assert only.name.startswith("root-") and _mode(only) == 0o600
    assert {k.path.parent for k in _files(store, "root")} == set(sticks)
    repo = Repository.init(tmp_path / "repo", KeyStore(keys, passphrase=PASS))  # finds the recorded sticks
    repo.publish(bundles["v1"])

    # the sticks come back at other mount points, and the third one is lost: the threshold (2) still signs
    moved = [tmp_path / "mnt" / "a", tmp_path / "mnt" / "b"]
    moved[0].parent.mkdir()
    sticks[0].rename(moved[0])
    sticks[1].rename(moved[1])
    sticks[2].rename(tmp_path / "lost")
    online_only = KeyStore(keys, passphrase=PASS)
    assert not online_only.has("root")
    with pytest.raises(KeyStoreError, match="needs 2 root keys") as e:
        Repository(repo.repo_dir, online_only).rotate_key("root")
    assert "--root-dir" in e.value.hint

    served = tmp_path / "served"
    mirror(repo.repo_dir, served)
    with RepositoryServer(served) as server:
        device = Client(tmp_path / "device", server.url, (repo.metadata_dir / "1.root.json").read_bytes())
        device.download("digits/1.0.0/cpu.tar")
        with_sticks = KeyStore(keys, root_dirs=moved, passphrase=PASS)
        res = Repository(repo.repo_dir, with_sticks).rotate_key("root")
        assert res.root_version == 2 and len(res.new_keyids) == 3
        # each new key replaced the old one on its stick; the third is not put beside another root key
        homes = [os.path.dirname(p) for p in res.key_paths]
        assert set(homes[:2]) == {str(moved[0]), str(moved[1])} and homes[2] == str(keys / "offline")
        for stick in moved:
            (only,) = stick.iterdir()
            assert only.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        Repository(repo.repo_dir, KeyStore(keys, passphrase=PASS)).publish(bundles["v2"])
        mirror(repo.repo_dir, served)
        assert device.download("digits/1.1.0/cpu.tar").read_bytes() == bundles["v2"].read_bytes()
        assert load_md(device.metadata_dir / "root.json").signed.version == 2


def test_root_folders_must_be_one_or_one_per_key_and_exist(tmp_path):
    with pytest.raises(KeyStoreError, match="one per key"):
        init_keys(tmp_path / "k", root_keys=3, root_dirs=[tmp_path / "a", tmp_path / "b"])
    with pytest.raises(KeyStoreError, match="twice"):
        init_keys(tmp_path / "k", root_keys=2, root_threshold=1, root_dirs=[tmp_path / "a", tmp_path / "a"])
    assert not (tmp_path / "k").exists() and not (tmp_path / "a").exists()
    init_keys(tmp_path / "k", root_dirs=[tmp_path / "k" / "offline"])
    assert len(list((tmp_path / "k" / "offline").glob("root-*.pem"))) == 3
    with pytest.raises(KeyStoreError, match="already hold"):
        init_keys(tmp_path / "k", root_dirs=[tmp_path / "k" / "offline"])
    with pytest.raises(KeyStoreError, match="does not exist") as e:
        KeyStore(tmp_path / "k", root_dirs=[tmp_path / "unmounted"])
    assert "--root-dir" in e.value.hint


@pytest.mark.parametrize(
    ("encrypt_online", "env", "refreshes"),
    [(False, None, True), (True, None, False), (True, PASS, True), (True, "wrong", False)],
)
def test_server_signs_timestamps_with_encrypted_online_keys_only_given_the_passphrase(
    tmp_path, monkeypatch, encrypt_online, env, refreshes
):
    from edgefleet.server._tufrepo import RepositoryService

    keys = tmp_path / "k"
    init_keys(keys, root_keys=1, root_threshold=1, passphrase=PASS, encrypt_online=encrypt_online)
    Repository.init(tmp_path / "repo", KeyStore(keys, passphrase=PASS))
    if env is None:
        monkeypatch.delenv(KeyStore.PASSPHRASE_ENV, raising=False)
    else:
        monkeypatch.setenv(KeyStore.PASSPHRASE_ENV, env)
    service = RepositoryService(tmp_path / "repo", keys, refresh_margin_s=60)
    assert service.can_refresh() is refreshes  # without it the server serves but does not sign


def test_root_rotation_keeps_each_new_root_key_where_the_old_ones_were(repo, keys):
    before = {k.path.parent for k in _files(keys, "root")}
    res = repo.rotate_key("root")
    assert {os.path.dirname(p) for p in res.key_paths} == {str(d) for d in before} == {str(keys.dir)}
    assert not (keys.dir / "offline").exists()
