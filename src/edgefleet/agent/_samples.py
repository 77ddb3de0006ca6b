"""Sampling on the device (issue 13): which policy the runtime host's ``Sampler`` follows, and the upload of
the samples it queued.

Policy, most specific first:

1. the device group's policy from the server (``GET /v1/devices/{id}/sample-policy``, read every
   ``policy_interval_s``): an operator changes it per group without a new release;
2. the served bundle's ``sampling.json`` (a ``SamplerConfig`` subset shipped in the release, listed in its
   manifest's ``files`` so its hash is checked with the bundle's);
3. the agent's own ``EDGEFLEET_SAMPLER_*`` settings (off unless enabled).

The device-local settings (``hash_key``, ``byte_budget``, ``max_sample_bytes``, ``seed``) always come from
3; a policy sets rates, caps, privacy and ``allow_metered``. Samples wait in the durable outbox at its lowest
priority (``sample``: evicted first when it is full, evictions counted) and are uploaded to
``POST /v1/devices/{id}/samples`` with the telemetry, never while ``metered()`` says the link is metered
unless the policy allows it. A batch the server refuses (4xx) is dropped and counted: one bad sample must
not block the queue.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.agent._director import ServerUnreachable
from edgefleet.errors import AuthError, EdgefleetError
from edgefleet.telemetry import Sampler, SamplerConfig

__all__ = ["DeviceSampling", "SAMPLING_FILE"]

log = logging.getLogger(__name__)

SAMPLING_FILE = "sampling.json"
_POLICY_KEYS = {
    "enabled",
    "rate",
    "low_confidence_threshold",
    "low_confidence_rate",
    "escalated_rate",
    "per_class_daily_cap",
    "daily_byte_budget",
    "privacy",
    "allow_metered",
}
_MAX_POLICY_BYTES = 64 * 1024
_UPLOAD_BYTES = 192 * 1024  # under the server's default request body limit (256 KiB)


class DeviceSampling:
    """The device's sampler, its policy (server group > bundle > agent settings) and the sample uploads.

    Args:
        outbox: the agent's outbox (samples are queued there as kind ``sample``), or None (sampling off).
        director: the agent's ``DirectorClient``.
        device_id: this device.
        base: the agent's own sampler settings (default: ``EDGEFLEET_SAMPLER_*``).
        metered: says whether the uplink is metered now (a device-state hook; default: never).
        policy_interval_s: how often the server's policy is read.
    """

    def __init__(
        self,
        outbox: Any,
        director: Any,
        device_id: str,
        *,
        base: SamplerConfig | None = None,
        metered: Callable[[], bool] = lambda: False,
        policy_interval_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox, self.director, self.device_id = outbox, director, device_id
        self.base = base or SamplerConfig()
        self.metered = metered
        self.policy_interval_s = policy_interval_s
        self._mono = monotonic
        self.sampler = Sampler(self.base, outbox=outbox)
        self.source = "agent"
        self._bundle: tuple[Path | None, dict[str, Any] | None] = (None, None)
        self._server: dict[str, Any] | None = None
        self._policy_t = -math.inf
        self.counters = {"uploaded": 0, "refused": 0, "no_request_id": 0, "deferred_metered": 0}

    # --- policy -------------------------------------------------------------------------------

    def bundle_loaded(self, root: Path | None) -> None:
        """The host now serves the bundle unpacked at ``root``: read its ``sampling.json`` (if any)."""
        if root is None or self._bundle[0] == root:
            return
        policy = None
        f = Path(root) / SAMPLING_FILE
        try:
            if f.is_file():
                if f.stat().st_size > _MAX_POLICY_BYTES:
                    raise ValueError(f"larger than {_MAX_POLICY_BYTES} bytes")
                policy = self._checked(json.loads(f.read_text()))
        except (OSError, ValueError, EdgefleetError) as e:
            log.warning("%s of %s ignored (agent settings used): %s", SAMPLING_FILE, root, e)
        self._bundle = (Path(root), policy)
        self._apply()

    def refresh_policy(self, *, force: bool = False) -> None:
        """Read the device group's policy from the server when due (best effort: offline keeps the last)."""
        now = self._mono()
        if not force and now - self._policy_t < self.policy_interval_s:
            return
        try:
            got = self.director.get(f"/v1/devices/{self.device_id}/sample-policy")
            policy = got.get("policy")
            self._server = None if policy is None else {**self._checked(policy), "_source": got.get("source")}
        except (ServerUnreachable, AuthError) as e:
            log.info("sample policy not refreshed: %s", e)
            return
        except (EdgefleetError, ValueError) as e:
            log.warning("sample policy from the server ignored: %s", e)
        self._policy_t = now
        self._apply()

    def _checked(self, policy: Any) -> dict[str, Any]:
        if not isinstance(policy, dict):
            raise ValueError("a sample policy is a JSON object")
        unknown = set(policy) - _POLICY_KEYS
        if unknown:
            raise ValueError(f"unknown sample policy keys {sorted(unknown)}")
        SamplerConfig.model_validate({**self.base.model_dump(), **policy})  # refuse bad values now
        return {"enabled": True, **policy}

    def _apply(self) -> None:
        policy, source = None, "agent"
        if self._server is not None:
            policy = {k: v for k, v in self._server.items() if k != "_source"}
            source = str(self._server.get("_source") or "server")
        elif self._bundle[1] is not None:
            policy, source = self._bundle[1], "bundle"
        cfg = (
            self.base
            if policy is None
            else SamplerConfig.model_validate({**self.base.model_dump(), **policy})
        )
        if cfg != self.sampler.config:
            log.info("sample policy from %s: rate %s, privacy %s", source, cfg.rate, cfg.privacy)
        self.sampler.update(cfg)
        self.source = source

    # --- upload -------------------------------------------------------------------------------

    def upload(self, *, max_batches: int = 10) -> int:
        """Upload queued samples (unless the link is metered and the policy says no); return how many."""
        if self.outbox is None:
            return 0
        if self.metered() and not self.sampler.config.allow_metered:
            self.counters["deferred_metered"] += 1
            return 0
        sent = 0
        for _ in range(max_batches):
            items = self.outbox.batch(max_bytes=_UPLOAD_BYTES, kinds=["sample"])
            if not items:
                break
            good = [i for i in items if isinstance(i.payload, dict) and i.payload.get("request_id")]
            self.counters["no_request_id"] += len(items) - len(good)
            if good:
                body = {"samples": [i.payload for i in good]}
                try:
                    self.director.post(f"/v1/devices/{self.device_id}/samples", body)
                except (ServerUnreachable, AuthError) as e:
                    log.info("sample upload deferred: %s", e)
                    break
                except EdgefleetError as e:  # refused as invalid: dropping it keeps the queue moving
                    log.warning("server refused %d samples (dropped): %s", len(good), e)
                    self.counters["refused"] += len(good)
                    good = []
            self.outbox.ack([i.id for i in items])
            sent += len(good)
        self.counters["uploaded"] += sent
        return sent

    def stats(self) -> dict[str, Any]:
        """The policy's source, the sampler's counters and the upload counters (for ``agent status``)."""
        return {"source": self.source, "sampler": dict(self.sampler.counters), **self.counters}
