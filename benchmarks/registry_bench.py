"""Registry figures: publish time for a bundle; client refresh + download + verify from a local HTTP server.

Bundles are real edgefleet bundles (``create_bundle``) of MLPs with random fp32 weights built with
``onnx.helper`` (~10 MB and ~100 MB of weights). The "next version" keeps every weight but the last
layer's (a retrained head), so its publish also makes and signs a delta.

Side by side in one run: publish vs. a plain copy + sha256 of the same archive (what publishing costs on
top of storing the bytes), and the python-tuf client vs. a plain HTTP GET of the same file from the same
server (what verification costs on top of the transfer).

Usage::

    .venv/bin/python benchmarks/registry_bench.py                  # 10 MB and 100 MB
    .venv/bin/python benchmarks/registry_bench.py --sizes 10 --repeat 1   # quicker

Writes ``benchmarks/results/registry.json`` and prints rich tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgefleet.bundle import create_bundle
from edgefleet.registry import Repository, RepositoryServer, init_keys

CREATED = datetime(2025, 1, 1, tzinfo=UTC)
IN_DIM = 256
CLASSES = 100
SHAPES = {10: (1024, 2), 100: (2048, 6)}  # hidden width, hidden->hidden layers: ~10 MB / ~100 MB of weights


def _weights(size_mb: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    hidden, n_mid = SHAPES[size_mb]
    rng = np.random.default_rng(seed)
    dims = [IN_DIM] + [hidden] * (n_mid + 1) + [CLASSES]
    return [
        ((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), (rng.standard_normal(b) * 0.01).astype(np.float32))
        for a, b in zip(dims[:-1], dims[1:], strict=True)
    ]  # fmt: skip


def _save(layers: list[tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "input"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]), helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"])]  # fmt: skip
        x = f"z{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"h{i}"]))
            x = f"h{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", IN_DIM])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-bench"
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _bundle(model: Path, out: Path, name: str, version: str, x: np.ndarray) -> Path:
    return create_bundle(
        model, out, name=name, version=version, variant="cpu", inputs_raw=x,
        preprocess=[{"op": "to_float"}], created=CREATED, atol=1e-3, rtol=1e-2,
    )  # fmt: skip


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def _best(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _copy_and_hash(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _client_fetch(url: str, root: bytes, target: str, home: Path) -> dict[str, float]:
    """A fresh device: refresh all metadata, look up, download and verify; timed per step."""
    from tuf.ngclient import Updater

    if home.exists():
        shutil.rmtree(home)
    (home / "md").mkdir(parents=True)
    t0 = time.perf_counter()
    u = Updater(str(home / "md"), f"{url}/metadata/", str(home / "t"), f"{url}/targets/", bootstrap=root)
    u.refresh()
    t1 = time.perf_counter()
    info = u.get_targetinfo(target)
    u.download_target(info)
    t2 = time.perf_counter()
    return {"refresh_s": t1 - t0, "download_verify_s": t2 - t1, "total_s": t2 - t0}


def _plain_get(url: str, dst: Path) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url) as r, open(dst, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100], choices=sorted(SHAPES))
    ap.add_argument("--repeat", type=int, default=3, help="best of N for client timings")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "registry.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgefleet.registry").setLevel(logging.INFO)
    console = Console(width=150)
    x = np.random.default_rng(0).standard_normal((16, IN_DIM)).astype(np.float32)
    results: dict[str, object] = {
        "machine": _machine(),
        "cores": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": "2 cores shared with other engineers' work while measured",
        "publish": [],
        "client": [],
    }
    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-regbench-") as tmp,
        Progress(console=console) as progress,
    ):
        t = Path(tmp)
        task = progress.add_task("bundles, publish, fetch", total=len(args.sizes) * 3)
        keys = init_keys(t / "keys")
        repo = Repository.init(t / "repo", keys)
        with RepositoryServer(repo.repo_dir) as server:
            root = repo.root_json_path.read_bytes()
            for size in args.sizes:
                layers = _weights(size, seed=1)
                m1 = _save(layers, t / f"m{size}-1.onnx")
                layers[-1] = _weights(size, seed=2)[-1]  # retrained head
                m2 = _save(layers, t / f"m{size}-2.onnx")
                name = f"bench{size}"  # one release line per size: deltas only between its own versions
                b1 = _bundle(m1, t / f"b{size}-1.tar", name, "1.0.0", x)
                b2 = _bundle(m2, t / f"b{size}-2.tar", name, "1.1.0", x)
                progress.advance(task)

                copy_s, _ = _best(lambda b=b1, s=size: _copy_and_hash(b, t / f"copy{s}.tar"), 1)
                pub1_s, r1 = _best(lambda b=b1: repo.publish(b), 1)
                pub2_s, r2 = _best(lambda b=b2: repo.publish(b), 1)
                results["publish"].append({
                    "model_mb": size, "archive_bytes": r1.length,
                    "copy_hash_s": copy_s, "publish_first_s": pub1_s,
                    "publish_next_with_delta_s": pub2_s, "delta_bytes": r2.delta_length,
                    "publish_over_copy": pub1_s / copy_s,
                })  # fmt: skip
                progress.advance(task)

                fetched = [
                    _client_fetch(server.url, root, r1.target_path, t / "dev") for _ in range(args.repeat)
                ]
                best = min(fetched, key=lambda f: f["total_s"])
                url = f"{server.url}/targets/{repo.show(name, '1.0.0', 'cpu').url_path}"
                get_s = min(_plain_get(url, t / "plain.tar") for _ in range(args.repeat))
                results["client"].append({
                    "model_mb": size, "archive_bytes": r1.length, **best,
                    "plain_http_get_s": get_s, "tuf_over_plain_get": best["total_s"] / get_s,
                    "mb_per_s": r1.length / best["download_verify_s"] / 1e6,
                })  # fmt: skip
                progress.advance(task)

    pt = Table("bundle", "archive bytes", "copy+sha256 s", "publish s", "ratio", "next version + delta s",
               "delta bytes", title="publish (sign targets, snapshot, timestamp; consistent-snapshot copy)")  # fmt: skip
    for r in results["publish"]:
        pt.add_row(f"{r['model_mb']} MB MLP", f"{r['archive_bytes']:,}", f"{r['copy_hash_s']:.2f}",
                   f"{r['publish_first_s']:.2f}", f"{r['publish_over_copy']:.2f}x",
                   f"{r['publish_next_with_delta_s']:.2f}", f"{r['delta_bytes']:,}" if r["delta_bytes"] else "none")  # fmt: skip
    ct = Table("bundle", "archive bytes", "refresh s", "download+verify s", "total s", "plain GET s", "ratio",
               "MB/s", title=f"fresh python-tuf client from 127.0.0.1 (best of {args.repeat})")  # fmt: skip
    for r in results["client"]:
        ct.add_row(f"{r['model_mb']} MB MLP", f"{r['archive_bytes']:,}", f"{r['refresh_s']:.3f}",
                   f"{r['download_verify_s']:.3f}", f"{r['total_s']:.3f}", f"{r['plain_http_get_s']:.3f}",
                   f"{r['tuf_over_plain_get']:.2f}x", f"{r['mb_per_s']:.0f}")  # fmt: skip
    console.print(pt)
    console.print(ct)
    console.print(f"machine: {results['machine']}, {results['cores']} cores (shared)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
