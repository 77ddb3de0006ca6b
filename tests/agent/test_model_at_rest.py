"""Model files encrypted at rest on the device (AgentConfig.model_key_file): sealed with AES-GCM after the
manifest's hashes are checked on the plaintext, authenticated and hashed again at every load, decrypted
into memory only. Tampering or another key is refused and the agent keeps what it serves."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
from agenttools import run_until

from edgefleet.agent import AgentConfig
from edgefleet.agent._atrest import ModelKey
from edgefleet.agent._store import ModelStore
from edgefleet.errors import ConfigError, IntegrityError


def _plain_model(bundle_tar) -> bytes:
    with tarfile.open(bundle_tar) as t:
        return t.extractfile("model.onnx").read()


def _all_files(root):
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.fixture
def key_file(tmp_path):
    return tmp_path / "device-keys" / "model.key"


def test_models_are_sealed_at_rest_and_served_from_memory(world, key_file):
    a = world.agent(model_key_file=key_file)
    world.install(a, "1.0.0")
    world.install(a, "1.1.0")
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    store = ModelStore(world.state, key=ModelKey(key_file))
    for v in ("1.0.0", "1.1.0"):
        m = store.get(world.sha(v))
        assert m is not None and m.sealed == "model.onnx.enc"
        assert (m.path / m.sealed).stat().st_mode & 0o777 == 0o600
        assert not (m.bundle_dir / "model.onnx").exists() and not m.archive.exists()
        store.verify(m.sha256, deep=True)  # the start-up re-check works on a sealed version
    # no plaintext model anywhere in the state directory (models, downloads, anything)
    plains = [_plain_model(world.bundles[v]) for v in ("1.0.0", "1.1.0")]
    for f in _all_files(world.state):
        data = f.read_bytes()
        for p in plains:
            assert p[len(p) // 2 : len(p) // 2 + 256] not in data, f
    # serving from memory; a restart re-checks and loads the sealed active version
    x = np.zeros((1, 64), np.float32)
    assert a.host.predict(x)
    a.close()
    b = world.agent(model_key_file=key_file)
    assert b.host.loaded == store.get(world.sha("1.1.0")).bundle_dir
    assert b.host.predict(x)
    assert b.journal.state.active == world.sha("1.1.0") and b.journal.state.last_error is None


def test_tampered_ciphertext_is_refused_and_the_agent_keeps_serving(world, key_file):
    a = world.agent(model_key_file=key_file)
    world.install(a, "1.0.0")
    world.install(a, "1.1.0")
    old = a.store.get(world.sha("1.0.0"))
    enc = old.path / old.sealed
    blob = bytearray(enc.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    enc.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="does not authenticate"):
        a.rollback()
    assert a.journal.state.active == world.sha("1.1.0")
    assert a.host.model_key.endswith("1.1.0") or "1.1.0" in a.host.model_key
    assert a.host.loaded == a.store.get(world.sha("1.1.0")).bundle_dir
    assert a.host.predict(np.zeros((1, 64), np.float32))
    assert "rollback to 1.0.0 refused" in a.journal.state.last_error


def test_a_sealed_file_moved_to_another_version_does_not_open(world, key_file):
    a = world.agent(model_key_file=key_file)
    world.install(a, "1.0.0")
    world.install(a, "1.1.0")
    new, old = a.store.get(world.sha("1.1.0")), a.store.get(world.sha("1.0.0"))
    (old.path / old.sealed).write_bytes((new.path / new.sealed).read_bytes())  # authentic, wrong place
    with pytest.raises(IntegrityError, match="does not authenticate"):
        a.store.open(old.sha256)


def test_another_key_is_refused_at_start_with_a_clear_error(world, key_file):
    a = world.agent(model_key_file=key_file)
    world.install(a, "1.0.0")
    a.close()
    os.chmod(key_file, 0o600)
    key_file.write_bytes(os.urandom(32))
    b = world.agent(model_key_file=key_file)
    assert b.host.loaded is None  # nothing unauthenticated is served
    assert "does not authenticate" in b.journal.state.last_error
    with pytest.raises(IntegrityError, match="another key"):
        b.store.open(world.sha("1.0.0"))
    # without any key configured the sealed version is refused too, and says how to fix it
    with pytest.raises(IntegrityError, match="model_key_file"):
        ModelStore(world.state).open(world.sha("1.0.0"))


def test_install_then_update_with_a_sealed_store_keeps_working(world, key_file):
    """A sealed store has no archive to apply a delta to: the update is a full download, still sealed."""
    a = world.agent(model_key_file=key_file)
    world.install(a, "1.0.0")
    world.standin.assign(world.target("1.1.0"))
    run_until(a, lambda: a.journal.state.active == world.sha("1.1.0"), timeout=60)
    downloaded = [e for e in a.journal.state.history if e["event"] == "downloaded"]
    assert downloaded[-1]["via"] == "full"
    assert not list((world.state / "downloads").iterdir())


def test_model_key_file_checks(tmp_path):
    k = ModelKey(tmp_path / "k" / "model.key")
    k.seal(b"model bytes", tmp_path / "m.enc", context="a/model.onnx.enc")
    assert k.open(tmp_path / "m.enc", context="a/model.onnx.enc") == b"model bytes"
    with pytest.raises(IntegrityError):
        k.open(tmp_path / "m.enc", context="b/model.onnx.enc")
    os.chmod(k.path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        ModelKey(k.path)
    os.chmod(k.path, 0o600)
    k.path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="not 32"):
        ModelKey(k.path)
    with pytest.raises(ConfigError, match="inside the model store"):
        ModelStore(tmp_path / "state", key=ModelKey(tmp_path / "state" / "models" / "model.key"))
    assert AgentConfig(state_dir=tmp_path, model_key_file=k.path).model_key_file == k.path
