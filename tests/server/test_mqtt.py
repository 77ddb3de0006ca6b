"""Nudges over a real MQTT broker (Mosquitto), and devices falling back to polling when it is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import shutil
import subprocess
import time
from urllib.parse import urlparse

import httpx
import pytest

from edgefleet.server import ServerConfig, free_port, start_server
from edgefleet.server._notify import MqttNotifier, spread_for
from edgefleet.sim import Fleet, Scenario

pytestmark = pytest.mark.mqtt


def _subscriber(url: str, topic: str) -> tuple[object, queue.Queue]:
    import paho.mqtt.client as mqtt

    u = urlparse(url)
    got: queue.Queue = queue.Queue()
    ready = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, *a: (cl.subscribe(topic, qos=1), ready.put(True))
    c.on_message = lambda cl, ud, msg: got.put((msg.topic, msg.payload, msg.qos))
    c.connect(u.hostname, u.port or 1883)
    c.loop_start()
    ready.get(timeout=5)
    time.sleep(0.2)  # the SUBACK
    return c, got


def test_notifier_publishes_device_and_group_nudges_with_qos1(mqtt_url):
    prefix = f"edgefleet-test-{time.monotonic_ns()}"
    sub, got = _subscriber(mqtt_url, f"{prefix}/#")
    n = MqttNotifier(mqtt_url, prefix=prefix)
    try:
        assert n.wait_connected(5)
        assert n.nudge(["dev-a", "dev-b"]) == 2
        assert n.nudge_group("region", "eu-west")
        msgs = sorted(got.get(timeout=5) for _ in range(3))
    finally:
        n.close()
        sub.loop_stop()
        sub.disconnect()
    assert [m[0] for m in msgs] == [
        f"{prefix}/devices/dev-a/nudge",
        f"{prefix}/devices/dev-b/nudge",
        f"{prefix}/groups/region/eu-west/nudge",
    ]
    assert all(json.loads(m[1]) == {"poll": True} and m[2] == 1 for m in msgs)


def test_a_nudge_of_many_devices_asks_them_to_spread_their_polls(mqtt_url):
    """n devices nudged at once are asked to poll within n / rate seconds (at most their poll interval);
    a group nudge, its size unknown, within the poll interval; one device, now."""
    prefix = f"edgefleet-test-{time.monotonic_ns()}"
    sub, got = _subscriber(mqtt_url, f"{prefix}/#")
    n = MqttNotifier(mqtt_url, prefix=prefix, rate_per_s=10.0, max_spread_s=60.0)
    try:
        assert n.wait_connected(5)
        assert n.nudge([f"dev-{i}" for i in range(50)]) == 50
        assert n.nudge(["dev-alone"]) == 1
        assert n.nudge_group("region", "eu-west")
        msgs = [got.get(timeout=5) for _ in range(52)]
    finally:
        n.close()
        sub.loop_stop()
        sub.disconnect()
    body = {topic.split("/")[-2]: json.loads(payload) for topic, payload, _ in msgs}
    assert all(body[f"dev-{i}"] == {"poll": True, "within_s": 5.0} for i in range(50))
    assert body["dev-alone"] == {"poll": True}
    assert body["eu-west"] == {"poll": True, "within_s": 60.0}
    assert spread_for(100_000, 10.0, 60.0) == 60.0 and spread_for(50, 0.0, 60.0) == 0.0


def test_a_wave_s_nudges_carry_the_server_s_spread(tmp_path, published, mqtt_url):
    """The server's notifier takes ``nudge_rate_per_s`` and the poll interval from its settings."""
    cfg = ServerConfig(
        data_dir=tmp_path / "s",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        mqtt_url=mqtt_url,
        mqtt_topic_prefix=f"edgefleet-test-{time.monotonic_ns()}",
        nudge_rate_per_s=2.0,
        poll_interval_s=30.0,
    )
    with start_server(cfg) as srv:
        notifier = srv.app.state.ctx.notifier
        assert notifier.wait_connected(5)
        sub, got = _subscriber(mqtt_url, f"{cfg.mqtt_topic_prefix}/#")
        try:
            assert notifier.nudge(["a", "b", "c"]) == 3
            assert notifier.nudge([f"d{i}" for i in range(100)]) == 100
            msgs = [got.get(timeout=5) for _ in range(103)]
        finally:
            sub.loop_stop()
            sub.disconnect()
    within = {topic.split("/")[-2]: json.loads(payload).get("within_s") for topic, payload, _ in msgs}
    assert {within[x] for x in "abc"} == {1.5}  # 3 devices at 2/s
    assert {within[f"d{i}"] for i in range(100)} == {30.0}  # 50 s, capped at the poll interval


