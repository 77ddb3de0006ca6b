"""A data snapshot from the control plane's labelled samples (``/v1/samples``, issue 13's sample store).

Only samples a device sent with their input (privacy ``raw``, a tensor with ``input_meta``) and that carry a
label can be trained on; the others are counted and named in the result. Labels are class names as the
reviewers wrote them: ``classes`` maps them to the model's class indices (default: integer labels are
their own index).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import InputError
from edgefleet.retrain._snapshot import DataSnapshot, write_snapshot

__all__ = ["snapshot_from_server"]

_PAGE = 1000


def _decode(sample: dict[str, Any], data: bytes) -> np.ndarray:
    meta = (sample.get("meta") or {}).get("input_meta") or {}
    try:
        x = np.frombuffer(data, dtype=np.dtype(str(meta["dtype"]))).reshape([int(d) for d in meta["shape"]])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"sample {sample['request_id']}: its input does not match its dtype/shape ({e})",
            hint="re-sample it; the stored input is not a tensor edgefleet sent",
        ) from None
    return x[0] if x.ndim > 1 and x.shape[0] == 1 else x


def _label_index(label: str, classes: Sequence[str] | None) -> int:
    if classes:
        try:
            return list(classes).index(label)
        except ValueError:
            raise InputError(
                f"label {label!r} is not one of the classes {', '.join(classes)}",
                hint="pass the model's class names in order with --classes",
            ) from None
    try:
        return int(label)
    except ValueError:
        raise InputError(
            f"label {label!r} is not a class index", hint="pass the model's class names with --classes a,b,c"
        ) from None


def snapshot_from_server(
    client: Any,
    out: str | Path,
    *,
    release: str | None = None,
    region: str | None = None,
    classes: Sequence[str] | None = None,
    limit: int = 100_000,
) -> tuple[DataSnapshot, dict[str, int]]:
    """Write the labelled samples (of ``release``, ``region``) with stored inputs as a snapshot at ``out``.

    Returns:
        The snapshot and counts: ``{"labelled": n, "used": n, "without_input": n, "other_region": n}``.

    Raises:
        InputError: no labelled sample with an input was found, or a label cannot be mapped.
    """
    xs, ys, ids = [], [], []
    counts = {"labelled": 0, "used": 0, "without_input": 0, "other_region": 0}
    before: int | None = None
    while counts["labelled"] < limit:
        params: dict[str, Any] = {"labelled": "true", "limit": _PAGE}
        if release:
            params["release"] = release
        if before is not None:
            params["before_id"] = before
        page = client.request("GET", "/v1/samples", params=params)
        if not page:
            break
        for s in page:
            counts["labelled"] += 1
            if region and s.get("region") != region:
                counts["other_region"] += 1
                continue
            if not s.get("has_input"):
                counts["without_input"] += 1
                continue
            full = client.request("GET", f"/v1/samples/{s['request_id']}")
            xs.append(_decode(full, client.sample_input(s["request_id"])))
            ys.append(_label_index(str(s["label"]), classes))
            ids.append(s["request_id"])
        before = min(int(s["id"]) for s in page)
        if len(page) < _PAGE:
            break
    counts["used"] = len(ys)
    if not ys:
        raise InputError(
            f"no labelled sample with a stored input ({counts})",
            hint="label samples in the review queue; inputs are stored with the sample policy's privacy 'raw'",
        )
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise InputError(
            f"the samples' inputs have several shapes: {sorted(shapes)}", hint="filter by --release"
        )
    snap = write_snapshot(
        out,
        np.stack(xs),
        np.asarray(ys, dtype=np.int64),
        sample_ids=ids,
        source={"server": str(getattr(client, "url", "")), "release": release, "region": region, **counts},
    )
    return snap, counts
