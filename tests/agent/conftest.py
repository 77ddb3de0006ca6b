"""Fixtures for agent tests: real bundles of real models, a real signed TUF repository, a stand-in director.

Session-scoped: the models and bundles (trained here), a repository template (keys + published targets)
copied per test so a test can tamper with it freely.
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _standin import ENROLL_TOKEN, StandIn
from agenttools import GOLDEN, PRE, run_until

# --- models ---------------------------------------------------------------------------------------


def _erroring_model(src: Path, out: Path) -> None:
    """The digits MLP plus a Gather indexed by the first pixel: fine when that pixel is 0 (every golden
    digit), an onnxruntime error on any live input whose first pixel is lit."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    prob = "probabilities"
    for node in g.node:
        node.output[:] = ["probabilities_raw" if o == prob else o for o in node.output]
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "ef_s0"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "ef_s1"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "ef_axis"),
            numpy_helper.from_array(np.array(50.0, dtype=np.float32), "ef_k"),
            numpy_helper.from_array(np.zeros(1, dtype=np.float32), "ef_table"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Slice", ["input", "ef_s0", "ef_s1", "ef_axis"], ["ef_px"]),
            helper.make_node("Mul", ["ef_px", "ef_k"], ["ef_scaled"]),
            helper.make_node("Cast", ["ef_scaled"], ["ef_idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["ef_table", "ef_idx"], ["ef_zero"], axis=0),
            helper.make_node("Add", ["probabilities_raw", "ef_zero"], [prob]),
        ]
    )
    onnx.save(m, str(out))


def _slow_model(out: Path, width: int = 384, layers: int = 4) -> None:
    """A real but deliberately heavy MLP-shaped ONNX model (for the latency budget gate)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev, dim = "input", 64
    for i in range(layers):
        w = (rng.standard_normal((dim, width)) / np.sqrt(dim)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]),
            helper.make_node("Tanh", [f"h{i}"], [f"a{i}"]),
        ]
        prev, dim = f"a{i}", width
    inits.append(numpy_helper.from_array((rng.standard_normal((dim, 10)) * 0.01).astype(np.float32), "wo"))
    nodes += [
        helper.make_node("MatMul", [prev, "wo"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out))


def rebuild_with_bad_golden(good: Path, out: Path) -> None:
    """A well-formed, correctly hashed bundle whose golden expectations the model does not reproduce."""
    from edgefleet._fs import sha256_file
    from edgefleet.bundle._archive import write_archive, write_npz
    from edgefleet.protocol import FileEntry, Manifest

    work = out.parent / (out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    with tarfile.open(good) as t:
        t.extractall(work, filter="data")
    z = dict(np.load(work / "golden.npz"))
    for k in z:
        if k.startswith("expected/") and z[k].dtype.kind == "f":
            z[k] = np.roll(z[k], 1, axis=1)  # every sample's scores shifted: a different model's answers
    write_npz(work / "golden.npz", z)
    man = Manifest.from_json((work / "manifest.json").read_bytes())
    p = work / "golden.npz"
    man.files["golden.npz"] = FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
    files = {n: work / n for n in man.files}
    write_archive(out, man.to_json(), files, mtime=int(man.created.timestamp()))
    shutil.rmtree(work)


@pytest.fixture(scope="session")
def agent_bundles(tmp_path_factory, digits_split, digits_mlp, digits_mlp_v2) -> dict[str, Path]:
    """Bundles: 1.0.0 and 1.1.0 (good), 1.2.0 bad golden, 1.3.0 slow, 1.4.0 errors live, 1.5.0 disagrees."""
    from edgefleet.bundle import create_bundle
    from edgefleet.examples import DigitsSplit, train_digits_mlp

    d = tmp_path_factory.mktemp("agent-bundles")
    x = digits_split.x_test[:GOLDEN]
    out: dict[str, Path] = {}

    def make(version: str, model: Path) -> None:
        out[version] = create_bundle(
            model,
            d / f"digits-{version}.tar",
            name="digits",
            version=version,
            variant="cpu",
            inputs_raw=x,
            preprocess=PRE,
        )

    make("1.0.0", digits_mlp)
    make("1.1.0", digits_mlp_v2)
    make("1.2.0-good", digits_mlp_v2)
    out["1.2.0"] = d / "digits-1.2.0.tar"
    good = create_bundle(
        digits_mlp_v2,
        d / "tmp-1.2.0.tar",
        name="digits",
        version="1.2.0",
        variant="cpu",
        inputs_raw=x,
        preprocess=PRE,
    )
    rebuild_with_bad_golden(good, out["1.2.0"])
    _slow_model(d / "slow.onnx")
    make("1.3.0", d / "slow.onnx")
    _erroring_model(digits_mlp_v2, d / "erroring.onnx")
    make("1.4.0", d / "erroring.onnx")
    shifted = DigitsSplit(
        digits_split.x_train,
        (digits_split.y_train + 1) % 10,
        digits_split.x_test,
        (digits_split.y_test + 1) % 10,
    )
    train_digits_mlp(d / "shifted.onnx", data=shifted, seed=2)
    make("1.5.0", d / "shifted.onnx")
    out.pop("1.2.0-good")
    return out


@pytest.fixture(scope="session")
def repo_template(tmp_path_factory, agent_bundles) -> Path:
    """keys/ + repo/ with every test bundle published (and the registry's deltas)."""
    from edgefleet.registry import Repository, init_keys

    d = tmp_path_factory.mktemp("agent-repo")
    keys = init_keys(d / "keys", root_keys=1, root_threshold=1)
    repo = Repository.init(d / "repo", keys)
    for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"]:
        repo.publish(agent_bundles[v])
    return d


# --- the world a test runs in -----------------------------------------------------------------------


@dataclass
class World:
    root: Path
    standin: StandIn
    state: Path
    bundles: dict[str, Path]
    agents: list[Any] = field(default_factory=list)

    @property
    def repo_dir(self) -> Path:
        return self.root / "repo"

    def repository(self):
        from edgefleet.registry import Repository

        return Repository(self.repo_dir, self.root / "keys")

    def target(self, version: str) -> str:
        return f"digits/{version}/cpu.tar"

    def config(self, **kw: Any):
        from edgefleet.agent import AgentConfig

        base = dict(
            state_dir=self.state,
            poll_interval_s=0.2,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            retry_backoff_s=0.01,
            retry_backoff_max_s=0.05,
            download_retries=3,
            latency_runs=5,
            disk_reserve_mb=0,
            request_timeout_s=5,
        )
        base.update(kw)
        return AgentConfig(**base)

    def enroll(self) -> None:
        from edgefleet.agent import enroll

        enroll(
            self.config(),
            token=ENROLL_TOKEN,
            root_json=self.repo_dir / "metadata" / "1.root.json",
            server_url=self.standin.url,
        )

    def agent(self, *, start: bool = True, **kw: Any):
        from edgefleet.agent import Agent, RuntimeHost

        a = Agent(self.config(**kw), host=kw.pop("host", None) or RuntimeHost(seed=0))
        self.agents.append(a)
        if start:
            a.start()
        return a

    def install(self, agent, version: str, **gates: Any) -> None:
        """Assign ``version`` and run the agent until it is committed."""
        from edgefleet.protocol import GateThresholds

        self.standin.assign(self.target(version), gates=GateThresholds(**({"watch_window_s": 0.2} | gates)))
        run_until(agent, lambda: agent.journal.state.committed == self.sha(version), timeout=60)

    def sha(self, version: str) -> str:
        return self.standin.signed_target(self.target(version))["hashes"]["sha256"]

    def close(self) -> None:
        for a in self.agents:
            a.close()
        self.standin.stop()


@pytest.fixture
def world(tmp_path, repo_template, agent_bundles):
    shutil.copytree(repo_template / "keys", tmp_path / "keys")
    shutil.copytree(repo_template / "repo", tmp_path / "repo")
    s = StandIn(tmp_path / "repo").start()
    w = World(tmp_path, s, tmp_path / "state", agent_bundles)
    w.enroll()
    yield w
    w.close()
