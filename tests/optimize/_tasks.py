"""Small real torch models for the task-aware quality tests, exported to ONNX here (no downloads).

- ``sentence_encoder``: a two-layer self-attention encoder over token ids with an attention mask turned into
  -inf scores (as Hugging Face exports do), mean-pooled and L2-normalised: a sentence-embedding model in
  miniature.
- ``ctc_recognizer``: a conv recognizer over a 1x16x64 strip giving per-frame scores over 11 classes, class 0
  the CTC blank (random weights; the blank's bias set so it wins most frames, as in a trained CTC model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB, SEQ, WIDTH = 300, 16, 64


def sentence_encoder(path: Path, seed: int = 0) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
            self.out = nn.Linear(WIDTH, WIDTH)
            self.ff1 = nn.Linear(WIDTH, 4 * WIDTH)
            self.ff2 = nn.Linear(4 * WIDTH, WIDTH)
            self.n1 = nn.LayerNorm(WIDTH)
            self.n2 = nn.LayerNorm(WIDTH)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            scores = q @ k.transpose(1, 2) / WIDTH**0.5 + bias
            x = self.n1(x + self.out(torch.softmax(scores, dim=-1) @ v))
            return self.n2(x + self.ff2(torch.relu(self.ff1(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, WIDTH)
            self.pos = nn.Parameter(torch.randn(1, SEQ, WIDTH) * 0.1)
            self.layers = nn.ModuleList([Layer(), Layer()])

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            m = attention_mask.to(torch.float32)
            bias = torch.where(m[:, None, :] > 0, 0.0, float("-inf"))
            x = self.emb(input_ids) + self.pos
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            return torch.nn.functional.normalize(pooled, dim=-1)

    model = Encoder().eval()
    ids, mask = sentences(2, seed=seed)
    torch.onnx.export(
        model,
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def sentences(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks of ``n`` sentences of 4..SEQ tokens, padded with 0."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, SEQ), dtype=np.int64)
    mask = np.zeros((n, SEQ), dtype=np.int64)
    for i in range(n):
        length = int(rng.integers(4, SEQ + 1))
        ids[i, :length] = rng.integers(1, VOCAB, size=length)
        mask[i, :length] = 1
    return ids, mask


CLASSES, STRIP_H, STRIP_W, GLYPH_W = 11, 16, 64, 8


def strips(n: int, seed: int = 2) -> tuple[np.ndarray, list[list[int]]]:
    """``n`` 1x16x64 images of 2..5 'glyphs' (class c = a stripe pattern of row band c) and their labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, size=(n, 1, STRIP_H, STRIP_W)).astype(np.float32)
    labels = []
    for i in range(n):
        k = int(rng.integers(2, 6))
        seq = [int(c) for c in rng.integers(1, CLASSES, size=k)]
        for j, c in enumerate(seq):
            col = 4 + j * (GLYPH_W + 4)
            row = (c - 1) * STRIP_H // (CLASSES - 1)
            x[i, 0, row : row + 2, col : col + GLYPH_W] += 1.0
        labels.append(seq)
    return x, labels


def ctc_recognizer(path: Path, blank_share: float = 0.6, seed: int = 0) -> Path:
    """Random-init conv recognizer whose blank bias is set so the blank wins ``blank_share`` of the frames
    on synthetic strips (as in a trained CTC model), the other frames spread over the 10 symbols."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Recognizer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d((2, 2)),  # 8 x 32
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d((8, 1)),  # 1 x 32
                nn.Flatten(1, 2),  # [N, 64, 32]
            )
            self.head = nn.Linear(64, CLASSES)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.head(self.net(image).transpose(1, 2))  # [N, T=32, C] scores

    model = Recognizer().eval()
    x, _labels = strips(64, seed=seed + 10)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        scores = model(xt).reshape(-1, CLASSES)
        margin = scores[:, 1:].max(dim=1).values - scores[:, 0]
        model.head.bias[0] += float(torch.quantile(margin, blank_share))
    torch.onnx.export(
        model,
        (xt[:2],),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path
