"""The trainable part fine-tuned with torch, on devices that have it and when the job asks (``trainer: torch``).

The same softmax head and loss as the numpy trainer (``_head.py``: mean cross-entropy, FedProx's proximal
term ``mu/2 * ||w - w_global||^2``, mini-batches in the same seeded order), trained with torch's autograd and
``torch.optim.SGD`` in float64: a device with torch gives the update a lean device would, so one job can mix
both. The ClientApp falls back to the numpy trainer where torch cannot be imported and says which one ran
(the ``trainer-torch`` metric; the round report counts them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.federated._head import SoftmaxHead


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def train_torch(
    head: SoftmaxHead,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float = 0.5,
    batch_size: int = 32,
    prox_mu: float = 0.0,
    seed: int = 0,
) -> SoftmaxHead:
    """A new head after ``epochs`` of mini-batch SGD on ``(x, y)`` from ``head``, computed by torch."""
    import torch

    head._check(x, y)  # noqa: SLF001 (the same input checks as the numpy trainer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 32 rows: more threads only contend (16 s instead of 0.1 s here)
    try:
        return _sgd(
            torch, head, x, y, epochs=epochs, lr=lr, batch_size=batch_size, prox_mu=prox_mu, seed=seed
        )
    finally:
        torch.set_num_threads(threads)


def _sgd(
    torch: Any,
    head: SoftmaxHead,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    prox_mu: float,
    seed: int,
) -> SoftmaxHead:
    with torch.random.fork_rng(devices=[]):
        W = torch.tensor(head.W, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(head.b, dtype=torch.float64, requires_grad=True)
        W0, b0 = W.detach().clone(), b.detach().clone()
        xt = torch.from_numpy(np.asarray(x, np.float64))
        yt = torch.from_numpy(np.asarray(y, np.int64))
        opt = torch.optim.SGD([W, b], lr=lr)
        rng = np.random.default_rng(seed)  # the numpy trainer's batch order
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(y)))
            for start in range(0, len(y), batch_size):
                idx = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(xt[idx] @ W + b, yt[idx])
                if prox_mu > 0:
                    loss = loss + prox_mu / 2 * ((W - W0).pow(2).sum() + (b - b0).pow(2).sum())
                opt.zero_grad()
                loss.backward()
                opt.step()
    return SoftmaxHead(W.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32))
