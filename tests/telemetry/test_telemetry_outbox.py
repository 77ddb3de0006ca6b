"""Outbox: caps, priorities, eviction counters, TTL and clock jumps, durability, disk full, upload."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgefleet.errors import DiskSpaceError, PayloadTooLargeError, TelemetryError, ValidationError
from edgefleet.telemetry import Outbox, OutboxConfig, decode_upload
from edgefleet.telemetry._outbox import ITEM_OVERHEAD_BYTES
from edgefleet.telemetry._upload import TokenBucket


class FakeClocks:
    """Controllable monotonic and wall clocks (the real ones cannot be jumped in a test)."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self.mono, self.wall_t = 1000.0, wall

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_t

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall_t += s


def _ob(tmp_path: Path, clocks: FakeClocks | None = None, **cfg) -> Outbox:
    kw = {"monotonic": clocks.monotonic, "wall": clocks.wall} if clocks else {}
    return Outbox(tmp_path / "outbox.sqlite", OutboxConfig(**cfg), **kw)


def test_put_batch_ack_roundtrip(tmp_path):
    with _ob(tmp_path) as ob:
        a = ob.put("telemetry", {"w": 1})
        b = ob.put("sample", b"\x00\x01raw")
        c = ob.put("event", {"type": "rollback"})
        items = ob.batch()
        # highest priority first: event, telemetry, sample
        assert [i.id for i in items] == [c, a, b]
        assert items[2].payload == b"\x00\x01raw" and items[0].payload == {"type": "rollback"}
        assert ob.ack([a, b, 99999]) == 2
        assert [i.id for i in ob.peek()] == [c]
        assert ob.ack([a]) == 0  # idempotent
        st = ob.stats()
        assert st["counters"]["telemetry"]["sent"]["items"] == 1
        assert st["items"] == 1 and ob.check() == []


