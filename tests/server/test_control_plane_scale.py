"""Control-plane scale-out: coalesced heartbeat writes keep every device's own answer; several server
processes on one port with one leader running the periodic jobs; the leader lease changes hands."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import httpx
import pytest
from servertools import Harness, make_harness

from edgefleet.protocol import Heartbeat
from edgefleet.server import ServerConfig, start_server_process
from edgefleet.server._db import Database
from edgefleet.server._heartbeat_batch import HeartbeatBatcher


def _until(cond, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.postgres
def test_coalesced_heartbeats_answer_each_device_its_own_row_and_isolate_a_failing_one(tmp_path, pg_url):
    client, clock = make_harness(tmp_path, db_url=pg_url)
    with client:
        h = Harness(client, clock)
        devs = [h.enroll() for _ in range(24)]  # each has reported once: director_seq 1
        writer = h.ctx.devices._beats
        batcher = HeartbeatBatcher(writer)

        def beat(d: dict, i: int, token: str | None = None):
            hb = Heartbeat.model_validate(
                {"device_id": d["device_id"], "state": f"s{i}", "progress": i / 100, "health": {}}
            )
            return writer.prepare(d["device_id"], token or d["device_token"], hb, clock())

        async def rounds():
            out = []
            for _ in range(3):
                beats = [beat(d, i) for i, d in enumerate(devs)]
                # a device with another device's token, and a beat the database refuses, in the same batch
                beats.append(beat(devs[0], 99, token=devs[1]["device_token"]))
                bad = beat(devs[2], 98)
                bad.params["resources"] = "{not json"
                beats.append(bad)
                out.append(await asyncio.gather(*(batcher.record(b) for b in beats), return_exceptions=True))
            return out

        try:
            results = asyncio.run(rounds())
        finally:
            batcher.close()
        assert batcher.largest > 1  # heartbeats really shared a write
        for r, answers in enumerate(results):
            for i in range(len(devs)):
                row, done = answers[i]
                # its own row: its own next sequence number (enrolled beat 1, then one per round; the
                # refused beat of devs[2] and the wrong-token beat for devs[0] count nothing)
                assert row[4] == 2 + r, (i, r, row)
                assert row[0] is None and done is False
            assert answers[-2] == (None, False)  # wrong token: no row, nothing written
            assert isinstance(answers[-1], Exception)  # refused by the database: only this one failed
        for i, d in enumerate(devs):
            shown = client.get(f"/v1/devices/{d['device_id']}", headers=h.admin).json()
            assert shown["state"] == f"s{i}" and shown["progress"] == pytest.approx(i / 100)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_leader_at_a_time_and_another_takes_over(tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    a, b = Database(url), Database(url)
    try:
        assert a.leader.held() and a.leader.leading
        assert not b.leader.held() and not b.leader.leading
        assert a.leader.held()  # still held on the next look
        a.dispose()  # the leading process stops
        assert _until(b.leader.held)
        assert not a.leader.held()
    finally:
        a.dispose()
        b.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_server_processes_share_one_port_and_one_of_them_leads(tmp_path, pg_url):
    cfg = ServerConfig(data_dir=tmp_path / "s", db_url=pg_url, keys_dir=tmp_path / "nokeys")
    h = start_server_process(
        cfg, workers=2, jobs_process=False, timeout=180, log_file=tmp_path / "server.log"
    )
    try:
        seen: dict[bool, int] = {}

        def both_answered() -> bool:
            r = httpx.get(h.url + "/healthz", headers={"Connection": "close"}, timeout=10)
            seen[r.json()["leader"]] = seen.get(r.json()["leader"], 0) + 1
            return seen.get(True, 0) >= 3 and seen.get(False, 0) >= 3

        # the kernel spreads new connections over both processes: one says it leads, the other not
        assert _until(both_answered), seen
    finally:
        h.stop()
    assert h.process.returncode == 0, (tmp_path / "server.log").read_text()


@pytest.mark.postgres
def test_a_batch_the_database_aborts_as_a_deadlock_victim_is_written_again(tmp_path, pg_url):
    """A batch is one implicit transaction that locks its devices' rows in arrival order; another
    transaction (a rollout tick's admission) holding one of them and then asking for another the batch
    holds is a deadlock, and PostgreSQL aborts the batch (its side detects first: the other waits 10 s
    before looking). The batch is written again and every device answered, none with an error."""
    import threading

    import sqlalchemy as sa

    client, clock = make_harness(tmp_path, db_url=pg_url)
    with client:
        h = Harness(client, clock)
        x, y = h.enroll(), h.enroll()
        writer = h.ctx.devices._beats
        batcher = HeartbeatBatcher(writer)

        def beat(d: dict, state: str):
            hb = Heartbeat.model_validate({"device_id": d["device_id"], "state": state, "health": {}})
            return writer.prepare(d["device_id"], d["device_token"], hb, clock())

        eng = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
        other = eng.connect()
        other.execute(sa.text("SET deadlock_timeout = '10s'"))
        other.execute(sa.text("UPDATE devices SET command = NULL WHERE id = :i"), {"i": x["device_id"]})
        out: list = []
        # y's row first, then x's, which the other transaction holds: the batch waits
        batch = [(beat(y, "y-batch"), None, None), (beat(x, "x-batch"), None, None)]
        writing = threading.Thread(target=lambda: out.extend(batcher._outcomes(batch)))
        writing.start()
        holder = other.execute(sa.text("select pg_backend_pid()")).scalar()
        waits = sa.text(  # a backend blocked by the other transaction: the batch, nobody else's
            "select count(*) from pg_stat_activity where :holder = any(pg_blocking_pids(pid))"
        ).bindparams(holder=holder)
        with eng.connect() as probe:
            assert _until(lambda: probe.execute(waits).scalar() > 0 or probe.rollback()), (
                "the batch never waited"
            )
        # now ask for y's row, which the batch holds: a deadlock, and the batch is its victim
        other.execute(sa.text("UPDATE devices SET command = NULL WHERE id = :i"), {"i": y["device_id"]})
        other.commit()
        other.close()
        writing.join(60)
        eng.dispose()
        assert not writing.is_alive()
        assert batcher.retried >= 1
        assert [err for _, err in out] == [None, None], out
        for d, state in ((x, "x-batch"), (y, "y-batch")):
            assert client.get(f"/v1/devices/{d['device_id']}", headers=h.admin).json()["state"] == state


@pytest.mark.slow
@pytest.mark.parametrize("flag", [None, "--jobs-in-process"])
def test_by_default_the_request_process_never_leads(tmp_path, flag):
    """``edgefleet server run``: by default the periodic jobs run in a process that serves nothing; the
    request process answers but never takes the leader lease, which the jobs process holds until the server
    stops (the jobs' own work: the sim's ``test_a_rollout_runs_from_the_jobs_process``). With
    ``--jobs-in-process`` the one request process runs them, and leads."""
    from edgefleet.server import free_port

    port = free_port()
    cmd = [
        sys.executable, "-m", "edgefleet.cli", "server", "run", "--data", str(tmp_path / "s"),
        "--keys", str(tmp_path / "nokeys"), "--port", str(port), *([flag] if flag else []),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = Database(f"sqlite:///{tmp_path / 's' / 'edgefleet.sqlite'}")
    url = f"http://127.0.0.1:{port}/healthz"

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def taken_by_another() -> bool:  # without keeping it: a free lease is let go at once
        if probe.leader.held():
            probe.leader.release()
            return False
        return True

    try:
        assert _until(up, 180), "the server did not start"
        assert _until(taken_by_another), "nobody took the leader lease"
        for _ in range(5):
            r = httpx.get(url, headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200 and r.json()["leader"] is (flag == "--jobs-in-process"), r.text
        assert taken_by_another()  # still the jobs process's (or the request process's)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    # one plain uvicorn process re-raises the SIGTERM it handled once it has shut down
    assert proc.returncode in ((0, -signal.SIGTERM) if flag else (0,)), out
    assert ("1 server process on port" in out and "one for the periodic jobs" in out) is (flag is None), out
    assert _until(probe.leader.held)  # the leader let it go
    probe.dispose()
