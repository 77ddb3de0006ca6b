"""Enrollment verifies the repository's trust root *before* it spends the one-time token.

The device is given some root.json of the repository; a TUF refresh from it walks the root chain (after a
root-key rotation an older root still works) and the newest trusted root is what the device pins. A
repository that does not chain from the given root is refused and the token stays unused.
"""

from __future__ import annotations

import shutil

import pytest
from _standin import ENROLL_TOKEN, StandIn

from edgefleet.agent import AgentConfig, enroll
from edgefleet.errors import DownloadError, VerificationError


@pytest.fixture
def site(tmp_path, repo_template):
    shutil.copytree(repo_template / "keys", tmp_path / "keys")
    shutil.copytree(repo_template / "repo", tmp_path / "repo")
    s = StandIn(tmp_path / "repo").start()
    yield s
    s.stop()


def _root_version(path) -> int:
    from tuf.api.metadata import Metadata, Root

    return Metadata[Root].from_file(str(path)).signed.version


def test_enroll_with_an_old_root_after_rotation_pins_the_newest(tmp_path, site):
    from edgefleet.agent import Agent
    from edgefleet.registry import Repository

    repo = Repository(tmp_path / "repo", tmp_path / "keys")
    old_root = tmp_path / "pinned-1.root.json"
    shutil.copyfile(tmp_path / "repo" / "metadata" / "1.root.json", old_root)
    res = repo.rotate_root()
    assert res.root_version == 2
    state = tmp_path / "state"
    cfg = AgentConfig(state_dir=state, request_timeout_s=5)
    creds = enroll(cfg, token=ENROLL_TOKEN, root_json=old_root, server_url=site.url)
    assert creds.device_id in site.devices
    # the device pins root v2 (reached through v1's chain), the one the server names
    assert _root_version(state / "root.json") == 2
    assert (state / "root.json").read_bytes() == (tmp_path / "repo" / "metadata" / "root.json").read_bytes()
    assert not list(state.glob(".enroll-tuf-*"))
    a = Agent(cfg)
    try:
        a.repo.refresh()  # the agent verifies the repository from the pinned newest root
        assert a.repo.find("digits/1.0.0/cpu.tar") is not None
    finally:
        a.close()


def test_enroll_against_a_repository_of_another_root_spends_nothing(tmp_path, site):
    from edgefleet.registry import Repository, init_keys

    other = Repository.init(tmp_path / "other", init_keys(tmp_path / "okeys", root_keys=1, root_threshold=1))
    cfg = AgentConfig(state_dir=tmp_path / "state", request_timeout_s=5)
    with pytest.raises(VerificationError, match="does not verify from the given root") as e:
        enroll(cfg, token=ENROLL_TOKEN, root_json=other.root_json_path, server_url=site.url)
    assert "token was not used" in e.value.hint
    assert ENROLL_TOKEN in site.tokens and not site.devices and not site.enrollments
    assert not (tmp_path / "state" / "credentials.json").exists()
    assert not (tmp_path / "state" / "root.json").exists()
    # the same token still enrolls with the right root
    creds = enroll(
        cfg, token=ENROLL_TOKEN, root_json=tmp_path / "repo" / "metadata" / "1.root.json", server_url=site.url
    )
    assert creds.device_id in site.devices and ENROLL_TOKEN not in site.tokens


def test_enroll_against_a_server_that_is_down_spends_nothing(tmp_path, repo_template):
    s = StandIn(repo_template / "repo").start()
    url = s.url
    s.stop()
    cfg = AgentConfig(state_dir=tmp_path / "state", request_timeout_s=2)
    with pytest.raises(DownloadError, match="cannot read the repository") as e:
        enroll(
            cfg,
            token=ENROLL_TOKEN,
            root_json=repo_template / "repo" / "metadata" / "1.root.json",
            server_url=url,
        )
    assert "--server" in e.value.hint
    assert not (tmp_path / "state" / "credentials.json").exists()
