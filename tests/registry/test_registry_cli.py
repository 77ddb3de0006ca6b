"""The CLI end to end: keys init, registry init, publish, list/show, refresh, rotate, fetch over HTTP."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from edgefleet.registry import RepositoryServer


def ef(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_cli_end_to_end(tmp_path, bundles):
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    out = json.loads(ef("keys", "init", keys, "--root-keys", "3", "--threshold", "2", "--json").stdout)
    assert out["root_threshold"] == 2 and len(out["keys"]) == 6
    assert all(k["mode"] == "0600" for k in out["keys"])
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700

    # publishing into a missing repository says how to create one
    r = ef("publish", bundles["v1"], "--repo", repo, "--keys", keys, check=False)
    assert r.returncode == 1 and "registry init" in r.stderr and "Traceback" not in r.stderr
    ef("registry", "init", repo, "--keys", keys, "--timestamp-expiry", "6h")

    p1 = json.loads(ef("publish", bundles["v1"], "--repo", repo, "--keys", keys, "--json").stdout)
    assert p1["target_path"] == "digits/1.0.0/cpu.tar" and not p1["unchanged"]
    p2 = json.loads(ef("publish", bundles["v2"], "--repo", repo, "--keys", keys, "--json").stdout)
    assert p2["delta_target_path"] == "digits/1.1.0/cpu.from-1.0.0.delta"
    again = ef("publish", bundles["v2"], "--repo", repo, "--keys", keys)
    assert "unchanged" in again.stdout
    clash = ef("publish", bundles["v1_other"], "--repo", repo, "--keys", keys, check=False)
    assert clash.returncode == 1
    assert "already published with different content" in clash.stderr and "hint:" in clash.stderr

    listed = json.loads(ef("registry", "list", "--repo", repo, "--json").stdout)
    assert [(p["version"], len(p["deltas"])) for p in listed] == [("1.0.0", 0), ("1.1.0", 1)]
    shown = json.loads(ef("registry", "show", "digits", "1.1.0", "cpu", "--repo", repo, "--json").stdout)
    assert shown["manifest"]["name"] == "digits" and shown["sha256"] == p2["sha256"]
    missing = ef("registry", "show", "digits", "3.0.0", "cpu", "--repo", repo, check=False)
    assert missing.returncode == 1 and "registry list" in missing.stderr

    ts = json.loads(ef("registry", "refresh-timestamp", "--repo", repo, "--keys", keys, "--json").stdout)
    assert ts["targets_version"] == 3
    rot = json.loads(ef("keys", "rotate", "targets", "--keys", keys, "--repo", repo, "--json").stdout)
    assert rot["root_version"] == 2
    rot_root = json.loads(ef("keys", "rotate", "root", "--keys", keys, "--repo", repo, "--json").stdout)
    assert rot_root["root_version"] == 3 and not set(rot_root["new_keyids"]) & set(rot_root["old_keyids"])
    shown_keys = json.loads(ef("keys", "show", keys, "--repo", repo, "--json").stdout)
    assert all(k["trusted"] for k in shown_keys["keys"])
    assert {k["keyid"] for k in shown_keys["keys"] if k["role"] == "root"} == set(rot_root["new_keyids"])
    renewed = ef("keys", "rotate", "root", "--keys", keys, "--repo", repo)
    assert "rotated root key" in renewed.stdout and "(root v4)" in renewed.stdout

    with RepositoryServer(repo) as srv:
        got = json.loads(
            ef(
                "registry",
                "fetch",
                "digits",
                "1.1.0",
                "cpu",
                "--url",
                srv.url,
                "--root",
                repo / "metadata" / "1.root.json",
                "-o",
                tmp_path / "dl",
                "--state",
                tmp_path / "state",
                "--json",
            ).stdout  # fmt: skip
        )
        assert Path(got["path"]).read_bytes() == bundles["v2"].read_bytes()


def test_cli_bad_duration(tmp_path):
    r = ef("registry", "refresh-timestamp", "--repo", tmp_path, "--keys", tmp_path, "--expires-in", "soon",
           check=False)  # fmt: skip
    assert r.returncode == 1
    assert "cannot read duration 'soon'" in r.stderr and "12h" in r.stderr and "Traceback" not in r.stderr
