"""Quality of a variant, measured the way its task is judged (inferred from the outputs and labels, or named):

- ``classification``: class scores or probabilities -> accuracy with labels, else top-1 agreement with fp32;
- ``embedding``: L2-normalised vectors -> mean cosine similarity to fp32 (5th percentile reported too);
- ``regression``: real values -> relative L2 error to fp32 (``relative-error``), or cosine for outputs bounded
  to [0, 1] such as a speech probability, where relative error is ill-conditioned near zero;
- ``sequence``: per-frame logits with a blank class (CTC) -> exact-sequence agreement and character error
  rate after greedy CTC decoding.

Every score is in points where higher is better, so ``max_drop`` reads the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.errors import ConfigError, InputError
from edgefleet.optimize._data import Dataset, iter_batches
from edgefleet.optimize._runner import Runner, TensorInfo

__all__ = [
    "METRICS",
    "Task",
    "Quality",
    "infer_task",
    "run_dataset",
    "measure_quality",
    "check_labels",
    "ctc_greedy_decode",
    "edit_distance",
]

# --metric values and the task each implies
METRICS = {
    "accuracy": "classification",
    "agreement": "classification",
    "cosine": "embedding",
    "relative-error": "regression",
    "sequence": "sequence",
}

_NORM_TOL = 1e-3  # |‖v‖ - 1| below which a vector counts as L2-normalised
_BLANK_SHARE = 0.3  # least share of frames whose argmax is the blank class for CTC to be inferred


@dataclass(frozen=True)
class Task:
    """How the answer output is judged.

    ``kind``: classification | embedding | regression | sequence; ``metric``: a key of ``METRICS``;
    ``why``: the evidence the inference used (shown in the report); ``blank``: the CTC blank class.
    """

    kind: str
    output: str
    num_classes: int | None = None
    metric: str = "cosine"
    why: str = ""
    blank: int | None = None


@dataclass
class Quality:
    score: (
        float  # points, higher is better: accuracy %, agreement %, cosine x 100, 100 - relative error %, ...
    )
    metric: str
    accuracy: float | None = None
    agreement: float | None = None
    cosine: float | None = None
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    nonfinite: int = 0
    cosine_p5: float | None = None
    relative_error: float | None = None
    sequence_exact: float | None = None
    cer: float | None = None


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


def _pick_output(outputs: list[TensorInfo], output: str | None) -> TensorInfo:
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
    return cands[0]


def _blank_class(chunks: list[np.ndarray]) -> tuple[int, float]:
    """The likelier CTC blank (class 0 or the last) and the share of frames it wins."""
    frames = _rows(chunks, chunks[0].shape[-1])
    top = np.argmax(np.where(np.isfinite(frames), frames, -np.inf), axis=1)
    last = frames.shape[1] - 1
    shares = {0: float(np.mean(top == 0)), last: float(np.mean(top == last))}
    blank = max(shares, key=lambda k: shares[k])
    return blank, shares[blank]


def infer_task(
    outputs: list[TensorInfo],
    ref: dict[str, list[np.ndarray]],
    has_labels: bool,
    output: str | None = None,
    metric: str | None = None,
) -> Task:
    """Pick the output that carries the answer and decide how to judge it (``metric`` overrides)."""
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is unknown", hint=f"use one of {', '.join(METRICS)}")
    o = _pick_output(outputs, output)
    chunks = ref[o.name]
    arrs = [np.asarray(c, dtype=np.float64) for c in chunks]
    last = arrs[0].shape[-1] if arrs and arrs[0].ndim >= 1 else 1
    same_last = bool(arrs) and arrs[0].ndim >= 2 and all(c.shape[-1] == last for c in arrs)
    if metric is not None:
        return _named_task(metric, o.name, arrs, last, same_last, has_labels)
    finite = all(np.isfinite(c).all() for c in arrs)
    if same_last and last >= 2 and has_labels:
        return Task("classification", o.name, int(last), "accuracy", "labels given; class scores per sample")
    if same_last and last >= 2:
        rows = _rows(arrs, last)
        if arrs[0].ndim >= 3 and rows.shape[0] > len(arrs):
            blank, share = _blank_class(arrs)
            if share >= _BLANK_SHARE:
                return Task(
                    "sequence",
                    o.name,
                    int(last),
                    "sequence",
                    f"per-frame scores over {last} classes with class {blank} winning {share:.0%} of frames "
                    "(a CTC blank)",
                    blank,
                )
        sums = rows.sum(axis=1)
        if (rows >= 0).all() and np.allclose(sums, 1.0, atol=1e-3):
            return Task("classification", o.name, int(last), "agreement", "rows are class probabilities")
        norms = np.linalg.norm(rows, axis=1)
        if np.all(np.abs(norms - 1.0) < _NORM_TOL):
            return Task(
                "embedding", o.name, int(last), "cosine", f"rows are L2-normalised {last}-wide vectors"
            )
        return Task(
            "classification",
            o.name,
            int(last),
            "agreement",
            f"{last} unnormalised scores per sample (logits)",
        )
    if finite and arrs and all(c.size and c.min() >= 0.0 and c.max() <= 1.0 for c in arrs):
        return Task("regression", o.name, None, "cosine", "real values bounded to [0, 1] (scores)")
    return Task("regression", o.name, None, "relative-error", "real values (regression)")


def _named_task(
    metric: str, name: str, arrs: list[np.ndarray], last: int, same_last: bool, has_labels: bool
) -> Task:
    kind = METRICS[metric]
    why = f"--metric {metric}"
    if kind in ("classification", "sequence", "embedding") and not (same_last and last >= 2):
        raise ConfigError(
            f"--metric {metric} needs vectors along the last axis of {name!r}; it gives shape "
            f"{list(arrs[0].shape) if arrs else '?'}",
            hint="use --metric relative-error for scalar outputs, or name another --output",
        )
    if metric == "accuracy" and not has_labels:
        raise ConfigError("--metric accuracy needs labels", hint="pass --labels, or use --metric agreement")
    if kind == "sequence":
        if arrs[0].ndim < 3:
            raise ConfigError(
                f"--metric sequence needs per-frame scores [N, T, C]; {name!r} has shape {list(arrs[0].shape)}",
                hint="name the per-frame logits output with --output",
            )
        blank, _share = _blank_class(arrs)
        return Task(kind, name, int(last), metric, why, blank)
    return Task(kind, name, int(last) if kind != "regression" else None, metric, why)


def check_labels(task: Task, labels: np.ndarray | None, ref: dict[str, list[np.ndarray]]) -> None:
    """Labels must match the classifier output: one per prediction, each a valid class index."""
    if labels is None:
        return
    if task.kind != "classification":
        raise InputError(
            f"labels were given but the model's output {task.output!r} is not class scores "
            f"(shape {list(ref[task.output][0].shape)}; judged as {task.kind})",
            hint="drop the labels (quality is then measured against fp32), or name the scores output",
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
    a = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in r])
    b = np.nan_to_num(np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in g]))
    err = np.abs(a - b)
    errs = {
        "max_abs_err": float(err.max()) if err.size else 0.0,
        "mean_abs_err": float(err.mean()) if err.size else 0.0,
    }
    if task.kind == "classification":
        c = task.num_classes or 1
        rr = _rows(r, c).astype(np.float64)
        gg = _rows(g, c).astype(np.float64)
        pred = np.argmax(np.where(np.isfinite(gg), gg, -np.inf), axis=1)
        agreement = float(np.mean(pred == np.argmax(rr, axis=1)))
        acc = float(np.mean(pred == labels)) if labels is not None else None
        cos = float(np.mean(_cosine_rows(rr, np.nan_to_num(gg))))
        score = 100.0 * (acc if acc is not None and task.metric == "accuracy" else agreement)
        return Quality(score, task.metric, acc, agreement, cos, nonfinite=nonfinite, **errs)
    if task.kind == "sequence":
        return _sequence_quality(task, r, g, nonfinite, errs)
    if task.kind == "embedding":
        c = task.num_classes or 1
        per = _cosine_rows(_rows(r, c).astype(np.float64), np.nan_to_num(_rows(g, c).astype(np.float64)))
        mean, p5 = float(np.mean(per)), float(np.percentile(per, 5))
        if nonfinite:
            mean = p5 = 0.0
        return Quality(100.0 * mean, task.metric, cosine=mean, cosine_p5=p5, nonfinite=nonfinite, **errs)
    # regression: relative L2 error, and cosine (per sample when samples are vectors)
    per = [np.asarray(x, dtype=np.float64) for x in r]
    sizes = {x.size for x in per}
    if len(sizes) == 1 and next(iter(sizes)) >= 2 and per[0].shape[0] == 1:
        rows_r = np.stack([x.ravel() for x in per])
        rows_g = np.stack([np.nan_to_num(np.asarray(x, dtype=np.float64)).ravel() for x in g])
        cos = float(np.mean(_cosine_rows(rows_r, rows_g)))
    else:
        cos = _cosine(a, b)
    norm = float(np.linalg.norm(a))
    rel = float(np.linalg.norm(a - b)) / norm if norm > 0 else (0.0 if not err.any() else 1.0)
    if nonfinite:
        cos, rel = 0.0, max(rel, 1.0)
    score = 100.0 * cos if task.metric == "cosine" else 100.0 * max(0.0, 1.0 - rel)
    return Quality(score, task.metric, cosine=cos, relative_error=rel, nonfinite=nonfinite, **errs)


def _sequence_quality(
    task: Task, r: list[np.ndarray], g: list[np.ndarray], nonfinite: int, errs: dict[str, float]
) -> Quality:
    blank = task.blank or 0
    ref_seqs = [s for x in r for s in ctc_greedy_decode(np.asarray(x), blank)]
    got_seqs = [s for x in g for s in ctc_greedy_decode(np.nan_to_num(np.asarray(x)), blank)]
    exact = float(np.mean([a == b for a, b in zip(ref_seqs, got_seqs, strict=True)])) if ref_seqs else 1.0
    chars = sum(len(s) for s in ref_seqs)
    dist = sum(edit_distance(a, b) for a, b in zip(ref_seqs, got_seqs, strict=True))
    cer = dist / chars if chars else (0.0 if dist == 0 else 1.0)
    if nonfinite:
        exact = 0.0
    return Quality(100.0 * exact, task.metric, sequence_exact=exact, cer=cer, nonfinite=nonfinite, **errs)


def ctc_greedy_decode(logits: np.ndarray, blank: int) -> list[tuple[int, ...]]:
    """Best-path CTC decoding of [N, T, C] (or [T, C]) scores: argmax per frame, merge repeats, drop blanks."""
    x = np.asarray(logits)
    if x.ndim == 2:
        x = x[None]
    x = x.reshape(-1, x.shape[-2], x.shape[-1])
    out = []
    for best in np.argmax(x, axis=-1):
        keep = np.ones(best.shape, dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        out.append(tuple(int(t) for t in best[keep] if t != blank))
    return out


def edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Levenshtein distance between two label sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (1 where both rows are zero)."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))
    return np.clip(cos, -1.0, 1.0)
