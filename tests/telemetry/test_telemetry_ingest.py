"""Server-side parsing of uploads: wrong device, bad items, replays, tags from the server."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import ForbiddenError, PayloadTooLargeError, ValidationError
from edgefleet.telemetry import Aggregator, AggregatorConfig, Outbox, parse_upload


def _outbox_with_traffic(tmp_path, clock, device_tag="dev-1"):
    ob = Outbox(tmp_path / "o.sqlite", monotonic=clock.monotonic, wall=clock.wall)
    agg = Aggregator(
        None,
        config=AggregatorConfig(resources=False),
        outbox=ob,
        tags={"device_id": device_tag, "region": "x"},
        monotonic=clock.monotonic,
        wall=clock.wall,
    )
    agg.record(None, {"probabilities": np.array([[0.2, 0.8]])}, latency_ms=2.0)
    agg.flush_window()
    ob.put("event", {"type": "rollback", "to": "1.0.0"})
    ob.put("sample", {"confidence": 0.3})
    ob.put("escalation", b"\x00raw")
    return ob


def test_valid_upload_splits_by_kind_and_server_tags_win(tmp_path, clock):
    with _outbox_with_traffic(tmp_path, clock) as ob:
        up = ob.next_upload(header={"device_id": "dev-1"})
        p = parse_upload(
            up.body, device_id="dev-1", tags={"device_class": "pi", "region": "eu"}, now=clock.wall()
        )
        assert p.batch_id == up.batch_id and p.rejected == []
        assert len(p.windows) == len(p.events) == len(p.samples) == len(p.other) == 1
        w = p.windows[0][1]
        assert w.tags == {"device_id": "dev-1", "device_class": "pi", "region": "eu"}
        assert p.other[0][1:] == ("escalation", b"\x00raw")
        assert sorted(p.uids) == sorted(i.uid for i in up.items)
        # a retry is byte-for-byte the same batch: the server recognises it by batch_id and uids
        again = parse_upload(
            ob.next_upload(header={"device_id": "dev-1"}).body, device_id="dev-1", now=clock.wall()
        )
        assert again.batch_id == p.batch_id and sorted(again.uids) == sorted(p.uids)


def test_upload_from_another_device_is_refused(tmp_path, clock):
    with _outbox_with_traffic(tmp_path, clock) as ob:
        body = ob.next_upload(header={"device_id": "dev-1"}).body
        with pytest.raises(ForbiddenError):
            parse_upload(body, device_id="dev-2", now=clock.wall())
    # a window tagged with another device inside an unlabelled upload is rejected on its own
    with _outbox_with_traffic(tmp_path / "b", clock, device_tag="dev-9") as ob:
        p = parse_upload(ob.next_upload().body, device_id="dev-1", now=clock.wall())
        assert p.windows == [] and len(p.rejected) == 1 and "dev-9" in p.rejected[0][1]
        assert len(p.events) == 1  # the rest of the batch is kept


def test_future_windows_are_rejected_per_item(tmp_path, clock):
    with _outbox_with_traffic(tmp_path, clock) as ob:
        body = ob.next_upload(header={"device_id": "dev-1"}).body
    p = parse_upload(body, device_id="dev-1", now=clock.wall() - 86_400)  # device clock a day ahead
    assert p.windows == [] and "future" in p.rejected[0][1]


def test_bad_bodies(tmp_path, clock):
    with pytest.raises(ValidationError):
        parse_upload(b"garbage", device_id="d")
    with _outbox_with_traffic(tmp_path, clock) as ob:
        body = ob.next_upload().body
    with pytest.raises(PayloadTooLargeError):
        parse_upload(body, device_id="dev-1", max_body_bytes=10)
    with pytest.raises(ValidationError):
        parse_upload(body, device_id="dev-1", max_items=2)