def test_admitted_devices_are_nudged_when_a_wave_opens(tmp_path, published, mqtt_url):
    cfg = ServerConfig(
        data_dir=tmp_path / "s",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        mqtt_url=mqtt_url,
        engine_tick_s=0.1,
    )
    with start_server(cfg) as srv:
        api = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"})
        assert srv.app.state.ctx.notifier.wait_connected(5)
        fleet = Fleet(srv.url, Scenario(), size=4, admin_token=srv.admin_token)
        asyncio.run(fleet.enroll())
        ids = sorted(d.device_id for d in fleet.devices)
        sub, got = _subscriber(mqtt_url, "edgefleet/devices/+/nudge")
        try:
            api.post("/v1/releases", json={"name": "digits", "version": "1.0.0"}).raise_for_status()
            r = api.post(
                "/v1/rollouts",
                json={"name": "digits", "version": "1.0.0", "waves": [50, 100], "gates": {"min_devices": 2}},
            )
            assert r.status_code == 201
            topics = set()
            deadline = time.monotonic() + 5
            while len(topics) < 2 and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    topics.add(got.get(timeout=0.5)[0])
        finally:
            sub.loop_stop()
            sub.disconnect()
        nudged = {t.split("/")[2] for t in topics}
        assert len(nudged) == 2 and nudged <= set(ids)  # exactly the wave's devices


@pytest.fixture
def private_broker(tmp_path):
    """A Mosquitto of our own on a free port, so the test can take it down."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not shutil.os.path.exists(exe):
        pytest.skip("mosquitto is not installed")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"mqtt://127.0.0.1:{port}", proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(5)


def test_broker_down_devices_fall_back_to_polling(tmp_path, published, private_broker):
    url, broker = private_broker
    cfg = ServerConfig(
        data_dir=tmp_path / "s",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        mqtt_url=url,
        engine_tick_s=0.1,
    )
    with start_server(cfg) as srv:
        notifier = srv.app.state.ctx.notifier
        assert notifier.wait_connected(5)
        poll = 0.5
        fleet = Fleet(
            srv.url,
            Scenario(poll_interval_s=poll, install_delay_s=0.05),
            size=6,
            admin_token=srv.admin_token,
            mqtt_url=url,
        )
        asyncio.run(fleet.enroll())
        broker.terminate()  # the broker goes away before the rollout
        broker.wait(5)
        deadline = time.monotonic() + 5
        while notifier.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not notifier.connected
        api = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"})
        api.post("/v1/releases", json={"name": "digits", "version": "1.0.0"}).raise_for_status()
        r = api.post(
            "/v1/rollouts",
            json={
                "name": "digits",
                "version": "1.0.0",
                "waves": [100],
                "soak_s": 0,
                "gates": {"min_devices": 1, "min_requests": 0},
            },
        )
        assert r.status_code == 201  # a dead broker does not fail the operator's call
        t0 = time.monotonic()
        assert asyncio.run(fleet.run(until=lambda f: f.count_on("1.0.0") == 6, timeout=10 * poll))
        assert time.monotonic() - t0 <= 3 * poll + 1.0  # polling alone delivered it
        assert fleet.nudges == 0 and notifier.dropped >= 6
        assert fleet.status_counts.get("500", 0) == 0
