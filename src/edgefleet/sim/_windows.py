"""Telemetry windows for simulated devices, made the way a device makes them.

Each window comes from the telemetry library's own :class:`~edgefleet.telemetry.Aggregator` wrapped
around a real ONNX Runtime session of the release's model, fed raw digits rows scaled by the bundle's
contract (x/16) and compared against the bundle's ``reference.json``; a drifting device's rows are shifted
first (:func:`edgefleet.telemetry._shifts.inject_shift`), as a dirty camera or a new site would. The
window's clock is the device's (a skewed device stamps skewed times).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WindowMaker"]

ROWS_PER_REQUEST = 5


class _Predictor:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.metadata = None

    def predict(self, batch: dict[str, np.ndarray], **_: Any) -> dict[str, np.ndarray]:
        out = self.session.run(None, {self.input: np.asarray(batch["input"], dtype=np.float32)})
        return dict(zip(self.outputs, out, strict=True))

    def close(self) -> None:
        pass


class _Clock:
    def __init__(self, t0: float) -> None:
        self.t0, self.t = t0, 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t0 + self.t


class WindowMaker:
    """Windows of ``rows`` real inferences per (version, device class).

    Args:
        repo_dir: the TUF repository holding ``digits/<version>/<class>.tar`` (their ``reference.json``).
        models: version -> the ONNX model file the release was bundled from.
        x: raw input rows (digits pixels 0..16) the traffic is drawn from.
    """

    def __init__(self, repo_dir: Path, models: dict[str, Path], x: np.ndarray, *, rows: int = 120) -> None:
        self.repo_dir, self.models, self.x, self.rows = repo_dir, models, x, rows
        self._predictors: dict[str, _Predictor] = {}
        self._refs: dict[tuple[str, str], dict[str, Any]] = {}
        self.made = 0
        self.shifted = 0

    def _reference(self, version: str, device_class: str) -> dict[str, Any]:
        key = (version, device_class)
        if key not in self._refs:
            from edgefleet.bundle import Bundle
            from edgefleet.registry import Repository

            with Bundle.open(
                Repository(self.repo_dir).target_file(f"digits/{version}/{device_class}.tar")
            ) as b:
                self._refs[key] = b.reference
        return self._refs[key]

    def window(
        self,
        version: str,
        device_class: str,
        *,
        end: float,
        length_s: float,
        seed: int,
        shift: tuple[str, float] | None = None,
    ) -> dict[str, Any]:
        """One closed window ``[end - length_s, end]`` (device clock) as the device uploads it."""
        from edgefleet.telemetry import Aggregator, AggregatorConfig
        from edgefleet.telemetry._shifts import inject_shift

        if version not in self._predictors:
            self._predictors[version] = _Predictor(self.models[version])
        rng = np.random.default_rng(seed)
        clk = _Clock(end - length_s)
        out: list = []
        agg = Aggregator(
            self._predictors[version],
            reference=self._reference(version, device_class),
            config=AggregatorConfig(
                window_s=length_s, feature_window_s=length_s, resources=False, drift_on_close=False
            ),
            tags={"model": "digits", "version": version},
            sink=out.append,
            monotonic=clk.mono,
            wall=clk.wall,
        )
        requests = max(1, self.rows // ROWS_PER_REQUEST)
        for i in range(requests):
            raw = self.x[rng.integers(0, len(self.x), ROWS_PER_REQUEST)] / 16.0
            if shift is not None:
                raw = inject_shift(raw, shift[0], shift[1], rng=rng)
            agg.predict({"input": raw.astype(np.float32)})
            clk.t = (i + 1) * length_s / (requests + 1)
        clk.t = length_s - 1e-3
        agg.flush_window()
        self.made += 1
        self.shifted += shift is not None
        return out[0].to_dict()


def seed_of(*parts: Any) -> int:
    """A stable seed from the window's identity (device, upload number)."""
    return random.Random("/".join(map(str, parts))).randrange(2**32)
