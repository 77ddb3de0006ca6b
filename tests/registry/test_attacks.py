"""Attacks on the served repository: python-tuf must refuse each, and the device's trusted state stays put.

Every test starts from ``world``: v1 and v2 published and mirrored over HTTP on 127.0.0.1, and a device
client that has refreshed and downloaded v2. The attacker controls the mirror (``world.served``) and,
where the test says so, has stolen the online snapshot/timestamp keys; never the offline ones.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from registrytools import attacker_key, load_md, sign_and_write
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import MetaFile, TargetFile

V2 = "digits/1.1.0/cpu.tar"


def _meta(world, name: str):
    return load_md(world.served / "metadata" / name)


def _ts_pointing_at(world, snapshot_name: str, signers) -> None:
    """Forge a timestamp that points at ``snapshot_name`` (with its real length and hash)."""
    ts = _meta(world, "timestamp.json")
    data = (world.served / "metadata" / snapshot_name).read_bytes()
    ts.signed.snapshot_meta = MetaFile.from_data(int(snapshot_name.split(".")[0]), data, ["sha256"])
    sign_and_write(ts, signers, world.served / "metadata" / "timestamp.json")


def _snapshot_pointing_at(world, targets_name: str, signers) -> str:
    """Forge the next snapshot listing ``targets_name``; returns its file name."""
    cur = world.repo.snapshot().version
    snap = _meta(world, f"{cur}.snapshot.json")
    data = (world.served / "metadata" / targets_name).read_bytes()
    snap.signed.meta["targets.json"] = MetaFile.from_data(int(targets_name.split(".")[0]), data, ["sha256"])
    name = f"{cur + 1}.snapshot.json"
    sign_and_write(snap, signers, world.served / "metadata" / name)
    return name


def _evil_targets(world, signers) -> str:
    """Next targets metadata listing an attacker's bundle (the file is on the mirror too)."""
    evil = b"evil model bytes"
    info = TargetFile.from_data("digits/6.6.6/cpu.tar", evil, ["sha256"])
    path = world.served / "targets" / "digits" / "6.6.6" / f"{info.hashes['sha256']}.cpu.tar"
    path.parent.mkdir(parents=True)
    path.write_bytes(evil)
    cur = world.repo.targets().version
    md = _meta(world, f"{cur}.targets.json")
    md.signed.targets[info.path] = info
    name = f"{cur + 1}.targets.json"
    sign_and_write(md, signers, world.served / "metadata" / name)
    return name


# --- wrong keys ------------------------------------------------------------------------------


def test_everything_signed_by_attacker_keys(world):
    before = world.client.state()
    mallory = attacker_key()
    targets = _evil_targets(world, [mallory])
    snap = _snapshot_pointing_at(world, targets, [mallory])
    _ts_pointing_at(world, snap, [mallory])
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="timestamp"):
        world.client.refresh()
    assert world.client.state() == before


def test_target_signed_by_wrong_key_with_stolen_online_keys(world):
    """Online keys stolen, targets key not: the forged targets metadata is refused."""
    before = world.client.state()
    targets = _evil_targets(world, [attacker_key()])
    snap = _snapshot_pointing_at(world, targets, [world.signer("snapshot")])
    _ts_pointing_at(world, snap, [world.signer("timestamp")])
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="targets"):
        world.client.refresh()
    after = world.client.state()
    # timestamp/snapshot really were signed by the online keys, so the client may keep them; what it
    # trusts about targets, and what it downloaded, did not change.
    assert after["metadata/targets.json"] == before["metadata/targets.json"]
    assert {k: v for k, v in after.items() if k.startswith("targets/")} == {
        k: v for k, v in before.items() if k.startswith("targets/")
    }
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        world.new_client("fresh").updater().get_targetinfo("digits/6.6.6/cpu.tar")


def test_root_signed_below_threshold(world):
    """One stolen root key (threshold 2 of 3) cannot hand the timestamp role to the attacker."""
    before = world.client.state()
    mallory = attacker_key()
    root = _meta(world, "1.root.json")
    for kid in list(root.signed.roles["timestamp"].keyids):
        root.signed.revoke_key(kid, "timestamp")
    root.signed.add_key(mallory.public_key, "timestamp")
    sign_and_write(root, [world.signer("root")], world.served / "metadata" / "2.root.json")
    ts = _meta(world, "timestamp.json")
    sign_and_write(ts, [mallory], world.served / "metadata" / "timestamp.json")
    with pytest.raises(tuf_exc.UnsignedMetadataError, match="root was signed by 1/2"):
        world.client.refresh()
    assert world.client.state() == before
    assert not (world.client.metadata_dir / "root_history" / "2.root.json").exists()


# --- freeze and rollback ---------------------------------------------------------------------


def test_expired_timestamp_freeze(world):
    """The server stops re-signing: once the timestamp it keeps serving expires, devices notice."""
    before = world.client.state()
    world.repo.refresh_timestamp(expires_in=timedelta(seconds=1))
    world.sync()
    expires = world.repo.timestamp().expires
    while datetime.now(UTC) <= expires + timedelta(milliseconds=200):
        time.sleep(0.1)
    with pytest.raises(tuf_exc.ExpiredMetadataError, match="timestamp"):
        world.client.refresh()
    assert world.client.state() == before
    # a healthy server (fresh timestamp) is accepted again
    world.repo.refresh_timestamp()
    world.sync()
    world.client.refresh()


