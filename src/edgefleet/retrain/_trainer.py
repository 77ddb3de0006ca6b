"""Training entry points: the contract a user's trainer follows, and the built-in head retrainer behind it.

The contract (data folder in, model file out):

- The job writes a **training folder** holding ``train.npz`` (``x``: raw inputs, ``y``: integer labels; the
  parent's training data it was given followed by the labelled samples), ``snapshot.json`` (the labelled
  snapshot's manifest: hash, label counts, sample ids), ``preprocess.json`` (the bundle's preprocessing
  contract, a list of steps) and ``parent.onnx`` (the parent release's float model).
- A **Python callable** ``module:function`` is called as ``function(data_dir: Path, out: Path)``.
- A **command** is run with ``{data}`` and ``{out}`` replaced in its arguments and ``EDGEFLEET_DATA_DIR`` /
  ``EDGEFLEET_MODEL_OUT`` in its environment; it must exit 0.
- Either must leave an ONNX model at ``out`` with the parent's inputs and outputs; anything else fails
  the job with the trainer's own message.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import ConfigError, InputError, ModelLoadError

__all__ = ["Trainer", "TrainingFolder", "write_training_folder"]

HEAD = "head"
_TAIL = 2000  # characters of a failed command's output kept in the error


@dataclass(frozen=True)
class TrainingFolder:
    """The folder a trainer reads, and the arrays in it (kept for evaluation)."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    preprocess: list[dict[str, Any]]

    @property
    def parent_model(self) -> Path:
        return self.path / "parent.onnx"


def write_training_folder(
    path: Path,
    *,
    x: np.ndarray,
    y: np.ndarray,
    snapshot_manifest: dict[str, Any],
    preprocess: list[dict[str, Any]],
    parent_model: Path,
) -> TrainingFolder:
    """Lay out the training folder of the contract at ``path`` (created)."""
    import shutil

    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "train.npz", x=x, y=y)
    (path / "snapshot.json").write_text(json.dumps(snapshot_manifest, indent=1), encoding="utf-8")
    (path / "preprocess.json").write_text(json.dumps(preprocess), encoding="utf-8")
    shutil.copyfile(parent_model, path / "parent.onnx")
    return TrainingFolder(path, x, y, preprocess)


class Trainer:
    """One way to train: ``head`` (built in), ``module:function``, or a command line.

    Args:
        spec: ``"head"``, ``"module:function"``, or None with ``command`` given.
        command: a command line (``{data}``/``{out}`` placeholders) run instead of a callable.
        timeout_s: how long a command may run.

    Raises:
        ConfigError: both or neither of a spec and a command, or a spec that is neither form.
    """

    def __init__(
        self, spec: str | None = HEAD, *, command: str | None = None, timeout_s: float = 3600.0
    ) -> None:
        if command and spec not in (None, HEAD):
            raise ConfigError("give a trainer callable or a command, not both", hint="drop one of them")
        if command:
            self.kind, self.spec = "command", command
        elif spec in (None, HEAD):
            self.kind, self.spec = HEAD, HEAD
        elif isinstance(spec, str) and ":" in spec and all(spec.split(":", 1)):
            self.kind, self.spec = "callable", spec
        else:
            raise ConfigError(
                f"trainer {spec!r} is neither 'head' nor 'module:function'",
                hint="e.g. --trainer mypackage.train:fit, or --trainer-command 'python train.py {data} {out}'",
            )
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return self.spec if self.kind != "command" else f"command {self.spec}"[:200]

    def train(
        self, folder: TrainingFolder, out: Path, feeds: Callable[[np.ndarray], dict[str, np.ndarray]]
    ) -> dict[str, Any]:
        """Train into ``out``; ``feeds`` turns raw rows into model inputs (the built-in retrainer needs them).

        Returns:
            What the trainer reported (the head retrainer's figures; ``{}`` for user entry points).

        Raises:
            ModelLoadError: the trainer failed or left no model at ``out`` (its own message included).
        """
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == HEAD:
            from edgefleet.retrain._head import retrain_head

            return retrain_head(folder.parent_model, out, feeds(folder.x), folder.y)
        if self.kind == "callable":
            fn = _load_callable(self.spec)
            try:
                result = fn(folder.path, out)
            except Exception as e:  # noqa: BLE001 - a user's trainer may raise anything; the job says which
                raise ModelLoadError(
                    f"trainer {self.spec} raised {type(e).__name__}: {e}",
                    hint="run it by hand on the training folder",
                ) from e
            info = result if isinstance(result, dict) else {}
        else:
            info = self._run_command(folder, out)
        if not out.is_file() or out.stat().st_size == 0:
            raise ModelLoadError(
                f"trainer {self.describe()} left no model at {out}",
                hint="the entry point must write an ONNX file to the path it is given",
            )
        return info

    def _run_command(self, folder: TrainingFolder, out: Path) -> dict[str, Any]:
        argv = [
            a.replace("{data}", str(folder.path)).replace("{out}", str(out)) for a in shlex.split(self.spec)
        ]
        env = {**os.environ, "EDGEFLEET_DATA_DIR": str(folder.path), "EDGEFLEET_MODEL_OUT": str(out)}
        try:
            r = subprocess.run(argv, env=env, capture_output=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelLoadError(f"trainer command {argv[0]} failed: {e}", hint="check the command") from None
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).decode(errors="replace")[-_TAIL:]
            raise ModelLoadError(
                f"trainer command {argv[0]} exited {r.returncode}: {tail.strip()}",
                hint=f"run it by hand: {shlex.join(argv)}",
            )
        return {}


def _load_callable(spec: str) -> Callable[..., Any]:
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(
            f"cannot import trainer module {mod_name}: {e}", hint="is it on PYTHONPATH?"
        ) from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise InputError(f"{mod_name} has no callable {fn_name}", hint="name a function: module:function")
    return fn
