"""The demo's three releases: trained (one on shuffled labels), optimized, bundled and published."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from edgefleet.sim._demo_config import BAD, CLASSES, GOOD, NEW, SCALE, DemoConfig
from edgefleet.sim._narrator import Narrator

__all__ = ["ReleaseBuilder"]


class ReleaseBuilder:
    """Builds the releases into DIR (models, data, optimize, bundles, keys, repository).

    ``releases`` describes each version (how it was trained, its test accuracy, its published targets);
    the optimizer's table lands in ``summary["optimize"]``.
    """

    def __init__(
        self,
        cfg: DemoConfig,
        narrator: Narrator,
        dir: Path,  # noqa: A002
        summary: dict[str, Any],
        *,
        versions: tuple[str, ...] = (GOOD, NEW, BAD),
    ) -> None:
        self.cfg = cfg
        self.versions = versions
        self.n = narrator
        self.dir = dir
        self.summary = summary
        self.releases: dict[str, dict[str, Any]] = {}
        self.optimized: dict[str, dict[str, Any]] = {}

    def build(self) -> Any:
        """Train, optimize and publish; returns the digits data split (traffic samples from it)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at a demo's small max_iter
            models, data = self._train()
            self._optimize(models, data)
        self._publish(data)
        return data

    def _train(self) -> tuple[dict[str, Path], Any]:
        import numpy as np

        from edgefleet.examples import DigitsSplit, digits, train_digits_mlp

        s = self.cfg.seed
        count = {1: "one release", 2: "two releases", 3: "three releases"}[len(self.versions)]
        self.n.step(f"Training {count} of a digits classifier (scikit-learn MLP -> ONNX)")
        data = digits(seed=0)
        shuffled = DigitsSplit(
            data.x_train, np.random.default_rng(s).permutation(data.y_train), data.x_test, data.y_test
        )
        plan = [
            (GOOD, s, data, "first release"),
            (NEW, s + 1, data, "retrained with another seed"),
            (BAD, s + 2, shuffled, "trained on shuffled labels (a broken data pipeline)"),
        ]
        models = {}
        for version, seed, split, what in (p for p in plan if p[0] in self.versions):
            path = self.dir / "models" / f"digits-{version}.onnx"
            acc = train_digits_mlp(path, seed=seed, max_iter=200, data=split)
            models[version] = path
            self.releases[version] = {"version": version, "trained": what, "test_accuracy": round(acc, 4)}
            self.n.note(f"v{version}: {what}; test accuracy {acc:.1%}")
        np.savez(self.dir / "data" / "calib.npz", input=(data.x_train[:128] / 16.0).astype(np.float32))
        np.savez(
            self.dir / "data" / "eval.npz", input=(data.x_test / 16.0).astype(np.float32), labels=data.y_test
        )
        return models, data

    def _optimize(self, models: dict[str, Path], data: Any) -> None:
        from edgefleet.optimize import OptimizeConfig, optimize

        settings = OptimizeConfig(
            runs=self.cfg.optimize_runs,
            warmup_runs=3,
            throughput_batches=(1, 8),
            throughput_runs=5,
            measure_memory=False,
            interleave_rounds=3,
            interleave_runs=10,
        )
        self.n.step(
            "Optimizing for two device classes: 'gateway' keeps the fp32 baseline, 'sensor' gets the "
            "smallest variant within 1 accuracy point"
        )
        variants = ["fp32", "fp16", "dynamic-int8", "static-int8-pc-minmax"]
        small = None
        for version, model in models.items():
            out = self.dir / "optimize" / version
            rep = optimize(
                model,
                calib=self.dir / "data" / "calib.npz",
                eval=self.dir / "data" / "eval.npz",
                max_drop=1.0,
                objective="size",
                variants=variants if small is None else ["fp32", small],
                out_dir=out,
                keep_variants=True,
                overwrite=True,
                settings=settings,
            )
            if small is None:
                rows = [
                    [
                        r["variant"],
                        r["outcome"],
                        r["size_kb"],
                        r["p50_ms"],
                        r["quality"],
                        r["drop"],
                        r["short"],
                    ]
                    for r in rep.table_rows()
                ]
                self.n.table(
                    f"v{version} variants (objective: size, max drop 1 point)",
                    ["variant", "outcome", "KB", "p50 ms", "accuracy", "drop", "why"],
                    rows,
                )
                small = rep.chosen or "fp32"
                self.summary["optimize"] = {
                    "variants": [
                        {
                            "variant": r["variant"],
                            "outcome": r["outcome"],
                            "size_kb": r["size_kb"],
                            "p50_ms": r["p50_ms"],
                            "accuracy": r["quality"],
                            "drop": r["drop"],
                        }
                        for r in rep.table_rows()
                    ],
                    "chosen_for_sensor": small,
                    "report": str(out / "report.md"),
                }
            self.optimized[version] = {
                "gateway": (out / rep.variant("fp32").file, rep.variant("fp32")),
                "sensor": (out / rep.variant(small).file, rep.variant(small)),
                "profile": rep.profile.name,
            }
            if small is not None and version != GOOD:
                self.n.note(
                    f"v{version}: fp32 and {small} built and measured (accuracy {rep.variant(small).quality.score:.2f})"
                )

    def _publish(self, data: Any) -> None:
        from edgefleet.bundle import create_bundle
        from edgefleet.protocol import LatencyStats, Lineage, Metrics
        from edgefleet.registry import KeyStore, Repository, init_keys

        self.n.step("Creating keys and a TUF repository; bundling and publishing the releases")
        keys = self.dir / "keys"
        staging = init_keys(keys / ".all", root_keys=3, root_threshold=2)
        repo_dir = self.dir / "repository"
        Repository.init(repo_dir, staging)
        # Split the keys the way DESIGN.md's trust model places them: root offline, the targets key on
        # the publisher's machine, snapshot and timestamp online on the server.
        places = {
            "root": keys / "offline-root",
            "targets": keys / "publisher",
            "snapshot": self.dir / "server" / "keys",
            "timestamp": self.dir / "server" / "keys",
        }
        for info in staging.key_files():
            dst = places[info.role]
            dst.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(dst, 0o700)
            shutil.copy2(info.path, dst / info.path.name)
            os.chmod(dst / info.path.name, 0o600)
        for dst in set(places.values()):
            shutil.copy2(staging.dir / "keystore.json", dst / "keystore.json")
        shutil.rmtree(staging.dir)
        repo = Repository(repo_dir, KeyStore(keys / "publisher"))
        self.n.note(
            "root keys (3, threshold 2) in keys/offline-root, targets key in keys/publisher, "
            "snapshot+timestamp keys in server/keys"
        )

        dataset_sha = hashlib.sha256(data.x_train.tobytes() + data.y_train.tobytes()).hexdigest()
        rows = []
        parent = None
        for version, opt in self.optimized.items():
            for cls in CLASSES:
                path, res = opt[cls]
                variant = f"{cls}-{res.name}"
                lat = res.bench.latency if res.bench else None
                metrics = Metrics(
                    accuracy=res.quality.accuracy if res.quality else None,
                    latency={opt["profile"]: LatencyStats.model_validate(lat, from_attributes=True)}
                    if lat
                    else {},
                    size_bytes=res.size_bytes,
                )
                lineage = Lineage(
                    parent_version=parent,
                    dataset_sha256=dataset_sha,
                    optimization={"variant": res.name, "objective": "size", "max_drop": 1.0},
                    tags={"device_classes": cls, "trained": self.releases[version]["trained"][:200]},
                )
                archive = create_bundle(
                    path,
                    self.dir / "bundles" / f"{self.cfg.name}-{version}-{variant}.tar",
                    name=self.cfg.name,
                    version=version,
                    variant=variant,
                    inputs_raw=data.x_test[:16],
                    reference_raw=data.x_train,
                    preprocess=SCALE,
                    metrics=metrics,
                    lineage=lineage,
                )
                pub = repo.publish(archive)
                rows.append(
                    [
                        version,
                        variant,
                        f"{(res.size_bytes or 0) / 1024:.1f}",
                        f"{pub.length / 1024:.1f}",
                        f"{pub.delta_length / 1024:.1f}" if pub.delta_length else "-",
                        f"{res.quality.score:.1f}" if res.quality else "-",
                    ]
                )
                self.releases[version].setdefault("variants", {})[cls] = {
                    "variant": variant,
                    "target": pub.target_path,
                    "bytes": pub.length,
                    "sha256": pub.sha256,
                }
            parent = version
        self.n.table(
            "published targets (the server signs snapshot and timestamp when it registers them)",
            ["version", "variant", "model KB", "bundle KB", "delta KB", "accuracy"],
            rows,
        )
