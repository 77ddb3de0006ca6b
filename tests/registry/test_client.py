"""Client check: python-tuf's ngclient.Updater, a pinned root and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgefleet.bundle import Bundle, apply_delta, read_manifest
from edgefleet.errors import NotFoundError, VerificationError
from edgefleet.registry import RepositoryServer, fetch_bundle
from edgefleet.registry._client import fetch_target
from edgefleet.registry._published import delta_target_path_for


def test_updater_downloads_and_verifies_a_bundle(world, bundles):
    u = world.client.refresh()
    info = u.get_targetinfo("digits/1.1.0/cpu.tar")
    assert info is not None and info.custom["edgefleet"]["version"] == "1.1.0"
    path = u.download_target(info)
    assert Path(path).read_bytes() == bundles["v2"].read_bytes()
    # the verified download is a bundle that passes its own golden-set check
    with Bundle.open(path) as b:
        report = b.verify()
    assert report.key == "digits/1.1.0/cpu"
    assert read_manifest(path) == read_manifest(bundles["v2"])


def test_served_layout_is_plain_static_files(world):
    """A plain static server is all a device needs: versioned metadata and hash-prefixed targets."""
    sha = world.repo.targets().targets["digits/1.1.0/cpu.tar"].hashes["sha256"]
    snap_v = world.repo.snapshot().version
    for rel in ("metadata/1.root.json", "metadata/timestamp.json", f"metadata/{snap_v}.snapshot.json",
                f"targets/digits/1.1.0/{sha}.cpu.tar"):  # fmt: skip
        with urllib.request.urlopen(f"{world.server.url}/{rel}") as resp:
            assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError):  # no unversioned target path: consistent snapshots only
        urllib.request.urlopen(f"{world.server.url}/targets/digits/1.1.0/cpu.tar")


def test_device_applies_delta_from_its_active_version(world, bundles, tmp_path):
    """A device on 1.0.0 asks TUF for the delta path from its active version, applies and checks it."""
    u = world.client.refresh()
    bundle_info = u.get_targetinfo("digits/1.1.0/cpu.tar")
    delta_path = delta_target_path_for("digits", "1.1.0", "cpu", "1.0.0")
    assert u.get_targetinfo(delta_target_path_for("digits", "1.1.0", "cpu", "0.9.0")) is None  # no such delta
    delta_info = u.get_targetinfo(delta_path)
    base = u.download_target(u.get_targetinfo("digits/1.0.0/cpu.tar"))
    patch = u.download_target(delta_info)
    ef = delta_info.custom["edgefleet"]
    assert ef["base_sha256"] == u.get_targetinfo("digits/1.0.0/cpu.tar").hashes["sha256"]
    assert ef["result_sha256"] == bundle_info.hashes["sha256"]
    out = apply_delta(base, patch, tmp_path / "new.tar", expected_sha256=ef["result_sha256"],
                      expected_length=ef["result_length"])  # fmt: skip
    assert out.read_bytes() == bundles["v2"].read_bytes()
    assert delta_info.length < bundle_info.length


def test_fetch_bundle_helper(world, bundles, tmp_path):
    out = fetch_bundle(
        world.server.url,
        world.root_v1,
        "digits",
        "1.0.0",
        "cpu",
        tmp_path / "dl",
        state_dir=tmp_path / "state",
    )
    assert out.read_bytes() == bundles["v1"].read_bytes()
    with pytest.raises(NotFoundError, match="not listed"):
        fetch_target(world.server.url, world.root_v1, "digits/7.0.0/cpu.tar", tmp_path / "x.tar",
                     state_dir=tmp_path / "state")  # fmt: skip
    assert not (tmp_path / "x.tar").exists()


def test_fetch_refuses_tampered_bundle_and_writes_nothing(world, tmp_path):
    sha = world.repo.targets().targets["digits/1.0.0/cpu.tar"].hashes["sha256"]
    f = world.served / "targets" / "digits" / "1.0.0" / f"{sha}.cpu.tar"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="LengthOrHashMismatchError") as e:
        fetch_bundle(world.server.url, world.root_v1, "digits", "1.0.0", "cpu", tmp_path / "dl",
                     state_dir=tmp_path / "state")  # fmt: skip
    assert "nothing was installed" in e.value.hint
    assert not any((tmp_path / "dl").iterdir())


def test_new_release_reaches_a_synced_client(world, bundles):
    world.repo.publish(bundles["v3"])
    u = world.new_client("late").refresh()
    assert u.get_targetinfo("digits/2.0.0/cpu.tar") is None  # the mirror has not caught up yet
    world.sync()
    assert world.client.download("digits/2.0.0/cpu.tar").read_bytes() == bundles["v3"].read_bytes()


def test_server_helper_serves_any_directory(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    with RepositoryServer(tmp_path) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(f"{srv.url}/a.txt").read() == b"hi"
