"""Efficient students for distillation: a small built-in family sized from the teacher, or a user module.

The family follows the teacher's kind:

* convolutional teacher -> MobileNetV2-style student: a 3x3 stem, inverted residual blocks (1x1 expand,
  3x3 depthwise, 1x1 linear project), global average pooling and a linear head, at a width multiplier of
  the teacher's channel counts;
* transformer teacher (a stack of identical blocks holding attention) -> the same network with fewer
  blocks, initialised from every other teacher block (the DistilBERT recipe); the width picks how many;
* anything else with Linear layers -> a narrower MLP (every hidden width times the multiplier).

``--student module:path`` (``pkg.mod:factory``) imports a factory and calls it with no arguments, and a
``.pt`` path loads a whole pickled module (``torch.save(model)``) like the teacher.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError, ModelLoadError

__all__ = ["build_student", "load_torch_module", "parse_student", "count_params", "AUTO_WIDTHS"]

AUTO_WIDTHS = (0.25, 0.5, 0.75)
_WIDTH = re.compile(r"^width(\d+(?:\.\d+)?)$")


def load_torch_module(path: Path, what: str = "teacher") -> Any:
    """A whole module saved with ``torch.save(model)``. This unpickles the file: load only files you trust."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{what} {p} does not exist", hint="give a file written by torch.save(model)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelLoadError(
            f"{what} {p} cannot be loaded: {type(e).__name__}: {str(e).strip()[:200]}",
            hint="save the whole module with torch.save(model, path); a state_dict alone has no architecture",
        ) from e
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(
            f"{what} {p} holds a {type(obj).__name__}, not a torch module",
            hint="save the whole module with torch.save(model, path), not its state_dict",
        )
    return obj.eval()


def parse_student(spec: str) -> tuple[str, Any]:
    """``auto`` | ``widthX`` (0 < X < 1) | ``pkg.mod:factory`` | ``path.pt`` -> (kind, value)."""
    s = spec.strip()
    if s == "auto":
        return "auto", AUTO_WIDTHS
    m = _WIDTH.match(s)
    if m:
        w = float(m.group(1))
        if not 0 < w < 1:
            raise ConfigError(f"student width {w:g} must be between 0 and 1", hint="e.g. --student width0.5")
        return "width", w
    if s.endswith((".pt", ".pth")):
        return "file", Path(s)
    if re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", s):
        return "module", s
    raise ConfigError(
        f"student {spec!r} is not understood",
        hint="use auto, widthX (e.g. width0.5), pkg.module:factory or a .pt file saved with torch.save(model)",
    )


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def build_student(spec: str, teacher: Any, example: Any, width: float | None = None) -> Any:
    """A student for ``teacher`` from a spec (see ``parse_student``); ``width`` overrides ``widthX``."""
    kind, value = parse_student(spec)
    if kind == "file":
        return load_torch_module(value, "student")
    if kind == "module":
        return _from_factory(value)
    w = float(width if width is not None else value if kind == "width" else 0.5)
    return family_student(teacher, example, w)


def _from_factory(ref: str) -> Any:
    import torch

    mod_name, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"student {ref!r} cannot be imported: {e}", hint="give pkg.module:factory importable here"
        ) from e
    obj = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    if not isinstance(obj, torch.nn.Module):
        raise ConfigError(
            f"student {ref!r} gave a {type(obj).__name__}, not a torch module",
            hint="the factory must return an nn.Module",
        )
    return obj


def family_student(teacher: Any, example: Any, width: float) -> Any:
    """The built-in student for ``teacher`` at ``width`` (see the module docstring)."""
    import torch
    from torch import nn

    with torch.no_grad():
        n_out = int(teacher.eval()(example).shape[-1])
    convs = [m for m in teacher.modules() if isinstance(m, nn.Conv2d)]
    blocks = _block_stack(teacher)
    if convs and example.dim() == 4:
        widest = max(c.out_channels for c in convs)
        from edgefleet.optimize._student_nets import MobileStudent

        return MobileStudent(example.shape[1], n_out, max(4, int(round(widest * width))))
    if blocks is not None:
        return _fewer_blocks(teacher, blocks, width)
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if linears:
        hidden = [max(2, int(round(lin.out_features * width))) for lin in linears[:-1]]
        return _mlp(int(example[0].numel()), hidden or [max(2, int(round(64 * width)))], n_out)
    raise ConfigError(
        f"no built-in student fits a {type(teacher).__name__} (no Conv2d, attention blocks or Linear layers)",
        hint="give your own student: --student pkg.module:factory",
    )


def _mlp(n_in: int, hidden: list[int], n_out: int) -> Any:
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


def _block_stack(model: Any) -> tuple[Any, str] | None:
    """The first ModuleList/Sequential of >= 2 same-type children that hold attention: (container, name)."""
    from torch import nn

    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) < 2:
            continue
        kinds = {type(c) for c in mod}
        if len(kinds) != 1:
            continue
        first = mod[0]
        attention = isinstance(first, (nn.TransformerEncoderLayer, nn.MultiheadAttention)) or any(
            isinstance(m, nn.MultiheadAttention) or "att" in n.lower() or n.endswith("qkv")
            for n, m in first.named_modules()
        )
        if attention:
            return mod, name
    return None


def _fewer_blocks(teacher: Any, found: tuple[Any, str], width: float) -> Any:
    """A copy of ``teacher`` keeping ceil(width x L) of its L blocks, spread evenly (first and last kept)."""
    from torch import nn

    stack, name = found
    n = len(stack)
    keep_n = max(1, min(n - 1, math.ceil(width * n)))
    idx = sorted({round(i * (n - 1) / max(keep_n - 1, 1)) for i in range(keep_n)}) if keep_n > 1 else [0]
    student = copy.deepcopy(teacher)
    kept = [copy.deepcopy(stack[i]) for i in idx]
    new = nn.Sequential(*kept) if isinstance(stack, nn.Sequential) else nn.ModuleList(kept)
    parent = student
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)
    if isinstance(getattr(parent, "num_layers", None), int):  # nn.TransformerEncoder keeps a layer count
        parent.num_layers = len(kept)
    return student