def test_rejects_bad_input_and_stores_nothing(tmp_path):
    with _ob(tmp_path, max_item_bytes=100) as ob:
        with pytest.raises(ValidationError):
            ob.put("Bad Kind!", {"a": 1})
        with pytest.raises(ValidationError):
            ob.put("event", {"a": float("nan")})
        with pytest.raises(ValidationError):
            ob.put("event", ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(PayloadTooLargeError) as e:
            ob.put("sample", b"x" * 101)
        assert e.value.hint
        assert len(ob) == 0 and ob.stats()["bytes"] == 0


def test_cap_evicts_oldest_lowest_priority_and_counts(tmp_path):
    size = 1000
    cap = 10 * (size + ITEM_OVERHEAD_BYTES)
    with _ob(tmp_path, max_bytes=cap) as ob:
        samples = [ob.put("sample", b"s" * size) for _ in range(5)]
        tele = [ob.put("telemetry", b"t" * size) for _ in range(5)]
        # full now; a new telemetry item evicts the oldest *sample*, not telemetry
        new = ob.put("telemetry", b"t" * size)
        ids = {i.id for i in ob.peek(1000)}
        assert samples[0] not in ids and new in ids and set(tele) <= ids
        # an event evicts the next oldest sample
        ob.put("event", b"e" * size)
        assert samples[1] not in {i.id for i in ob.peek(1000)}
        # a sample can only evict samples (the oldest)
        s_new = ob.put("sample", b"s" * size)
        assert s_new is not None and samples[2] not in {i.id for i in ob.peek(1000)}
        st = ob.stats()
        assert st["dropped"]["sample"]["evicted"] == {"items": 3, "bytes": 3 * (size + ITEM_OVERHEAD_BYTES)}
        assert "telemetry" not in st["dropped"]
        assert st["bytes"] <= cap and ob.check() == []


def test_cap_rejects_new_item_rather_than_evicting_more_important(tmp_path):
    size = 1000
    cap = 4 * (size + ITEM_OVERHEAD_BYTES)
    with _ob(tmp_path, max_bytes=cap) as ob:
        events = [ob.put("event", b"e" * size) for _ in range(4)]
        assert ob.put("sample", b"s" * size) is None
        assert ob.put("telemetry", b"t" * size) is None
        assert {i.id for i in ob.peek()} == set(events)
        d = ob.stats()["dropped"]
        assert d["sample"]["rejected"]["items"] == 1 and d["telemetry"]["rejected"]["items"] == 1
        # same priority: oldest event goes
        e5 = ob.put("event", b"e" * size)
        assert {i.id for i in ob.peek()} == set(events[1:]) | {e5}


def test_explicit_priority_overrides_kind(tmp_path):
    size = 500
    with _ob(tmp_path, max_bytes=2 * (size + ITEM_OVERHEAD_BYTES)) as ob:
        keep = ob.put("sample", b"s" * size, priority=99)
        ob.put("sample", b"s" * size)
        ob.put("event", b"e" * size)
        assert keep in {i.id for i in ob.peek()}


def test_ttl_expires_and_counts(tmp_path):
    clk = FakeClocks()
    with _ob(tmp_path, clk, ttl_s=3600, ttl_by_kind={"event": 7200}) as ob:
        ob.put("telemetry", {"a": 1})
        ob.put("event", {"a": 1})
        clk.advance(3601)
        ob.purge_expired()
        assert [i.kind for i in ob.peek()] == ["event"]
        assert ob.stats()["dropped"]["telemetry"]["expired"]["items"] == 1
        clk.advance(3600)
        assert ob.batch() == []
        assert ob.stats()["dropped"]["event"]["expired"]["items"] == 1


def test_wall_clock_jump_while_running_does_not_purge(tmp_path):
    clk = FakeClocks()
    with _ob(tmp_path, clk, ttl_s=3600) as ob:
        ob.put("telemetry", {"a": 1})
        clk.wall_t += 86_400  # NTP jumps a day forward; monotonic time barely moves
        clk.mono += 1
        ob.purge_expired()
        assert len(ob) == 1
        clk.wall_t -= 3 * 86_400  # and back three days
        ob.put("telemetry", {"b": 2})
        assert len(ob) == 2 and ob.check() == []


def test_restart_credits_offline_gap_but_clamps_jumps(tmp_path):
    clk = FakeClocks()
    ob = _ob(tmp_path, clk, ttl_s=3 * 86_400, max_offline_credit_s=86_400)
    ob.put("telemetry", {"a": 1})
    ob.close()
    # Rebooted with the clock a year ahead: ages move by at most a day, so nothing is purged.
    clk.wall_t += 365 * 86_400
    clk.mono = 5.0  # monotonic restarts at boot
    ob = _ob(tmp_path, clk, ttl_s=3 * 86_400, max_offline_credit_s=86_400)
    ob.purge_expired()
    assert len(ob) == 1
    assert 86_400 <= ob.stats()["by_kind"]["telemetry"]["oldest_age_s"] < 86_500
    ob.close()
    # Rebooted with the clock set back: ages do not go backwards.
    clk.wall_t -= 400 * 86_400
    ob = _ob(tmp_path, clk, ttl_s=3 * 86_400, max_offline_credit_s=86_400)
    assert ob.stats()["by_kind"]["telemetry"]["oldest_age_s"] >= 86_400
    # Real time passes while running: the item expires as it should.
    clk.advance(2 * 86_400 + 10)
    ob.purge_expired()
    assert len(ob) == 0
    ob.close()


def test_corrupt_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "outbox.sqlite"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(TelemetryError) as e:
        Outbox(path)
    assert e.value.hint and path.read_bytes() == junk


def test_upload_batches_compress_and_decode(tmp_path):
    with _ob(tmp_path, upload_max_bytes=4096) as ob:
        for i in range(50):
            ob.put("telemetry", {"window": i, "pad": "x" * 200})
        ob.put("sample", b"\xff\x00" * 10)
        up = ob.next_upload(header={"device_id": "dev-1"})
        assert up is not None and sum(i.size for i in up.items) <= 4096 + 300
        assert up.compressed_bytes < up.raw_bytes
        doc = decode_upload(up.body)
        assert doc["device_id"] == "dev-1" and doc["batch_id"] == up.batch_id
        assert [it["uid"] for it in doc["items"]] == [i.uid for i in up.items]
        # retry of the same items gets the same batch id (server-side idempotency)
        assert ob.next_upload(header={"device_id": "dev-1"}).batch_id == up.batch_id
        sent = []
        rep = ob.drain(lambda u: sent.append(decode_upload(u.body)))
        assert rep.stopped == "empty" and rep.items == 51 and len(ob) == 0
        payloads = [it["payload"] for d in sent for it in d["items"]]
        assert b"\xff\x00" * 10 in payloads
        assert sorted(p["window"] for p in payloads if isinstance(p, dict)) == list(range(50))


def test_drain_failure_keeps_items(tmp_path):
    with _ob(tmp_path) as ob:
        ob.put("event", {"a": 1})

        def boom(_):
            raise ConnectionError("server down")

        rep = ob.drain(boom)
        assert rep.stopped == "error" and "server down" in rep.error and len(ob) == 1


def test_bandwidth_budget_limits_drain(tmp_path):
    clk = FakeClocks()
    with _ob(
        tmp_path, clk, bandwidth_bytes_per_s=1000, bandwidth_burst_bytes=2048, upload_max_bytes=2048
    ) as ob:
        import os as _os

        for _ in range(10):
            ob.put("sample", _os.urandom(1500))  # incompressible
        rep = ob.drain(lambda u: None)
        assert rep.stopped == "bandwidth" and rep.batches == 1 and rep.wait_s > 0
        clk.advance(rep.wait_s + 0.01)
        assert ob.drain(lambda u: None).batches == 1
        assert len(ob) == 8


def test_token_bucket_waiting_the_answer_always_suffices():
    t = [86_400.123456789]  # large clock values make float rounding bite
    b = TokenBucket(50_000, 256 * 1024, clock=lambda: t[0])
    for n in (200_000, 123_457, 300_000, 99_999, 256 * 1024):
        wait = b.try_consume(n)
        if wait:
            t[0] += wait
            assert b.try_consume(n) == 0.0


def test_token_bucket_rate():
    t = [0.0]
    b = TokenBucket(100, 200, clock=lambda: t[0])
    assert b.try_consume(150) == 0.0
    assert b.try_consume(100) == pytest.approx(0.5, abs=1e-5)
    t[0] += 0.5
    assert b.try_consume(100) == 0.0
    with pytest.raises(ValidationError):
        TokenBucket(0, 1)


def test_decode_upload_rejects_bad_bodies():
    from edgefleet.telemetry._upload import _zstd

    z = _zstd()  # its compress() makes one whole frame
    with pytest.raises(ValidationError):
        decode_upload(b"not zstd")
    with pytest.raises(ValidationError):
        decode_upload(z.compress(b"{not json"))
    with pytest.raises(ValidationError):
        decode_upload(z.compress(b'{"format": "other", "items": []}'))
    with pytest.raises(PayloadTooLargeError):
        decode_upload(b"x" * 100, max_body_bytes=10)
    bomb = z.compress(
        b'{"format":"edgefleet-outbox/1","batch_id":"x","items":[],"pad":"' + b"a" * 5_000_000 + b'"}'
    )
    assert len(bomb) < 10_000
    with pytest.raises(PayloadTooLargeError):
        decode_upload(bomb, max_raw_bytes=1_000_000)


_WRITER = textwrap.dedent(
    """
    import sys
    from edgefleet.telemetry import Outbox, OutboxConfig
    ob = Outbox(sys.argv[1], OutboxConfig(max_bytes=50_000_000))
    i = 0
    while True:
        kind = ("event", "telemetry", "sample")[i % 3]
        id_ = ob.put(kind, {"seq": i, "pad": "x" * (i % 700)})
        print(id_, i, flush=True)   # printed only after put() returned: acknowledged
        i += 1
    """
)


def test_kill9_loses_no_acknowledged_put(tmp_path):
    path = tmp_path / "outbox.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    acked: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            id_, seq = map(int, line.split())
            acked[id_] = seq
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid write loop
        proc.wait()
    assert len(acked) >= 300, "writer did not start"
    with Outbox(path) as ob:
        assert ob.check() == []
        stored = {i.id: i.payload["seq"] for i in ob.peek(100_000)}
        missing = {k: v for k, v in acked.items() if stored.get(k) != v}
        assert not missing, f"acknowledged puts lost: {sorted(missing)[:10]}"
        assert ob.put("event", {"after": "restart"}) is not None
    # raw SQLite agrees too
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_full_disk_evicts_low_priority_and_never_corrupts(tmp_path):
    """A real ENOSPC on a 1 MiB tmpfs (root only), with the byte cap far above what the disk holds."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.decode().strip()}")
    try:
        cfg = OutboxConfig(max_bytes=100 << 20, min_free_disk_bytes=256 << 10)
        ob = Outbox(mnt / "outbox.sqlite", cfg)
        event = ob.put("event", b"e" * 100)
        errors = 0

        def put_samples(n):
            nonlocal errors
            for _ in range(n):
                try:
                    ob.put("sample", os.urandom(8000))
                except DiskSpaceError as e:  # allowed, but must be clear
                    assert e.hint and "full" in e.message
                    errors += 1

        put_samples(200)  # 1.6 MB of samples into a 1 MiB disk
        st = ob.stats()
        assert st["dropped"]["sample"]["evicted"]["items"] > 0
        assert st["effective_max_bytes"] < 100 << 20
        assert ob.check() == [] and event in {i.id for i in ob.peek(10_000)}
        # another process fills the rest of the disk
        with open(mnt / "filler", "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (2 << 20))
        put_samples(20)
        assert ob.check() == [] and event in {i.id for i in ob.peek(10_000)}
        os.remove(mnt / "filler")
        assert ob.put("sample", b"after") is not None
        stored = {i.id for i in ob.peek(10_000)}
        ob.close()
        with Outbox(mnt / "outbox.sqlite", cfg) as ob2:
            assert ob2.check() == [] and {i.id for i in ob2.peek(10_000)} == stored
            dropped = ob2.stats()["dropped"]["sample"]
            assert sum(v["items"] for v in dropped.values()) + errors + len(stored) - 1 >= 220
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_failure_inside_a_transaction_rolls_back_and_leaves_the_outbox_usable(tmp_path, monkeypatch):
    clk = FakeClocks()
    with _ob(tmp_path, clk, ttl_s=10) as ob:
        a = ob.put("telemetry", {"a": 1})
        before = ob.stats()

        def boom(*_a, **_k):
            raise RuntimeError("crash in the middle")

        monkeypatch.setattr(ob, "_delete", boom)
        with pytest.raises(RuntimeError):
            ob.ack([a])
        clk.advance(60)
        with pytest.raises(RuntimeError):
            ob.purge_expired()
        monkeypatch.undo()
        assert ob.stats()["items"] == before["items"] and ob.check() == []
        assert ob.ack([a]) == 1 and len(ob) == 0
