"""Key rotation through a new root: devices follow it, and the rotated-out key is no longer trusted."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from registrytools import load_md, sign_and_write, tree
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import MetaFile, TargetFile

from edgefleet.errors import KeyStoreError
from edgefleet.registry import KeyStore, Repository


def _stolen(keys: KeyStore, keyid: str) -> CryptoSigner:
    """Load the private key ``keyid`` from its file, as an attacker who copied it would."""
    info = next(k for k in keys.key_files() if k.keyid == keyid)
    priv = load_pem_private_key(info.path.read_bytes(), None)
    return CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key()))


def _old_signer(keys: KeyStore, role: str) -> CryptoSigner:
    """The role's current private key, as an attacker who copied it would hold it."""
    return _stolen(keys, next(k.keyid for k in keys.key_files() if k.role == role))


def _forge_chain(world, *, targets_signer, snapshot_signer, timestamp_signer) -> None:
    """Forge targets (+ an extra target) -> snapshot -> timestamp on the mirror with the given keys."""
    cur_t = world.repo.targets().version
    targets = load_md(world.served / "metadata" / f"{cur_t}.targets.json")
    targets.signed.targets["digits/6.6.6/cpu.tar"] = TargetFile.from_data(
        "digits/6.6.6/cpu.tar", b"x", ["sha256"]
    )
    t_name = f"{cur_t + 1}.targets.json"
    t_data = sign_and_write(targets, [targets_signer], world.served / "metadata" / t_name)
    cur_s = world.repo.snapshot().version
    snap = load_md(world.served / "metadata" / f"{cur_s}.snapshot.json")
    snap.signed.meta["targets.json"] = MetaFile.from_data(cur_t + 1, t_data, ["sha256"])
    s_data = sign_and_write(snap, [snapshot_signer], world.served / "metadata" / f"{cur_s + 1}.snapshot.json")
    ts = load_md(world.served / "metadata" / "timestamp.json")
    ts.signed.snapshot_meta = MetaFile.from_data(cur_s + 1, s_data, ["sha256"])
    sign_and_write(ts, [timestamp_signer], world.served / "metadata" / "timestamp.json")


def test_targets_key_rotation(world, bundles):
    old = _old_signer(world.keys, "targets")
    res = world.repo.rotate_key("targets")
    assert res.old_keyids == (old.public_key.keyid,) and res.root_version == 2
    # the key store now holds the new key only, 0600, and root v2 trusts exactly that key
    files = [k for k in world.keys.key_files() if k.role == "targets"]
    assert [k.keyid for k in files] == list(res.new_keyids) and files[0].mode == 0o600
    assert KeyStore(world.keys.dir).signers("targets")[0].public_key.keyid == res.new_keyids[0]
    assert world.repo.root().roles["targets"].keyids == list(res.new_keyids)
    assert (world.repo.metadata_dir / "2.root.json").read_bytes() == world.repo.root_json_path.read_bytes()

    world.repo.publish(bundles["v3"])
    world.sync()
    # the device that pinned root v1 follows the rotation and verifies the new release
    got = world.client.download("digits/2.0.0/cpu.tar")
    assert got.read_bytes() == bundles["v3"].read_bytes()
    assert (world.client.metadata_dir / "root_history" / "2.root.json").exists()
    before = world.client.state()

    # a targets file signed by the rotated-out key (stolen online keys too) is refused
    _forge_chain(
        world,
        targets_signer=old,
        snapshot_signer=world.signer("snapshot"),
        timestamp_signer=world.signer("timestamp"),
    )
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="targets"):
        world.client.refresh()
    assert world.client.state()["metadata/targets.json"] == before["metadata/targets.json"]
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="targets"):
        world.new_client("fresh").refresh()


def test_timestamp_key_rotation(world, bundles):
    old = _old_signer(world.keys, "timestamp")
    res = world.repo.rotate_key("timestamp")
    assert world.repo.root().roles["timestamp"].keyids == list(res.new_keyids)
    world.repo.refresh_timestamp()
    world.repo.publish(bundles["v3"])
    world.sync()
    assert world.client.download("digits/2.0.0/cpu.tar").read_bytes() == bundles["v3"].read_bytes()
    before = world.client.state()

    ts = load_md(world.served / "metadata" / "timestamp.json")
    sign_and_write(ts, [old], world.served / "metadata" / "timestamp.json")
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="timestamp"):
        world.client.refresh()
    assert world.client.state() == before


def test_snapshot_key_rotation(world, bundles):
    res = world.repo.rotate_key("snapshot")
    world.repo.publish(bundles["v3"])
    world.sync()
    assert world.client.download("digits/2.0.0/cpu.tar").read_bytes() == bundles["v3"].read_bytes()
    assert world.repo.root().roles["snapshot"].keyids == list(res.new_keyids)


def test_rotation_overlap_old_root_still_verifies(world, monkeypatch):
    """Crash after re-signing but before the new root: devices on the old root keep verifying."""

    class Crash(BaseException):
        pass

    def die(self):
        raise Crash

    monkeypatch.setattr(Repository, "edit_root", die)
    with pytest.raises(Crash):
        world.repo.rotate_key("timestamp")
    monkeypatch.undo()
    assert world.repo.root().version == 1
    assert len(world.repo.open("timestamp").signatures) == 2  # old and new key
    world.sync()
    world.client.refresh()  # timestamp signed by old + new key: valid under root v1
    # the half-done rotation left an extra, untrusted key; the repository keeps working, and a retry finishes
    world.repo.refresh_timestamp()
    res = Repository(world.repo.repo_dir, KeyStore(world.keys.dir)).rotate_key("timestamp")
    world.sync()
    world.client.refresh()
    assert world.repo.root().roles["timestamp"].keyids == list(res.new_keyids)


