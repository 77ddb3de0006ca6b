"""Compressed updates (--update-compression int8 | topk:F): encoding round-trips within its bound, the
server rejects what does not decode (with the reason) and keeps the round, and a real job's bytes up
shrink to the encoded size."""

from __future__ import annotations

import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from conftest import digits_federation
from edgefleet.federated import JobSpec
from edgefleet.federated._compress import ENCODED, PLAIN, UpdateRejected, decode, encode
from edgefleet.federated._server_app import accept_reply

SHAPES = [(64, 10), (10,)]


def _delta(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=s) * 0.1).astype(np.float32) for s in SHAPES]


def test_int8_round_trips_within_half_a_step_and_is_a_quarter_of_the_bytes():
    delta = _delta()
    record, sent = encode("int8", delta)
    # int8 entries + one float32 scale per tensor
    assert sum(a.nbytes for a in record.values()) == 650 + 4 * 2
    back = decode("int8", record, SHAPES)
    for d, b, s, scale in zip(delta, back, sent, record["scale"], strict=True):
        assert np.array_equal(b, s)
        assert np.abs(d - b).max() <= scale / 2 + 1e-7
        assert scale == pytest.approx(np.abs(d).max() / 127)


def test_topk_keeps_the_largest_entries_exactly():
    delta = _delta(1)
    record, _ = encode("topk:0.1", delta)
    assert record["idx"].dtype == np.uint16 and len(record["idx"]) == 64 + 1
    assert sum(a.nbytes for a in record.values()) == 65 * (2 + 4)
    back = decode("topk:0.1", record, SHAPES)
    for d, b in zip(delta, back, strict=True):
        kept = b != 0
        assert np.array_equal(b[kept], d[kept])
        # nothing left out is larger than what was kept
        assert np.abs(d[~kept]).max() <= np.abs(d[kept]).min()


def _reply(records: dict[str, dict[str, np.ndarray]]) -> RecordDict:
    """A reply's content as a ClientApp sends it."""
    content = RecordDict({k: ArrayRecord({n: Array(v) for n, v in r.items()}) for k, r in records.items()})
    content["metrics"] = MetricRecord({"weight": 1, "samples": 1, "train-loss": 0.0})
    return content


@pytest.mark.parametrize(
    ("codec", "tamper", "reason"),
    [
        ("int8", lambda r: r.update(q=np.zeros(6500, np.int8)), "shape (6500,)"),  # oversized
        ("int8", lambda r: r.update(q=r["q"].astype(np.int16)), "is int16"),
        ("int8", lambda r: r.update(scale=np.array([np.nan, 1], np.float32)), "finite"),
        ("int8", lambda r: r.pop("scale"), "want ['q', 'scale']"),
        (
            "topk:0.1",
            lambda r: r.update(idx=np.arange(650, dtype=np.uint16), val=np.ones(650, np.float32)),
            "shape (650,)",
        ),
        ("topk:0.1", lambda r: r["idx"].__setitem__(0, 60000), "out of range"),
        ("topk:0.1", lambda r: r["idx"].__setitem__(1, r["idx"][0]), "repeated"),
        ("topk:0.1", lambda r: r["val"].__setitem__(0, np.inf), "NaN or infinity"),
    ],
)
def test_malformed_or_oversized_updates_are_rejected_with_a_reason(codec, tamper, reason):
    record, _ = encode(codec, _delta())
    record = {k: v.copy() for k, v in record.items()}
    tamper(record)
    with pytest.raises(UpdateRejected, match=re.escape(reason)):
        accept_reply(_reply({ENCODED: record}), codec, [np.zeros(s, np.float32) for s in SHAPES])


def test_a_reply_in_the_wrong_form_is_rejected_and_a_good_one_decodes_to_the_new_head():
    global_arrays = [np.ones(s, np.float32) for s in SHAPES]
    with pytest.raises(UpdateRejected, match="want \\['update'\\]"):
        accept_reply(_reply({PLAIN: {"0": np.ones(3, np.float32)}}), "int8", global_arrays)
    with pytest.raises(UpdateRejected, match="1 tensors; the head has 2"):
        accept_reply(_reply({PLAIN: {"0": np.ones(3, np.float32)}}), "none", global_arrays)
    delta = _delta()
    record, sent = encode("int8", delta)
    reply = _reply({ENCODED: record})
    assert accept_reply(reply, "int8", global_arrays) == 658
    new = reply[PLAIN].to_numpy_ndarrays()
    assert list(reply.array_records) == [PLAIN]
    for n, g, s in zip(new, global_arrays, sent, strict=True):
        assert np.allclose(n, g + s)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_job_with_int8_updates_sends_a_quarter_of_the_bytes_and_still_learns(tmp_path, federation):
    folders, base, held_out = digits_federation(3, tmp_path / "data")
    spec = JobSpec(
        job_id="int8",
        rounds=2,
        clients_per_round=3,
        min_clients=3,
        local_epochs=2,
        learning_rate=0.5,
        round_deadline_s=240,
        update_compression="int8",
    )
    coordinator, _ = federation(spec, base, held_out, folders)
    events = coordinator.wait(timeout_s=300)
    rounds = [e for e in events if e["event"] == "round"]
    assert [r["answered"] for r in rounds] == [3, 3] and all(r["aggregated"] for r in rounds)
    assert all(r["rejected"] == 0 for r in rounds)
    # the real payload: 650 int8 entries and 2 float32 scales per device (the float32 head is 2600 bytes)
    assert all(r["bytes_up"] == 3 * 658 for r in rounds)
    assert all(r["bytes_up_wire"] < 3 * 0.5 * (2600 + 2 * 128) for r in rounds)  # wire: npy headers included
    assert rounds[-1]["accuracy"] > events[0]["accuracy"] + 0.05
