"""Small real models and data for the demo, tests and benchmarks (no downloads: scikit-learn's digits).

Needs the ``optimize`` extra (scikit-learn, skl2onnx).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DigitsSplit", "digits", "train_digits_mlp", "write_tour_files"]


@dataclass(frozen=True)
class DigitsSplit:
    """8x8 digit images as float32 in [0, 16], flattened to 64 features, with integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits(seed: int = 0, test_size: float = 0.3) -> DigitsSplit:
    """scikit-learn's bundled digits data set, split reproducibly."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data.astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return DigitsSplit(xtr, ytr, xte, yte)


def train_digits_mlp(
    path: str | Path,
    *,
    hidden: tuple[int, ...] = (64,),
    seed: int = 0,
    max_iter: int = 300,
    data: DigitsSplit | None = None,
) -> float:
    """Train an MLP classifier on digits, export it to ONNX at ``path`` and return its test accuracy.

    The ONNX model has one input ``input`` (float32, [batch, 64]) and one output ``probabilities``
    (float32, [batch, 10]); ZipMap is disabled so outputs are plain tensors.
    """
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    data = data or digits(seed=0)
    clf = MLPClassifier(hidden_layer_sizes=hidden, random_state=seed, max_iter=max_iter)
    clf.fit(data.x_train / 16.0, data.y_train)
    # Scaling (x / 16) lives in the preprocessing contract, not in the graph.
    onx = to_onnx(
        clf,
        data.x_train[:1] / 16.0,
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    graph = onx.graph
    old_in = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["input" if i == old_in else i for i in node.input]
    graph.input[0].name = "input"
    prob_name = graph.output[-1].name
    for node in graph.node:
        node.output[:] = ["probabilities" if o == prob_name else o for o in node.output]
    graph.output[-1].name = "probabilities"
    Path(path).write_bytes(onx.SerializeToString())
    return float(clf.score(data.x_test / 16.0, data.y_test))


TOUR_PROFILE = """\
# A device profile for `edgefleet optimize --profile` (see `edgefleet optimize --help`).
name: edge-x86
cores: 2
latency_budget_ms: 5
ram_budget_mb: 256
"""

TOUR_CONTRACT = """\
# The preprocessing contract: raw 8x8 pixels in [0, 16] -> the model's [0, 1] inputs.
- op: scale
  factor: 0.0625
"""


def write_tour_files(out: str | Path) -> list[Path]:
    """Write what README's step-by-step tour starts from, trained here from scikit-learn's digits.

    ``model.onnx`` (input ``input`` [batch, 64] in [0, 1], output ``probabilities``), ``calib.npz`` and
    ``eval.npz`` (model inputs under the input's name; ``eval.npz`` also holds ``labels``), ``x.npy`` (raw
    pixels in [0, 16]: the golden inputs a bundle's contract turns into model inputs), ``pre.yaml`` (that
    contract) and ``profile.yaml`` (a device profile).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = digits(seed=0)
    train_digits_mlp(out / "model.onnx", data=data)
    np.savez(out / "calib.npz", input=(data.x_train[:64] / 16.0).astype(np.float32))
    np.savez(out / "eval.npz", input=(data.x_test / 16.0).astype(np.float32), labels=data.y_test)
    np.save(out / "x.npy", data.x_test[:32])
    (out / "pre.yaml").write_text(TOUR_CONTRACT)
    (out / "profile.yaml").write_text(TOUR_PROFILE)
    return [out / n for n in ("model.onnx", "calib.npz", "eval.npz", "x.npy", "pre.yaml", "profile.yaml")]


if __name__ == "__main__":  # python -m edgefleet.examples DIR
    import sys

    written = write_tour_files(sys.argv[1] if len(sys.argv) > 1 else ".")
    print("wrote " + ", ".join(str(p) for p in written))
