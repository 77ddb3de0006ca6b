"""Outbox limits at their edges: item size, byte cap (payload + overhead), kind names, upload batch size,
upload body and decompressed size, TTL. Exactly at a limit is accepted; one past is refused or evicts."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import PayloadTooLargeError, ValidationError
from edgefleet.telemetry import Outbox, OutboxConfig, decode_upload
from edgefleet.telemetry._outbox import ITEM_OVERHEAD_BYTES
from edgefleet.telemetry._upload import encode_upload

FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _ob(path, clock=None, **cfg) -> Outbox:
    clock = clock or Clock()
    return Outbox(path, OutboxConfig(**cfg), monotonic=clock, wall=lambda: 1_700_000_000.0 + clock.t)


@FEW
@given(limit=st.integers(64, 400), extra=st.integers(-2, 2))
def test_item_size_limit_is_inclusive(tmp_path_factory, limit, extra):
    ob = _ob(tmp_path_factory.mktemp("o") / "ob.db", max_item_bytes=limit)
    try:
        payload = b"x" * (limit + extra)
        if extra <= 0:
            assert ob.put("event", payload) is not None
        else:
            with pytest.raises(PayloadTooLargeError, match=f"is {limit + extra} bytes, limit {limit}"):
                ob.put("event", payload)
    finally:
        ob.close()


@FEW
@given(n=st.integers(3, 8), slack=st.integers(-1, 1))
def test_byte_cap_counts_payload_plus_overhead_and_is_inclusive(tmp_path_factory, n, slack):
    """n items that fill the cap exactly all stay; with one byte less the oldest one is evicted."""
    payload = 300
    exact = n * (payload + ITEM_OVERHEAD_BYTES)  # >= 1024, the smallest cap allowed
    ob = _ob(tmp_path_factory.mktemp("o") / "ob.db", max_bytes=exact + slack)
    try:
        ids = [ob.put("sample", bytes([i]) * payload) for i in range(n)]
        assert all(i is not None for i in ids)
        kept = sorted(it.id for it in ob.peek(100))
        if slack >= 0:
            assert kept == sorted(ids) and ob.stats()["bytes"] == exact
        else:
            assert kept == sorted(ids[1:])
            assert ob.stats()["counters"]["sample"]["evicted"] == {"items": 1, "bytes": payload + 64}
        assert ob.stats()["bytes"] <= exact + slack
    finally:
        ob.close()


def test_item_larger_than_what_lower_priorities_free_is_rejected_not_stored(tmp_path):
    ob = _ob(tmp_path / "ob.db", max_bytes=1024)
    try:
        a = ob.put("event", b"e" * (1024 - ITEM_OVERHEAD_BYTES))  # fills the cap exactly
        assert a is not None
        assert ob.put("sample", b"s") is None  # lower priority never evicts a higher one
        assert [it.id for it in ob.peek()] == [a]
        b = ob.put("event", b"f")  # same priority: the oldest goes
        assert [it.id for it in ob.peek()] == [b]
    finally:
        ob.close()


@pytest.mark.parametrize(
    ("kind", "ok"),
    [
        ("a", True),
        ("a" * 32, True),
        ("a" * 33, False),
        ("x.y-z_9", True),
        ("9lives", False),
        ("Event", False),
        ("", False),
        ("ev ent", False),
    ],
)
def test_kind_names(tmp_path, kind, ok):
    ob = _ob(tmp_path / "ob.db")
    try:
        if ok:
            assert ob.put(kind, b"x") is not None
        else:
            with pytest.raises(ValidationError, match="kind"):
                ob.put(kind, b"x")
    finally:
        ob.close()


@FEW
@given(n=st.integers(1, 6), slack=st.integers(-1, 1))
def test_upload_batch_fills_up_to_max_bytes_inclusive(tmp_path_factory, n, slack):
    ob = _ob(tmp_path_factory.mktemp("o") / "ob.db")
    try:
        for i in range(n + 1):
            ob.put("telemetry", bytes([i]) * 100)
        per = 100 + ITEM_OVERHEAD_BYTES
        got = ob.batch(max_bytes=n * per + slack)
        assert len(got) == (n if slack >= 0 else max(1, n - 1))  # at least one item, whatever the limit
    finally:
        ob.close()


def test_batch_holds_at_least_one_item_even_if_larger_than_the_limit(tmp_path):
    ob = _ob(tmp_path / "ob.db")
    try:
        ob.put("telemetry", b"x" * 500)
        ob.put("telemetry", b"y")
        assert len(ob.batch(max_bytes=10)) == 1
    finally:
        ob.close()


def test_ttl_boundary(tmp_path):
    clock = Clock()
    ob = _ob(tmp_path / "ob.db", clock, ttl_s=100.0, ttl_by_kind={"sample": 10.0})
    try:
        ob.put("event", b"e")
        ob.put("sample", b"s")
        clock.t += 10.0  # exactly the sample TTL: still kept
        assert sorted(it.kind for it in ob.peek()) == ["event", "sample"]
        ob.purge_expired()
        assert sorted(it.kind for it in ob.peek()) == ["event", "sample"]
        clock.t += 0.5
        ob.purge_expired()
        assert [it.kind for it in ob.peek()] == ["event"]
        clock.t += 89.5  # exactly the event TTL
        ob.purge_expired()
        assert [it.kind for it in ob.peek()] == ["event"]
        clock.t += 0.5
        ob.purge_expired()
        assert ob.peek() == []
    finally:
        ob.close()


@pytest.mark.parametrize("slack", [0, 1, -1])
def test_upload_body_size_limit(slack):
    body, raw = encode_upload([], batch_id="b-000001")
    if slack >= 0:
        assert decode_upload(body, max_body_bytes=len(body) + slack)["batch_id"] == "b-000001"
    else:
        with pytest.raises(PayloadTooLargeError, match=f"is {len(body)} bytes, limit {len(body) - 1}"):
            decode_upload(body, max_body_bytes=len(body) + slack)


@pytest.mark.parametrize("slack", [0, 1, -1])
def test_upload_decompressed_size_limit(slack):
    body, raw = encode_upload([], batch_id="b-000001", header={"pad": "p" * 5000})
    if slack >= 0:
        assert decode_upload(body, max_raw_bytes=raw + slack)["pad"] == "p" * 5000
    else:
        with pytest.raises(PayloadTooLargeError, match=f"more than {raw - 1} bytes"):
            decode_upload(body, max_raw_bytes=raw + slack)


def test_batch_takes_only_the_kinds_asked_for(tmp_path):
    ob = _ob(tmp_path / "ob.db")
    try:
        ob.put("event", b"e")
        ob.put("telemetry", b"t")
        ob.put("sample", b"s")
        assert [it.kind for it in ob.batch(kinds=["telemetry", "sample"])] == ["telemetry", "sample"]
        assert [it.kind for it in ob.batch(kinds=["event"])] == ["event"]
        assert ob.batch(kinds=["escalation"]) == []
    finally:
        ob.close()


class _Disk:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path):
        import shutil

        return shutil._ntuple_diskusage(10**12, 10**12 - self.free, self.free)


@pytest.mark.parametrize("short", [0, 1])
def test_disk_reserve_boundary(tmp_path, monkeypatch, short):
    """The reserve is kept exactly: free == reserve + 2 x item is enough; one byte less is low disk."""
    import edgefleet.telemetry._outbox as outbox_module

    ob = _ob(tmp_path / "ob.db", min_free_disk_bytes=10_000)
    try:
        size = 100 + ITEM_OVERHEAD_BYTES
        monkeypatch.setattr(outbox_module.shutil, "disk_usage", _Disk(10_000 + 2 * size - short))
        got = ob.put("event", b"x" * 100)
        if short:
            assert got is None  # nothing lower to evict: refused rather than growing a full disk
            assert ob.stats()["counters"]["event"]["disk_full"]["items"] == 1
        else:
            assert got is not None and len(ob.peek()) == 1
    finally:
        ob.close()


def test_disk_full_twice_is_a_disk_space_error_and_counted(tmp_path, monkeypatch):
    import sqlite3

    from edgefleet.errors import DiskSpaceError

    ob = _ob(tmp_path / "ob.db")
    try:

        def full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(ob, "_put_txn", full)
        for _ in range(2):
            with pytest.raises(DiskSpaceError, match="is full"):
                ob.put("event", b"x" * 10)
        assert ob.stats()["counters"]["event"]["disk_full"] == {"items": 2, "bytes": 2 * (10 + 64)}
    finally:
        monkeypatch.undo()
        ob.close()


def test_a_newer_schema_is_refused_and_leaves_the_file_unlocked(tmp_path):
    import sqlite3

    from edgefleet.errors import SchemaVersionError

    path = tmp_path / "ob.db"
    _ob(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(SchemaVersionError, match="schema 99") as e:
        _ob(path)
    other = sqlite3.connect(path, timeout=0)
    try:  # the refused open rolled its transaction back: nobody holds the write lock
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert e.value.hint
