"""The agent journal's limits and rules at their edges: size cap, schema version, history length, steps."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent import Journal
from edgefleet.agent._journal import JOURNAL_SCHEMA, MAX_JOURNAL_BYTES, PendingUpdate
from edgefleet.protocol import Assignment

SHA = "a" * 64


def _write(path, obj, size=None):
    raw = json.dumps(obj).encode()
    if size is not None:
        raw += b" " * (size - len(raw))  # JSON allows trailing whitespace: same journal, exact size
    path.write_bytes(raw)
    return raw


@pytest.mark.parametrize(("size", "ok"), [(MAX_JOURNAL_BYTES, True), (MAX_JOURNAL_BYTES + 1, False)])
def test_journal_size_cap_is_inclusive(tmp_path, size, ok):
    p = tmp_path / "journal.json"
    _write(p, {"schema_version": JOURNAL_SCHEMA, "active": SHA}, size)
    j = Journal(p)
    if ok:
        assert j.state.active == SHA and j.state.last_error is None
    else:
        assert j.state.active is None and "more than" in j.state.last_error
        assert list(tmp_path.glob("journal.json.unreadable-*"))


@pytest.mark.parametrize(
    ("version", "ok"),
    [(None, True), (JOURNAL_SCHEMA - 1, True), (JOURNAL_SCHEMA, True), (JOURNAL_SCHEMA + 1, False)],
)
def test_schema_version_up_to_this_agents_is_read(tmp_path, version, ok):
    p = tmp_path / "journal.json"
    obj = {"active": SHA} | ({} if version is None else {"schema_version": version})
    _write(p, obj)
    j = Journal(p)
    assert (j.state.active == SHA) == ok
    assert (j.state.last_error is None) == ok
    assert p.exists() == ok  # an unreadable journal is moved aside, never deleted


@pytest.mark.parametrize("garbage", [b"[1, 2]", b"not json", b'"text"', b'{"seq": "many"}'])
def test_unreadable_journal_is_set_aside_and_rebuilt(tmp_path, garbage):
    p = tmp_path / "journal.json"
    p.write_bytes(garbage)
    j = Journal(p)
    assert j.state.seq == 0 and j.state.last_error.startswith("journal was unreadable")
    (aside,) = tmp_path.glob("journal.json.unreadable-*")
    assert aside.read_bytes() == garbage
    j.save()
    assert Journal(p).state.last_error == j.state.last_error


@settings(max_examples=30, deadline=None)
@given(keep=st.integers(1, 8), events=st.integers(0, 20))
def test_history_keeps_exactly_the_last_n_events(tmp_path_factory, keep, events):
    j = Journal(tmp_path_factory.mktemp("j") / "journal.json", history=keep)
    for i in range(events):
        ev = j.event("tick", n=i, skipped=None)
        assert ev["event"] == "tick" and ev["n"] == i
    assert [e["n"] for e in j.state.history] == list(range(max(0, events - keep), events))


def test_save_is_durable_counts_and_leaves_no_temporary_file(tmp_path):
    p = tmp_path / "journal.json"
    j = Journal(p)
    assert j.state.seq == 0 and not p.exists()
    j.state.active = SHA
    j.save()
    j.save()
    back = Journal(p)
    assert back.state.seq == 2 and back.state.active == SHA and back.state.updated_at > 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["journal.json"]


def test_step_resets_attempts_only_when_the_step_changes(tmp_path):
    j = Journal(tmp_path / "journal.json")
    a = Assignment(
        name="m", version="1", variant="cpu", target_path="m/m.tar", length=1, hashes={"sha256": SHA}
    )
    j.state.pending = PendingUpdate(assignment=a, sha256=SHA)
    j.state.pending.attempts = 2
    j.step("assigned")  # same step: a restart inside it keeps counting
    assert j.state.pending.attempts == 2 and j.state.seq == 1
    j.step("downloading")
    assert j.state.pending.step == "downloading" and j.state.pending.attempts == 0 and j.state.seq == 2
    assert Journal(tmp_path / "journal.json").state.pending.step == "downloading"


def test_step_without_a_pending_update_is_a_bug(tmp_path):
    with pytest.raises(AssertionError, match="no pending update"):
        Journal(tmp_path / "journal.json").step("downloading")


def test_history_keeps_fifty_events_by_default(tmp_path):
    j = Journal(tmp_path / "journal.json")
    for i in range(60):
        j.event("tick", n=i)
    assert [e["n"] for e in j.state.history] == list(range(10, 60))
