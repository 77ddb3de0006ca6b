"""The CLI for keys at rest: keys init with a passphrase and root folders, signing commands that need them,
and a table of bad inputs that each end in one `error:` line, a hint, exit 1 and no traceback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from registrytools import tree

PASS = "field-ready passphrase"


def ef(*args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_KEYS_PASSPHRASE"} | (env or {})
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _refused(r: subprocess.CompletedProcess, *needles: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    assert "error:" in r.stderr and "hint:" in r.stderr, out
    for n in needles:
        assert n in out, out


@pytest.fixture
def pw(tmp_path):
    p = tmp_path / "passphrase"
    p.write_text(PASS + "\n")
    p.chmod(0o600)
    return p


def test_keys_init_default_keeps_root_keys_apart_in_offline(tmp_path):
    keys = tmp_path / "keys"
    r = ef("keys", "init", keys)
    assert not list(keys.glob("root-*.pem")) and len(list((keys / "offline").glob("root-*.pem"))) == 3
    assert stat.S_IMODE(os.stat(keys / "offline").st_mode) == 0o700
    assert "offline" in r.stdout and "--passphrase-file" in r.stdout
    shown = json.loads(ef("keys", "show", keys, "--json").stdout)
    roots = [k for k in shown["keys"] if k["role"] == "root"]
    assert len(roots) == 3 and {k["dir"] for k in roots} == {str(keys / "offline")}
    assert not any(k["encrypted"] for k in shown["keys"])


def test_passphrase_and_root_sticks_through_the_cli(tmp_path, bundles, pw):
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    sticks = [tmp_path / f"usb{i}" for i in (1, 2, 3)]
    sticks_args = [a for s in sticks for a in ("--root-dir", s)]
    out = json.loads(ef("keys", "init", keys, *sticks_args, "--passphrase-file", pw, "--json").stdout)
    assert out["encrypted_roles"] == ["root", "targets"]
    by_role = {}
    for k in out["keys"]:
        by_role.setdefault(k["role"], []).append(k)
    assert sorted(k["dir"] for k in by_role["root"]) == sorted(map(str, sticks))
    assert all(k["encrypted"] for k in by_role["root"] + by_role["targets"])
    assert b"BEGIN PRIVATE KEY" not in next(keys.glob("targets-*.pem")).read_bytes()
    # `keys show` needs no passphrase and says where each key is
    table = ef("keys", "show", keys).stdout
    assert "usb1" in table and "usb3" in table

    r = ef("registry", "init", repo, "--keys", keys, check=False)
    _refused(r, "encrypted", "--passphrase-file")
    assert not (repo / "metadata").exists()
    ef("registry", "init", repo, "--keys", keys, "--passphrase-file", pw)
    ef("publish", bundles["v1"], "--repo", repo, "--keys", keys, env={"EDGEFLEET_KEYS_PASSPHRASE": PASS})

    before = tree(repo, skip=())
    bad = tmp_path / "bad"
    bad.write_text("nope\n")
    _refused(ef("publish", bundles["v2"], "--repo", repo, "--keys", keys, "--passphrase-file", bad, check=False),
             "wrong passphrase")  # fmt: skip
    _refused(ef("publish", bundles["v2"], "--repo", repo, "--keys", keys, check=False), "encrypted")
    _refused(ef("keys", "rotate", "root", "--keys", keys, "--repo", repo, "--root-dir", tmp_path / "nowhere",
                "--passphrase-file", pw, check=False), "does not exist")  # fmt: skip
    assert tree(repo, skip=()) == before

    # the online keys are unencrypted: the server's timestamp refresh needs no passphrase
    ef("registry", "refresh-timestamp", "--repo", repo, "--keys", keys)
    # a root rotation with two of the three sticks (moved elsewhere) and the passphrase
    sticks[0].rename(tmp_path / "a")
    sticks[1].rename(tmp_path / "b")
    shown = json.loads(ef("keys", "show", keys, "--json").stdout)
    assert shown["absent_root_dirs"] == [str(sticks[0]), str(sticks[1])]
    assert [k["dir"] for k in shown["keys"] if k["role"] == "root"] == [str(sticks[2])]
    res = json.loads(
        ef(
            "keys",
            "rotate",
            "root",
            "--keys",
            keys,
            "--repo",
            repo,
            "--root-dir",
            tmp_path / "a",
            "--root-dir",
            tmp_path / "b",
            "--passphrase-file",
            pw,
            "--json",
        ).stdout  # fmt: skip
    )
    assert res["root_version"] == 2
    # each new root key replaced an old one on its stick (usb3, still mounted where keys init recorded it)
    assert {os.path.dirname(p) for p in res["key_paths"]} == {str(tmp_path / d) for d in ("a", "b", "usb3")}
    assert json.loads((repo / "metadata" / "root.json").read_text())["signed"]["version"] == 2


def test_bad_key_inputs_give_one_error_and_a_hint(tmp_path, pw):
    keys = tmp_path / "keys"
    empty = tmp_path / "empty"
    empty.write_text("")
    cases = [
        (("keys", "init", keys, "--passphrase-file", tmp_path / "missing"), "cannot read passphrase file"),
        (("keys", "init", keys, "--passphrase-file", empty), "is empty"),
        (("keys", "init", keys, "--encrypt-online"), "--encrypt-online needs a passphrase"),
        (("keys", "init", keys, "--root-dir", tmp_path / "a", "--root-dir", tmp_path / "b"), "one per key"),
        (("keys", "init", keys, "--root-keys", "2", "--threshold", "3"), "threshold"),
        (("keys", "show", tmp_path / "nope"), "does not exist"),
    ]
    for args, needle in cases:
        _refused(ef(*args, check=False), needle)
    assert not keys.exists()
    ef("keys", "init", keys, "--passphrase-file", pw)
    for args, needle in [
        (("keys", "show", keys, "--root-dir", tmp_path / "unmounted"), "does not exist"),
        (("registry", "init", tmp_path / "r", "--keys", keys, "--passphrase-file", empty), "is empty"),
        (("keys", "rotate", "targets", "--keys", keys, "--repo", tmp_path / "r"), "encrypted"),
    ]:
        _refused(ef(*args, check=False, env={"EDGEFLEET_KEYS_PASSPHRASE": "wrong"} if "rotate" in args else None),
                 needle if "rotate" not in args else "wrong passphrase")  # fmt: skip
    assert not (tmp_path / "r").exists()
