"""The built-in student family and ``--student auto``'s Pareto choice (small untrained or briefly trained nets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.errors import ConfigError

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
nn = torch.nn


class Rows(nn.Module):
    """A torch TransformerEncoder on digits rows as tokens: [N, 8, 8] -> 10 logits."""

    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def test_transformer_student_keeps_fewer_blocks_copied_from_the_teacher():
    from edgefleet.optimize._students import build_student, count_params

    torch.manual_seed(0)
    teacher = Rows(4).eval()
    x = torch.rand(3, 8, 8)
    student = build_student("width0.5", teacher, x[:1])
    assert len(student.encoder.layers) == 2 and student.encoder.num_layers == 2
    assert count_params(student) < count_params(teacher) * 0.6
    # spread over the stack: the first and the last teacher blocks, weights copied, not shared
    for kept, src in zip(
        student.encoder.layers, (teacher.encoder.layers[0], teacher.encoder.layers[3]), strict=True
    ):
        assert torch.equal(kept.linear1.weight, src.linear1.weight)
        assert kept.linear1.weight is not src.linear1.weight
    assert student(x).shape == (3, 10)
    assert len(teacher.encoder.layers) == 4


def test_mlp_student_is_narrower_and_user_modules_load():
    from edgefleet.optimize._students import build_student

    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    s = build_student("width0.25", teacher, torch.rand(1, 64))
    widths = [m.out_features for m in s.modules() if isinstance(m, nn.Linear)]
    assert widths == [32, 16, 10]
    assert isinstance(build_student("torch.nn:Identity", teacher, torch.rand(1, 64)), nn.Identity)
    with pytest.raises(ConfigError, match="not a torch module"):
        build_student("collections:OrderedDict", teacher, torch.rand(1, 64))
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_student("no_such_pkg.mod:make", teacher, torch.rand(1, 64))


def test_auto_tries_three_widths_and_keeps_the_smallest_on_the_front_within_the_drop(tmp_path, digits_split):
    from edgefleet.optimize._distill import DistillConfig, distill
    from edgefleet.optimize._recipe import distill_stage

    x = (digits_split.x_train / 16).astype(np.float32)
    y = digits_split.y_train
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    distill(teacher, teacher, x, y, config=DistillConfig(alpha=1.0, epochs=5, val_fraction=0.0))
    student, res, cands = distill_stage(
        teacher, "auto", x, y, config=DistillConfig(epochs=3), out_dir=tmp_path, max_drop=100
    )
    assert [c.name for c in cands] == ["width0.25", "width0.5", "width0.75"]
    chosen = [c for c in cands if c.chosen]
    assert len(chosen) == 1 and chosen[0].on_front
    front = [c for c in cands if c.on_front]
    assert chosen[0].params == min(c.params for c in front)  # a 100-point budget: the smallest on the front
    assert sum(p.numel() for p in student.parameters()) == chosen[0].params
    saved = json.loads((tmp_path / "candidates.json").read_text())
    assert [c["name"] for c in saved["candidates"]] == ["width0.25", "width0.5", "width0.75"]
    assert (tmp_path / "learning_curve.png").is_file() and (tmp_path / "students" / "width0.75").is_dir()
