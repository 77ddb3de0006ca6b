"""Knowledge distillation of a torch teacher into a smaller student.

The loss per batch is ``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` on
temperature-softened outputs (Hinton et al.); rows without a label (label-free distillation from device
data) get the KL term alone. Optional feature matching adds ``beta * MSE(proj(student_feat), teacher_feat)``
on the inputs of both networks' last Linear layer (the penultimate features), through a learned projection.

Training is seeded, single-threaded (tiny batches run faster on one core than on contended ones), keeps
the best state on a validation split (accuracy when labelled, teacher agreement otherwise), stops early
after ``patience`` epochs without improvement, and can write checkpoints, a JSON-lines log and a PNG curve.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.errors import ConfigError, InputError

__all__ = ["DistillConfig", "DistillResult", "distill", "read_training_data", "accuracy"]

EpochCallback = Callable[[int, int, dict[str, float]], None]
_MAX_DATA_BYTES = 512 << 20


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the label loss (1: labels only)")
    temperature: float = Field(4.0, gt=0.0, le=100.0, description="softmax temperature of the KL term")
    epochs: int = Field(30, ge=1, le=10_000)
    lr: float = Field(1e-2, gt=0.0, le=10.0)
    batch: int = Field(64, ge=1, le=65_536)
    patience: int = Field(6, ge=1, le=10_000, description="epochs without a better validation score")
    val_fraction: float = Field(0.2, ge=0.0, lt=0.9)
    feature_weight: float = Field(0.0, ge=0.0, description="weight of penultimate-feature matching")
    label_free: bool = Field(False, description="ignore labels: learn from the teacher's outputs alone")
    seed: int = 0


@dataclass
class DistillResult:
    student: Any
    log: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = 0.0
    score_name: str = "accuracy"
    teacher_score: float = 0.0
    stopped_early: bool = False
    files: list[str] = field(default_factory=list)


def read_training_data(path: Path, what: str = "data") -> tuple[np.ndarray, np.ndarray | None]:
    """An .npz with one float input array (``input`` or the only non-label array) and optional ``labels``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} does not exist", hint="give an .npz with an 'input' array")
    if p.stat().st_size > _MAX_DATA_BYTES:
        raise InputError(
            f"{what} {p} is {p.stat().st_size >> 20} MiB, over the {_MAX_DATA_BYTES >> 20} MiB limit",
            hint="train on a sample of the data",
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            inflated = sum(i.file_size for i in z.zip.infolist()) if hasattr(z, "zip") else 0
            if inflated > _MAX_DATA_BYTES:
                raise InputError(
                    f"{what} {p} inflates to {inflated >> 20} MiB, over the {_MAX_DATA_BYTES >> 20} MiB limit",
                    hint="train on a sample of the data",
                )
            arrays = {k: z[k] for k in z.files}
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated zip, not an npz, pickled objects
        raise InputError(
            f"{what} {p} is not a readable .npz: {type(e).__name__}: {str(e)[:160]}",
            hint="write it with numpy.savez(path, input=x, labels=y)",
        ) from e
    labels = arrays.pop("labels", None)
    if "input" in arrays:
        x = arrays["input"]
    elif len(arrays) == 1:
        x = next(iter(arrays.values()))
    else:
        raise InputError(
            f"{what} {p} holds arrays {sorted(arrays)[:6]}; which one is the input?",
            hint="name the input array 'input'",
        )
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise InputError(
            f"{what} {p}: input must be a non-empty numeric array [samples, ...], got {x.dtype} {x.shape}",
            hint="the first axis is the sample axis",
        )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{what} {p}: input holds NaN or Inf", hint="clean the data")
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.shape != (len(x),) or (labels < 0).any():
            raise InputError(
                f"{what} {p}: labels must be {len(x)} non-negative integers, got {labels.dtype} {labels.shape}",
                hint="one class index per sample",
            )
        labels = labels.astype(np.int64)
    return x, labels


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    return float((_logits(model, x, batch).argmax(1) == y).mean())


def _logits(model: Any, x: np.ndarray, batch: int = 512) -> np.ndarray:
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(x[i : i + batch])).float().numpy())
    return np.concatenate(outs)


def _penultimate(model: Any) -> Any:
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError(
            "feature matching needs a Linear head on both networks", hint="drop --feature-weight"
        )
    return last[-1]


