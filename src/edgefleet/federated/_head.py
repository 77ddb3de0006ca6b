"""The trainable part a lean device trains: a softmax-regression head in numpy.

The head maps frozen features (the inputs, or a model's penultimate output) to class probabilities:
``softmax(x @ W + b)``. Devices without torch train it with full-batch gradient descent; FedProx adds the
proximal term ``mu/2 * ||w - w_global||^2`` to the local loss. Only ``W`` and ``b`` leave the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.errors import InputError


@dataclass
class SoftmaxHead:
    """Weights ``W`` (features x classes) and bias ``b`` (classes) of a softmax-regression head."""

    W: np.ndarray
    b: np.ndarray

    @classmethod
    def zeros(cls, n_features: int, n_classes: int) -> SoftmaxHead:
        return cls(np.zeros((n_features, n_classes), np.float32), np.zeros(n_classes, np.float32))

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray]) -> SoftmaxHead:
        """The head from Flower's array list ``[W, b]``, checked for shape and finiteness."""
        if len(arrays) != 2:
            raise InputError(f"a softmax head has 2 arrays (W, b), got {len(arrays)}")
        W, b = (np.asarray(a, np.float32) for a in arrays)
        if W.ndim != 2 or b.shape != (W.shape[1],):
            raise InputError(f"head arrays have shapes {W.shape} and {b.shape}; want (F, C) and (C,)")
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise InputError("head weights hold NaN or infinity")
        return cls(W, b)

    def arrays(self) -> list[np.ndarray]:
        return [self.W, self.b]

    @property
    def n_features(self) -> int:
        return int(self.W.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.W.shape[1])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.W + self.b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        if len(y) == 0:
            return 0.0
        return float((self.probabilities(x).argmax(axis=1) == y).mean())

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        p = self.probabilities(x)[np.arange(len(y)), y]
        return float(-np.log(np.clip(p, 1e-12, None)).mean())

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        lr: float = 0.5,
        batch_size: int = 32,
        prox_mu: float = 0.0,
        seed: int = 0,
    ) -> SoftmaxHead:
        """A new head after ``epochs`` of mini-batch gradient descent on ``(x, y)`` from this one.

        ``prox_mu > 0`` is FedProx's proximal term towards this (the global) head.
        """
        self._check(x, y)
        W, b = self.W.astype(np.float64), self.b.astype(np.float64)
        W0, b0 = W.copy(), b.copy()
        onehot = np.eye(self.n_classes)[y]
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), batch_size):
                idx = order[start : start + batch_size]
                z = x[idx] @ W + b
                z -= z.max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
                g = (p - onehot[idx]) / len(idx)
                gW = x[idx].T @ g + prox_mu * (W - W0)
                gb = g.sum(axis=0) + prox_mu * (b - b0)
                W -= lr * gW
                b -= lr * gb
        return SoftmaxHead(W.astype(np.float32), b.astype(np.float32))

    def _check(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InputError(
                f"training features have shape {x.shape}; the head wants (N, {self.n_features})",
                hint="the device's dataset must hold the features the job's head was built for",
            )
        if len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() >= self.n_classes)):
            raise InputError(f"labels must be integers in [0, {self.n_classes}) and one per row")