def test_rotation_without_the_old_key(world, bundles, tmp_path):
    """The old targets key is lost: the rotation still works (root first), devices follow."""
    for info in world.keys.key_files():
        if info.role == "targets":
            info.path.unlink()
    repo = Repository(world.repo.repo_dir, KeyStore(world.keys.dir))
    repo.rotate_key("targets")
    repo.publish(bundles["v3"])
    world.sync()
    assert world.client.download("digits/2.0.0/cpu.tar").read_bytes() == bundles["v3"].read_bytes()


@pytest.mark.parametrize("role", ["targets", "root"])
def test_rotation_needs_root_threshold(world, tmp_path, role):
    import shutil

    d = tmp_path / "one-root"
    d.mkdir(mode=0o700)
    roots = [k for k in world.keys.key_files() if k.role == "root"]
    for k in [roots[0], *(k for k in world.keys.key_files() if k.role != "root")]:
        shutil.copy2(k.path, d / k.path.name)
    before_repo, before_keys = tree(world.repo.repo_dir), tree(d)
    with pytest.raises(KeyStoreError, match=f"rotating the {role} keys? needs 2 root keys") as e:
        Repository(world.repo.repo_dir, KeyStore(d)).rotate_key(role)
    assert "threshold" in e.value.hint
    assert tree(world.repo.repo_dir) == before_repo and tree(d) == before_keys


def _forge_root(world, signers) -> None:
    """Forge the next root version on the mirror: it trusts an attacker's targets key, signed by ``signers``."""
    root = load_md(world.repo.root_json_path)
    evil = CryptoSigner.generate_ed25519()
    for kid in list(root.signed.roles["targets"].keyids):
        root.signed.revoke_key(kid, "targets")
    root.signed.add_key(evil.public_key, "targets")
    sign_and_write(root, signers, world.served / "metadata" / f"{root.signed.version + 1}.root.json")


def test_root_key_rotation(world, bundles):
    old_root = load_md(world.repo.root_json_path).signed.roles["root"]
    held_ids = {k.keyid for k in world.keys.key_files()}
    stolen = [_stolen(world.keys, kid) for kid in old_root.keyids if kid in held_ids]
    assert len(stolen) >= old_root.threshold
    res = world.repo.rotate_key("root")
    assert res.root_version == 2 and set(res.old_keyids) == set(old_root.keyids)
    new_root = world.repo.root().roles["root"]
    # every root key replaced, same count and threshold; the key store holds the new ones only, 0600
    assert set(new_root.keyids) == set(res.new_keyids) and not set(new_root.keyids) & set(old_root.keyids)
    assert new_root.threshold == old_root.threshold and len(new_root.keyids) == len(old_root.keyids)
    held = [k for k in world.keys.key_files() if k.role == "root"]
    assert {k.keyid for k in held} == set(res.new_keyids) and {k.mode for k in held} == {0o600}
    assert {k.keyid for k in KeyStore(world.keys.dir).key_files() if k.role == "root"} == set(res.new_keyids)
    # the other roles keep their keys
    v1 = load_md(world.repo.metadata_dir / "1.root.json").signed
    for role in ("targets", "snapshot", "timestamp"):
        assert world.repo.root().roles[role].keyids == v1.roles[role].keyids

    world.repo.publish(bundles["v3"])
    world.sync()
    # a device that pinned root v1 follows the chain to v2 and keeps verifying releases
    assert world.client.download("digits/2.0.0/cpu.tar").read_bytes() == bundles["v3"].read_bytes()
    assert load_md(world.client.metadata_dir / "root.json").signed.version == 2
    before = world.client.state()

    # whoever kept copies of the old root keys can no longer sign a root any device accepts
    _forge_root(world, stolen)
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="root"):
        world.client.refresh()
    assert world.client.state() == before
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="root"):
        world.new_client("fresh").refresh()  # from root v1: v2 verifies, the forged v3 does not

    # the new root keys still govern: a further change (renewal) is accepted by the device
    (world.served / "metadata" / "3.root.json").unlink()
    assert world.repo.renew_root() == 3
    world.sync()
    world.client.refresh()
    assert load_md(world.client.metadata_dir / "root.json").signed.version == 3


def test_root_rotation_signed_by_new_keys_alone_is_refused(world):
    """A root that swaps in new keys without the old threshold's signatures is not a rotation."""
    new = [CryptoSigner.generate_ed25519() for _ in range(3)]
    root = load_md(world.repo.root_json_path)
    for kid in list(root.signed.roles["root"].keyids):
        root.signed.revoke_key(kid, "root")
    for s in new:
        root.signed.add_key(s.public_key, "root")
    sign_and_write(root, new, world.served / "metadata" / "2.root.json")
    before = world.client.state()
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="root"):
        world.client.refresh()
    assert world.client.state() == before


def test_root_rotation_refuses_too_few_or_reused_keys(world):
    before = tree(world.repo.repo_dir)
    with pytest.raises(KeyStoreError, match="threshold is 2"):
        world.repo.rotate_root(new_signers=[CryptoSigner.generate_ed25519()])
    with pytest.raises(KeyStoreError, match="no role uses yet"):
        world.repo.rotate_root(new_signers=[world.signer("targets"), CryptoSigner.generate_ed25519()])
    assert tree(world.repo.repo_dir) == before


def test_renew_root_follows_on_devices(world):
    old_expiry = world.repo.root().expires
    assert world.repo.renew_root() == 2
    assert world.repo.root().expires >= old_expiry
    world.sync()
    world.client.refresh()
    assert (world.client.metadata_dir / "root_history" / "2.root.json").exists()
