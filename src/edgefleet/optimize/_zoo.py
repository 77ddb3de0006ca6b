"""Small real torch models trained on scikit-learn's digits, for tests and the optimizer benchmark.

Needs torch (the ``torch`` extra). Nothing is downloaded: digits ships with scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["train_digits_cnn", "train_digits_encoder", "synth_speech", "vad_frames", "vad_dataset"]


def _train(
    model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int, batch: int = 64
) -> Any:
    import torch

    torch.manual_seed(seed)
    # Tiny batches: one thread is several times faster than fighting over shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(model, x, y, epochs, lr, seed, batch)
    finally:
        torch.set_num_threads(threads)


def _fit(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int, batch: int) -> Any:
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model.eval()


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train_digits_cnn(
    data: Any, *, channels: tuple[int, int] = (16, 32), hidden: int = 64, epochs: int = 8, seed: int = 0
) -> tuple[Any, float]:
    """A small CNN on 8x8 digits (input [N, 1, 8, 8] in [0, 1]); returns (eval-mode module, test accuracy)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    c1, c2 = channels
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 16, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    xtr = (data.x_train / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    xte = (data.x_test / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    _train(model, xtr, data.y_train, epochs, 2e-3, seed)
    return model, _accuracy(model, xte, data.y_test)


def train_digits_encoder(
    data: Any,
    *,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 2,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[Any, float]:
    """A transformer-style encoder on digits: each image is 16 tokens (2x2 patches), a few pre-norm
    attention blocks, mean pooling, a linear head. Input [N, 8, 8] in [0, 1]. MatMul-heavy by design."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int, h: int) -> None:
            super().__init__()
            self.h = h
            self.n1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.n2 = nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            q, k, v = self.qkv(self.n1(x)).chunk(3, dim=-1)
            q = q.reshape(b, t, self.h, d // self.h).transpose(1, 2)
            k = k.reshape(b, t, self.h, d // self.h).transpose(1, 2)
            v = v.reshape(b, t, self.h, d // self.h).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.ff(self.n2(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, d_model)
            self.pos = nn.Parameter(torch.zeros(16, d_model))
            self.blocks = nn.Sequential(*[Block(d_model, heads) for _ in range(layers)])
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
            h = self.blocks(self.embed(patches) + self.pos)
            return self.head(self.norm(h).mean(dim=1))

    torch.manual_seed(seed)
    model = Encoder()
    xtr = (data.x_train / 16.0).reshape(-1, 8, 8).astype(np.float32)
    xte = (data.x_test / 16.0).reshape(-1, 8, 8).astype(np.float32)
    _train(model, xtr, data.y_train, epochs, lr, seed)
    return model, _accuracy(model, xte, data.y_test)


_VOWELS = {
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}


def synth_speech(seconds: float = 12.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Speech-like audio without a recording: a glottal pulse train through vowel formant filters,
    in syllables with fricative onsets, grouped into utterances separated by pauses (float32 mono)."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr))

    def formant(x: np.ndarray, f: float, bw: float) -> np.ndarray:
        r = np.exp(-np.pi * bw / sr)
        th = 2 * np.pi * f / sr
        return lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], x)

    t = 0.3
    while t < seconds - 1.5:
        f0 = rng.uniform(95, 230)
        for _ in range(int(rng.integers(3, 9))):
            dur = rng.uniform(0.12, 0.3)
            n, s = int(dur * sr), int(t * sr)
            if s + n >= out.size:
                break
            if rng.random() < 0.5:  # fricative onset
                m = int(0.05 * sr)
                out[s : s + m] += np.diff(rng.standard_normal(m), prepend=0) * 0.15
                s += m
            tt = np.arange(n) / sr
            pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 6) * tt))
            phase = 2 * np.pi * np.cumsum(pitch) / sr
            src = (np.mod(phase, 2 * np.pi) < 0.6).astype(float) - 0.1
            formants = _VOWELS[str(rng.choice(list(_VOWELS)))]
            y = sum(formant(src, f, 80 + 40 * i) / (i + 1) for i, f in enumerate(formants))
            y = y * np.sin(np.pi * np.arange(n) / n) ** 0.6
            out[s : s + n] += y / (np.abs(y).max() + 1e-9) * rng.uniform(0.2, 0.6)
            t += dur + rng.uniform(0.02, 0.1)
        t += rng.uniform(0.4, 1.2)
    out += 0.003 * rng.standard_normal(out.size)
    return out.astype(np.float32)


def vad_frames(audio: np.ndarray, chunk: int = 512, context: int = 64) -> np.ndarray:
    """silero-vad v5 input frames: each 512-sample chunk prefixed by the previous chunk's last 64."""
    chunks = audio[: len(audio) // chunk * chunk].reshape(-1, chunk)
    prev = np.zeros(context, np.float32)
    out = []
    for c in chunks:
        out.append(np.concatenate([prev, c]))
        prev = c[-context:]
    return np.stack(out).astype(np.float32)


def vad_dataset(
    model_path: Any, seconds: float = 12.0, seed: int = 0, sr: int = 16000
) -> dict[str, np.ndarray]:
    """Feeds for a silero-vad ONNX model over synthetic speech, with the real recurrent state: the
    model runs through the audio once and each sample records the state it was given."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    frames = vad_frames(synth_speech(seconds, sr, seed))
    state = np.zeros((2, 1, 128), np.float32)
    xs, states = [], []
    for f in frames:
        feed = {"input": f[None], "state": state}
        if "sr" in names:
            feed["sr"] = np.array(sr, np.int64)
        xs.append(f[None])
        states.append(state)
        _, state = sess.run(None, feed)
    out = {"input": np.stack(xs), "state": np.stack(states)}
    if "sr" in names:
        out["sr"] = np.full(len(xs), sr, np.int64)
    return out
