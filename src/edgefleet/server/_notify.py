"""Nudges: tell devices to poll soon. A nudge carries nothing a device trusts, only ``{"poll": true}`` and,
for a nudge of many devices, ``"within_s"``: poll at a random moment within that many seconds
(:func:`nudge_payload`; the agent's side is ``edgefleet.agent._nudge.nudge_delay``), so that a wave of
thousands of nudges does not come back as one burst of heartbeats."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

from edgefleet.errors import ConfigError

__all__ = [
    "Notifier",
    "NullNotifier",
    "MqttNotifier",
    "make_notifier",
    "device_topic",
    "group_topic",
    "nudge_payload",
    "spread_for",
]

log = logging.getLogger(__name__)


def nudge_payload(within_s: float = 0.0) -> bytes:
    """A nudge's message: poll now, or at a random moment within ``within_s`` seconds."""
    body: dict[str, object] = {"poll": True}
    if round(within_s, 1) > 0:
        body["within_s"] = round(within_s, 1)
    return json.dumps(body).encode()


def spread_for(n: int, rate_per_s: float, max_spread_s: float) -> float:
    """Seconds over which ``n`` nudged devices should come in to arrive at ``rate_per_s`` (0: at once),
    at most ``max_spread_s`` (their poll interval: they would have come by then anyway)."""
    if rate_per_s <= 0 or n <= 1:
        return 0.0
    return min(max_spread_s, n / rate_per_s)


def device_topic(device_id: str, prefix: str = "edgefleet") -> str:
    return f"{prefix}/devices/{device_id}/nudge"


def group_topic(tag_key: str, tag_value: str, prefix: str = "edgefleet") -> str:
    return f"{prefix}/groups/{tag_key}/{tag_value}/nudge"


@runtime_checkable
class Notifier(Protocol):
    """Where the control plane sends nudges after a change a device should pick up quickly."""

    def nudge(self, device_ids: Iterable[str]) -> int:
        """Nudge each device; returns how many nudges were handed to the transport."""
        ...

    def nudge_group(self, tag_key: str, tag_value: str) -> bool: ...

    @property
    def connected(self) -> bool: ...

    def close(self) -> None: ...


class NullNotifier:
    """No push channel: devices learn of changes at their next poll."""

    sent = 0

    def nudge(self, device_ids: Iterable[str]) -> int:
        return 0

    def nudge_group(self, tag_key: str, tag_value: str) -> bool:
        return False

    @property
    def connected(self) -> bool:
        return False

    def close(self) -> None:
        pass


class MqttNotifier:
    """Publishes nudges to an MQTT broker (QoS 1) and reconnects in the background.

    While the broker is down, nudges are dropped and counted: the devices still poll on their
    interval, so losing a nudge only costs latency, never correctness.

    Args:
        url: ``mqtt://host:port`` (``mqtts://`` for TLS).
        prefix: first topic level.
        client_id: MQTT client id; default random.
        max_queue: in-flight messages paho keeps before refusing more.
        rate_per_s: a nudge of n devices asks them to poll within n / rate_per_s seconds (0: at once);
            a group nudge (its size unknown here) within ``max_spread_s``.
        max_spread_s: the longest spread asked for (the devices' poll interval).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "edgefleet",
        client_id: str = "",
        max_queue: int = 10_000,
        rate_per_s: float = 0.0,
        max_spread_s: float = 60.0,
    ):
        import paho.mqtt.client as mqtt

        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
            raise ConfigError(f"MQTT URL {url!r} is not mqtt://host:port", hint="e.g. mqtt://127.0.0.1:1883")
        self.prefix = prefix
        self.rate_per_s = rate_per_s
        self.max_spread_s = max_spread_s
        self.sent = 0
        self.dropped = 0
        self._connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_queued_messages_set(max_queue)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        if u.username:
            self._client.username_pw_set(u.username, u.password)
        if u.scheme == "mqtts":
            self._client.tls_set()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        self._client.connect_async(u.hostname, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):  # noqa: ANN001
        if not reason_code.is_failure:
            self._connected.set()
            log.info("MQTT notifier connected")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):  # noqa: ANN001
        self._connected.clear()
        log.warning("MQTT notifier disconnected (%s); devices fall back to polling", reason_code)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _publish(self, topic: str, payload: bytes) -> bool:
        if not self._connected.is_set():
            self.dropped += 1
            return False
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != 0:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def nudge(self, device_ids: Iterable[str]) -> int:
        ids = list(device_ids)
        payload = nudge_payload(spread_for(len(ids), self.rate_per_s, self.max_spread_s))
        return sum(self._publish(device_topic(d, self.prefix), payload) for d in ids)

    def nudge_group(self, tag_key: str, tag_value: str) -> bool:
        within = self.max_spread_s if self.rate_per_s > 0 else 0.0
        return self._publish(group_topic(tag_key, tag_value, self.prefix), nudge_payload(within))

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def make_notifier(
    mqtt_url: str | None,
    *,
    prefix: str = "edgefleet",
    max_queue: int = 10_000,
    rate_per_s: float = 0.0,
    max_spread_s: float = 60.0,
) -> Notifier:
    if not mqtt_url:
        return NullNotifier()
    return MqttNotifier(
        mqtt_url, prefix=prefix, max_queue=max_queue, rate_per_s=rate_per_s, max_spread_s=max_spread_s
    )
