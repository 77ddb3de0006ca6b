"""Quality of a variant: accuracy with labels, else top-1 agreement (classifiers) or cosine
similarity / max abs error (regressors, embeddings) against the fp32 baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.errors import InputError
from edgefleet.optimize._data import Dataset, iter_batches
from edgefleet.optimize._runner import Runner, TensorInfo

__all__ = ["Task", "Quality", "infer_task", "run_dataset", "measure_quality", "check_labels"]


@dataclass(frozen=True)
class Task:
    """``classification`` (argmax over the last axis of ``output``) or ``regression``."""

    kind: str
    output: str
    num_classes: int | None = None
    metric: str = "cosine"  # accuracy | agreement | cosine


@dataclass
class Quality:
    score: float  # points: accuracy %, agreement %, or cosine x 100
    metric: str
    accuracy: float | None = None
    agreement: float | None = None
    cosine: float | None = None
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    nonfinite: int = 0


def run_dataset(runner: Runner, ds: Dataset, batch: int) -> dict[str, list[np.ndarray]]:
    """Run every sample (stacked where possible); per output, the list of per-call results."""
    out: dict[str, list[np.ndarray]] = {o.name: [] for o in runner.outputs}
    for feed, _n in iter_batches(ds, runner.inputs, batch):
        res = runner.run(feed)
        for k, v in res.items():
            out[k].append(np.asarray(v))
    return out


def _rows(chunks: list[np.ndarray], c: int) -> np.ndarray:
    return np.concatenate([np.asarray(x).reshape(-1, c) for x in chunks], axis=0)


def infer_task(
    outputs: list[TensorInfo], ref: dict[str, list[np.ndarray]], has_labels: bool, output: str | None = None
) -> Task:
    """Pick the output that carries the answer and decide how to score it."""
    cands = [o for o in outputs if o.dtype.kind == "f"]
    if output is not None:
        named = [o for o in outputs if o.name == output]
        if not named:
            raise InputError(
                f"output {output!r} is not an output of the model ({[o.name for o in outputs]})",
                hint="name one of the model outputs",
            )
        cands = named
    if not cands:
        raise InputError(
            "the model has no float outputs to compare", hint="edgefleet scores models through float outputs"
        )
    # The first float output carries the answer (class scores, probabilities, embeddings, ...); later
    # outputs are usually side results (labels, recurrent state).
    o = cands[0]
    chunks = ref[o.name]
    last = chunks[0].shape[-1] if chunks and chunks[0].ndim >= 1 else 1
    rank_ok = bool(chunks) and chunks[0].ndim >= 2
    if rank_ok and last >= 2 and all(c.shape[-1] == last for c in chunks):
        return Task("classification", o.name, int(last), "accuracy" if has_labels else "agreement")
    return Task("regression", o.name, None, "cosine")


def check_labels(task: Task, labels: np.ndarray | None, ref: dict[str, list[np.ndarray]]) -> None:
    """Labels must match the classifier output: one per prediction, each a valid class index."""
    if labels is None:
        return
    if task.kind != "classification":
        raise InputError(
            f"labels were given but the model's output {task.output!r} is not class scores "
            f"(shape {list(ref[task.output][0].shape)})",
            hint="drop the labels (quality is then cosine similarity to fp32), or name the scores output",
        )
    preds = _rows(ref[task.output], task.num_classes or 1).shape[0]
    if preds != len(labels):
        raise InputError(
            f"the model gives {preds} predictions on the evaluation data but there are {len(labels)} labels",
            hint="give exactly one label per evaluation sample",
        )
    top = int(labels.max()) if len(labels) else 0
    if top >= (task.num_classes or 0):
        raise InputError(
            f"labels go up to {top} but the model's output {task.output!r} has {task.num_classes} classes",
            hint="labels must be class indices 0..C-1 in the order of the model's outputs",
        )


def measure_quality(
    task: Task, ref: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]], labels: np.ndarray | None
) -> Quality:
    """Compare a variant's outputs with the baseline's (and with the labels when given)."""
    r = ref[task.output]
    g = got[task.output]
    nonfinite = sum(int(np.count_nonzero(~np.isfinite(x))) for x in g)
    if task.kind == "classification":
        c = task.num_classes or 1
        rr = _rows(r, c).astype(np.float64)
        gg = _rows(g, c).astype(np.float64)
        gg_safe = np.where(np.isfinite(gg), gg, -np.inf)
        pred = np.argmax(gg_safe, axis=1)
        agreement = float(np.mean(pred == np.argmax(rr, axis=1)))
        acc = float(np.mean(pred == labels)) if labels is not None else None
        cos = _cosine_rows(rr, np.nan_to_num(gg))
        err = np.abs(rr - np.nan_to_num(gg))
        score = 100.0 * (acc if acc is not None else agreement)
        return Quality(
            score, task.metric, acc, agreement, cos, float(err.max()), float(err.mean()), nonfinite
        )
    # regression / embeddings: per-sample cosine when samples are vectors, else over the whole output
    per = [np.asarray(x, dtype=np.float64) for x in r]
    gper = [np.nan_to_num(np.asarray(x, dtype=np.float64)) for x in g]
    sizes = {x.size for x in per}
    if len(sizes) == 1 and next(iter(sizes)) >= 2 and per[0].shape[0] == 1:
        rr = np.stack([x.ravel() for x in per])
        gg = np.stack([x.ravel() for x in gper])
        cos = _cosine_rows(rr, gg)
    else:
        a = np.concatenate([x.ravel() for x in per])
        b = np.concatenate([x.ravel() for x in gper])
        cos = _cosine(a, b)
    a = np.concatenate([x.ravel() for x in per])
    b = np.concatenate([x.ravel() for x in gper])
    err = np.abs(a - b)
    if nonfinite:
        cos = 0.0
    return Quality(100.0 * cos, "cosine", None, None, cos, float(err.max()), float(err.mean()), nonfinite)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))
    return float(np.clip(np.mean(cos), -1.0, 1.0))