def distill(
    teacher: Any,
    student: Any,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    unlabeled: np.ndarray | None = None,
    config: DistillConfig | None = None,
    out_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
) -> DistillResult:
    """Train ``student`` to match ``teacher`` on ``x`` (labels ``y`` optional) plus ``unlabeled`` inputs.

    ``config.alpha = 1`` with no unlabeled data is plain supervised training (the baseline distillation is
    compared against). Returns the best student (by the validation score) and the per-epoch log.
    """
    import torch

    cfg = config or DistillConfig()
    labels = None if cfg.label_free else y
    if labels is None and cfg.alpha == 1.0:
        raise ConfigError("alpha 1 trains on labels alone, but there are none", hint="lower --alpha")
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(x))
    n_val = int(round(len(x) * cfg.val_fraction))
    val_idx, tr_idx = idx[:n_val], idx[n_val:]
    x_tr = x[tr_idx]
    y_tr = labels[tr_idx] if labels is not None else None
    if unlabeled is not None and len(unlabeled):
        x_tr = np.concatenate([x_tr, unlabeled.astype(np.float32)])
        if y_tr is not None:
            y_tr = np.concatenate([y_tr, np.full(len(unlabeled), -1, np.int64)])
    if len(x_tr) == 0:
        raise InputError("no training samples left after the validation split", hint="give more data")
    x_val = x[val_idx] if n_val else x_tr
    y_val = (labels[val_idx] if n_val else y_tr) if labels is not None else None

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        teacher = teacher.eval()
        t_logits = torch.from_numpy(_logits(teacher, x_tr))
        t_val = _logits(teacher, x_val)
        if y_val is not None and (y_val >= 0).all():
            score_name, target = "accuracy", y_val
        else:
            score_name, target = "agreement", t_val.argmax(1)
        res = DistillResult(student=student, score_name=score_name)
        res.teacher_score = float((t_val.argmax(1) == target).mean())
        _train(teacher, student, x_tr, y_tr, t_logits, x_val, target, cfg, res, out_dir, on_epoch)
    finally:
        torch.set_num_threads(threads)
    if out_dir is not None:
        res.files += _write_log(res, Path(out_dir))
    return res


def _train(
    teacher: Any,
    student: Any,
    x_tr: np.ndarray,
    y_tr: np.ndarray | None,
    t_logits: Any,
    x_val: np.ndarray,
    target: np.ndarray,
    cfg: DistillConfig,
    res: DistillResult,
    out_dir: Path | None,
    on_epoch: EpochCallback | None,
) -> None:
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name

    params = list(student.parameters())
    feats: dict[str, Any] = {}
    proj = None
    hooks = []
    if cfg.feature_weight > 0:
        t_head, s_head = _penultimate(teacher), _penultimate(student)
        hooks.append(t_head.register_forward_hook(lambda m, i, o: feats.__setitem__("t", i[0])))
        hooks.append(s_head.register_forward_hook(lambda m, i, o: feats.__setitem__("s", i[0])))
        proj = torch.nn.Linear(s_head.in_features, t_head.in_features)
        params += list(proj.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    xt = torch.from_numpy(x_tr)
    yt = torch.from_numpy(y_tr) if y_tr is not None else None
    g = torch.Generator().manual_seed(cfg.seed)
    temp = cfg.temperature
    best_state = copy.deepcopy(student.state_dict())
    res.best_score, res.best_epoch, since = -1.0, 0, 0
    ckpt = Path(out_dir) / "checkpoints" if out_dir is not None else None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            student.train()
            perm = torch.randperm(len(xt), generator=g)
            total, n = 0.0, 0
            for i in range(0, len(xt), cfg.batch):
                b = perm[i : i + cfg.batch]
                opt.zero_grad()
                s_out = student(xt[b])
                kl = F.kl_div(
                    F.log_softmax(s_out / temp, dim=1),
                    F.softmax(t_logits[b] / temp, dim=1),
                    reduction="batchmean",
                ) * (temp * temp)
                loss = kl
                if yt is not None and cfg.alpha > 0:
                    yb = yt[b]
                    has = yb >= 0
                    ce = F.cross_entropy(s_out[has], yb[has]) if has.any() else s_out.sum() * 0
                    w = has.float().mean()  # label-free rows keep the full KL weight
                    loss = w * (cfg.alpha * ce + (1 - cfg.alpha) * kl) + (1 - w) * kl
                if proj is not None:
                    with torch.no_grad():
                        teacher(xt[b])
                    loss = loss + cfg.feature_weight * F.mse_loss(proj(feats["s"]), feats["t"])
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
                n += len(b)
            sched.step()
            score = float((_logits(student, x_val).argmax(1) == target).mean())
            rec = {
                "epoch": epoch,
                "train_loss": total / max(n, 1),
                f"val_{res.score_name}": score,
                "lr": float(opt.param_groups[0]["lr"]),
                "seconds": time.perf_counter() - t0,
            }
            res.log.append(rec)
            if score > res.best_score:
                res.best_score, res.best_epoch, since = score, epoch, 0
                best_state = copy.deepcopy(student.state_dict())
                if ckpt is not None:
                    torch.save(best_state, ckpt / "best.pt")
            else:
                since += 1
            if ckpt is not None:
                torch.save(student.state_dict(), ckpt / "last.pt")
            if on_epoch is not None:
                on_epoch(epoch, cfg.epochs, rec)
            if since >= cfg.patience:
                res.stopped_early = True
                break
    finally:
        for h in hooks:
            h.remove()
    student.load_state_dict(best_state)
    student.eval()


def _write_log(res: DistillResult, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "training_log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in res.log))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [r["epoch"] for r in res.log]
    ax.plot(ep, [r["train_loss"] for r in res.log], label="train loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax2 = ax.twinx()
    ax2.plot(
        ep, [r[f"val_{res.score_name}"] for r in res.log], label=f"val {res.score_name}", color="tab:green"
    )
    ax2.axhline(res.teacher_score, ls="--", color="grey", label=f"teacher {res.score_name}")
    ax2.set_ylabel(f"validation {res.score_name}")
    ax.set_title(f"distillation: best epoch {res.best_epoch}, val {res.score_name} {res.best_score:.3f}")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png = out / "learning_curve.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return [str(log), str(png)]