def test_older_timestamp_served_after_newer(world, bundles):
    old_ts = (world.served / "metadata" / "timestamp.json").read_bytes()
    world.repo.publish(bundles["v3"])
    world.sync()
    world.client.refresh()
    before = world.client.state()
    (world.served / "metadata" / "timestamp.json").write_bytes(old_ts)
    with pytest.raises(tuf_exc.BadVersionNumberError, match="timestamp version"):
        world.client.refresh()
    assert world.client.state() == before


def test_snapshot_rollback_with_stolen_timestamp_key(world, bundles):
    old_snapshot = f"{world.repo.snapshot().version}.snapshot.json"
    world.repo.publish(bundles["v3"])
    world.sync()
    world.client.refresh()
    before = world.client.state()
    _ts_pointing_at(world, old_snapshot, [world.signer("timestamp")])
    with pytest.raises(tuf_exc.BadVersionNumberError, match="snapshot version"):
        world.client.refresh()
    assert world.client.state() == before


def test_targets_rollback_with_stolen_online_keys(world, bundles):
    old_targets = f"{world.repo.targets().version}.targets.json"
    world.repo.publish(bundles["v3"])
    world.sync()
    world.client.refresh()
    before = world.client.state()
    snap = _snapshot_pointing_at(world, old_targets, [world.signer("snapshot")])
    _ts_pointing_at(world, snap, [world.signer("timestamp")])
    with pytest.raises(tuf_exc.BadVersionNumberError, match="targets.json"):
        world.client.refresh()
    after = world.client.state()
    for role in ("snapshot", "targets"):
        assert after[f"metadata/{role}.json"] == before[f"metadata/{role}.json"]
    assert world.client.trusted("targets").signed.targets.get("digits/2.0.0/cpu.tar") is not None


# --- mix and match ---------------------------------------------------------------------------


def test_mix_and_match_older_snapshot_under_newer_name(world, bundles):
    old = (world.served / "metadata" / f"{world.repo.snapshot().version}.snapshot.json").read_bytes()
    before = world.client.state()
    world.repo.publish(bundles["v3"])
    world.sync()
    (world.served / "metadata" / f"{world.repo.snapshot().version}.snapshot.json").write_bytes(old)
    with pytest.raises(tuf_exc.RepositoryError) as e:
        world.client.refresh()
    assert isinstance(e.value, (tuf_exc.LengthOrHashMismatchError, tuf_exc.BadVersionNumberError))
    after = world.client.state()
    for role in ("snapshot", "targets"):
        assert after[f"metadata/{role}.json"] == before[f"metadata/{role}.json"]


def test_mix_and_match_older_targets_under_newer_name(world, bundles):
    old = (world.served / "metadata" / f"{world.repo.targets().version}.targets.json").read_bytes()
    before = world.client.state()
    world.repo.publish(bundles["v3"])
    world.sync()
    (world.served / "metadata" / f"{world.repo.targets().version}.targets.json").write_bytes(old)
    with pytest.raises(tuf_exc.LengthOrHashMismatchError):
        world.client.refresh()
    assert world.client.state()["metadata/targets.json"] == before["metadata/targets.json"]


def test_mix_and_match_targets_from_another_repository(world, tmp_path, bundles):
    """Validly signed metadata of a different repository (other keys) does not mix into this one."""
    from edgefleet.registry import Repository, init_keys

    other = Repository.init(tmp_path / "other", init_keys(tmp_path / "other-keys"))
    other.publish(bundles["v3"])
    before = world.client.state()
    for f in (other.metadata_dir).glob("*.json"):
        if not f.name.endswith("root.json"):
            (world.served / "metadata" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        world.client.refresh()
    assert world.client.state() == before


# --- targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["bitflip", "truncate", "append"])
def test_tampered_target_bytes(world, how):
    sha = world.repo.targets().targets["digits/1.0.0/cpu.tar"].hashes["sha256"]
    f = world.served / "targets" / "digits" / "1.0.0" / f"{sha}.cpu.tar"
    data = f.read_bytes()
    if how == "bitflip":
        b = bytearray(data)
        b[1000] ^= 0x80
        data = bytes(b)
    elif how == "truncate":
        data = data[:-512]
    else:
        data = data + b"\0" * 512
    f.write_bytes(data)
    before = world.client.state()
    u = world.client.refresh()
    info = u.get_targetinfo("digits/1.0.0/cpu.tar")
    with pytest.raises((tuf_exc.LengthOrHashMismatchError, tuf_exc.DownloadLengthMismatchError)):
        u.download_target(info)
    assert world.client.state() == before
    assert not (world.client.target_dir / "digits%2F1.0.0%2Fcpu.tar").exists()


def test_target_not_listed_in_metadata(world):
    """A file the attacker places on the mirror is not a target: the client does not know it exists."""
    evil = world.served / "targets" / "digits" / "9.9.9"
    evil.mkdir(parents=True)
    (evil / ("0" * 64 + ".cpu.tar")).write_bytes(b"evil")
    before = world.client.state()
    u = world.client.refresh()
    assert u.get_targetinfo("digits/9.9.9/cpu.tar") is None
    assert world.client.state() == before


def test_device_keeps_verifying_v2_after_attacks(world):
    """Sanity: the honest mirror still verifies (so each refusal above came from the tampering)."""
    world.sync()
    assert world.client.download(V2).stat().st_size == world.repo.targets().targets[V2].length
