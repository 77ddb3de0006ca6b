"""The one background scheduler: jobs on their intervals, failures logged and retried, outages rate-limited."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import OperationalError

from edgefleet.server._scheduler import Scheduler


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_jobs_run_on_their_intervals_and_a_first_delay_is_kept():
    runs = {"fast": 0, "late": 0}
    s = Scheduler("test-scheduler")
    s.every(0.02, "fast", lambda: runs.__setitem__("fast", runs["fast"] + 1))
    s.every(0.02, "late", lambda: runs.__setitem__("late", runs["late"] + 1), first_after_s=30)
    s.start()
    try:
        assert _wait(lambda: runs["fast"] >= 5)
        assert runs["late"] == 0
    finally:
        s.close()
    n = runs["fast"]
    time.sleep(0.1)
    assert runs["fast"] == n  # closed: nothing runs any more


def test_a_failing_job_is_logged_and_retried(caplog):
    calls = []

    def boom():
        calls.append(1)
        raise RuntimeError("boom")

    s = Scheduler("test-scheduler")
    s.every(0.01, "boom job", boom)
    with caplog.at_level(logging.ERROR, logger="edgefleet.server._scheduler"):
        s.start()
        try:
            assert _wait(lambda: len(calls) >= 3)
        finally:
            s.close()
    assert any("boom job failed" in r.getMessage() for r in caplog.records)


def test_a_database_outage_is_warned_about_once_per_interval(caplog):
    calls = []

    def down():
        calls.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    s = Scheduler("test-scheduler")
    s.every(0.01, "engine tick", down)
    with caplog.at_level(logging.WARNING, logger="edgefleet.server._scheduler"):
        s.start()
        try:
            assert _wait(lambda: len(calls) >= 10)
        finally:
            s.close()
    warnings = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_close_stops_a_waiting_thread_promptly():
    s = Scheduler("test-scheduler")
    s.every(3600, "hourly", lambda: None)
    s.start()
    t0 = time.monotonic()
    s.close()
    assert time.monotonic() - t0 < 2
    assert not [t for t in threading.enumerate() if t.name == "test-scheduler"]
