"""Nudges: tell devices to poll now. A nudge carries nothing a device trusts, only ``{"poll": true}``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

from edgefleet.errors import ConfigError

__all__ = ["Notifier", "NullNotifier", "MqttNotifier", "make_notifier", "device_topic", "group_topic"]

log = logging.getLogger(__name__)

NUDGE_PAYLOAD = json.dumps({"poll": True}).encode()


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
    """

    def __init__(self, url: str, *, prefix: str = "edgefleet", client_id: str = "", max_queue: int = 10_000):
        import paho.mqtt.client as mqtt

        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
            raise ConfigError(f"MQTT URL {url!r} is not mqtt://host:port", hint="e.g. mqtt://127.0.0.1:1883")
        self.prefix = prefix
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

    def _publish(self, topic: str) -> bool:
        if not self._connected.is_set():
            self.dropped += 1
            return False
        info = self._client.publish(topic, NUDGE_PAYLOAD, qos=1)
        if info.rc != 0:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def nudge(self, device_ids: Iterable[str]) -> int:
        return sum(self._publish(device_topic(d, self.prefix)) for d in device_ids)

    def nudge_group(self, tag_key: str, tag_value: str) -> bool:
        return self._publish(group_topic(tag_key, tag_value, self.prefix))

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def make_notifier(mqtt_url: str | None, *, prefix: str = "edgefleet", max_queue: int = 10_000) -> Notifier:
    if not mqtt_url:
        return NullNotifier()
    return MqttNotifier(mqtt_url, prefix=prefix, max_queue=max_queue)
