"""MQTT nudges: a message on ``edgefleet/devices/<id>/nudge`` makes the agent poll now, or at a random
moment within the ``within_s`` seconds the message asks for (the server spreads a wave's nudges that way,
``edgefleet.server._notify.nudge_payload``; :func:`nudge_delay` is the one rule, the simulator's too).

Nothing the device trusts travels over MQTT: a nudge carries no assignment, only "poll (soon)". A
malformed, oversized or out-of-range message is read as "poll now"; the spread is capped, and the agent
still polls on its own interval, so a message can make a device poll sooner, never later.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import uuid
from typing import Any
from urllib.parse import urlparse

__all__ = ["nudge_delay", "nudge_topic", "start_nudge_listener"]

log = logging.getLogger(__name__)

MAX_SPREAD_S = 3600.0  # the longest spread a nudge may ask for
MAX_PAYLOAD = 1024  # bytes of a nudge that are read at all


def nudge_delay(payload: bytes, rng: random.Random) -> float:
    """Seconds to wait before polling on a nudge whose message is ``payload``: uniform within its
    ``within_s`` (capped at MAX_SPREAD_S); 0 for "poll now" and for anything that is not a well-formed
    nudge."""
    if not payload or len(payload) > MAX_PAYLOAD:
        return 0.0
    try:
        body = json.loads(payload)
        within = float(body.get("within_s", 0.0)) if isinstance(body, dict) else 0.0
    except (ValueError, TypeError):
        return 0.0
    if not math.isfinite(within) or within <= 0:
        return 0.0
    return rng.uniform(0.0, min(within, MAX_SPREAD_S))


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

    rng = random.Random()
    pending: list[threading.Timer] = []  # at most one spread nudge waits; more while it waits add nothing

    def on_message(_c: Any, _userdata: Any, msg: Any) -> None:
        delay = nudge_delay(msg.payload, rng)
        log.info("nudge received on %s (poll in %.1f s)", msg.topic, delay)
        if delay <= 0:
            event.set()
            return
        if pending and pending[0].is_alive():
            return  # the one already waiting fires within the same kind of spread
        timer = threading.Timer(delay, event.set)
        timer.daemon = True
        pending[:] = [timer]
        timer.start()

    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=60)
    client.connect_async(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
    client.loop_start()
    return client
