"""MQTT nudges: a message on ``edgefleet/devices/<id>/nudge`` makes the agent poll now.

Nothing the device trusts travels over MQTT: a nudge carries no assignment, only "poll now".
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any
from urllib.parse import urlparse

__all__ = ["nudge_topic", "start_nudge_listener"]

log = logging.getLogger(__name__)


def nudge_topic(device_id: str) -> str:
    return f"edgefleet/devices/{device_id}/nudge"


def start_nudge_listener(url: str, device_id: str, event: threading.Event) -> Any:
    """Connect to the broker at ``mqtt://host:port`` and set ``event`` on every nudge.

    paho reconnects by itself when the broker goes away; polling keeps working meanwhile.
    """
    import paho.mqtt.client as mqtt

    u = urlparse(url)
    if u.scheme not in ("mqtt", "tcp", ""):
        raise ValueError(f"unsupported MQTT URL {url!r} (use mqtt://host:port)")
    topic = nudge_topic(device_id)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgefleet-agent-{uuid.uuid4().hex[:8]}"
    )
    if u.username:
        client.username_pw_set(u.username, u.password)

    def on_connect(c: Any, _userdata: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        if not rc.is_failure:
            c.subscribe(topic, qos=1)
            log.info("listening for nudges on %s", topic)

    def on_message(_c: Any, _userdata: Any, msg: Any) -> None:
        log.info("nudge received on %s", msg.topic)
        event.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=60)
    client.connect_async(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
    client.loop_start()
    return client
