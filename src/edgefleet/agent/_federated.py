"""Federated learning on the device (issue 14 item 2): the agent joins a job the control plane names.

When the (signed) heartbeat answer names a federated job (``HeartbeatResponse.federated``) and the device's
state allows training (``edgefleet.federated.TrainingPolicy`` over the power module's device state: idle, on
power or battery above a level, unmetered link), the agent starts a Flower SuperNode for the job's SuperLink on
its training data (``AgentConfig.fl_data_dir``, the dataset folder the application fills). It stops the
SuperNode when the job ends, is no longer named, or the state stops allowing it, and journals ``fl_joined`` /
``fl_left`` (and ``fl_declined`` when it cannot join) with the reason. Only head weights leave the device:
Flower's ClientApp (``edgefleet.federated._client_app``) replies with nothing else.

Transport security follows the control plane's: when the agent talks HTTPS to it, the SuperNode talks TLS
to the SuperLink and checks its certificate against the CA the agent pinned at enrollment, and it
authenticates with a per-job node key made here (P-256, ``STATE/federated/JOB/node.key``, 0600) whose public
half the agent sends over its authenticated channel (``POST /v1/devices/{id}/fl/{job}/node-key``); it starts
the SuperNode once ``fl start`` has registered that key with the SuperLink. Only with a clear-text control
plane (``http://``) does the SuperNode run ``--insecure``, with a warning. The job's word never downgrades it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from edgefleet.agent._core import AgentCore
from edgefleet.errors import EdgefleetError

__all__ = ["FederatedParticipation"]

log = logging.getLogger(__name__)

FL_RETRY_S = 30.0  # a refused SuperNode (TLS, node key) is started again after this long


class FederatedParticipation(AgentCore):
    """Mixed into :class:`~edgefleet.agent.Agent`: ``self.fl_node`` is the running SuperNode, if any."""

    fl_node: Any  # edgefleet.federated.SuperNode | None
    _fl_job: Any  # the FederatedJob fl_node runs for
    _fl_named: Any  # the job the last answer named (kept while the server is unreachable)
    _fl_declined: tuple[str, str] | None  # (job id, reason) last journalled as declined
    _fl_retry_at: float  # after a SuperNode was refused: monotonic time before which it is not restarted
    _fl_samples: tuple[str, int] | None  # (job id, samples) of the data checked for that job

    def _fl_init(self) -> None:
        self.fl_node = None
        self._fl_job = None
        self._fl_named = None
        self._fl_declined = None
        self._fl_retry_at = 0.0
        self._fl_samples = None

    def _fl_tick(self, resp: Any) -> None:
        """Join, stay in or leave the named federated job (one pass of the loop)."""
        if resp is not None:
            self._fl_named = resp.federated
        job = self._fl_named
        if job is not None and job.until <= time.time():
            job = None
            if self.fl_node is not None:
                self._fl_leave("the job's time is over")
                return
        if job is None:
            if self.fl_node is not None:
                self._fl_leave("the control plane no longer names the job")
            return
        if self.fl_node is not None and (job.job_id, job.superlink) != (
            self._fl_job.job_id,
            self._fl_job.superlink,
        ):
            self._fl_leave(f"the control plane names another job ({job.job_id})")
        ok, why = self._fl_allowed()
        if not ok:
            if self.fl_node is not None:
                self._fl_leave(why)
            else:
                self._fl_decline(job.job_id, why)
            return
        if self.fl_node is not None and not self.fl_node.alive():
            why = self.fl_node.failure() or "the SuperNode exited"
            self._fl_leave(why)
            self._fl_retry_at = time.monotonic() + FL_RETRY_S
            self._fl_decline(job.job_id, why)
        if self.fl_node is None and time.monotonic() >= self._fl_retry_at:
            self._fl_join(job)

    def _fl_allowed(self) -> tuple[bool, str]:
        from edgefleet.federated import TrainingPolicy

        if self.config.fl_data_dir is None:
            return False, "no training data on this device (AgentConfig.fl_data_dir is not set)"
        policy = TrainingPolicy(
            min_battery_percent=self.config.fl_min_battery_percent,
            max_cpu_pressure=self.config.fl_max_cpu_pressure,
            allow_metered=self.config.fl_allow_metered,
        )
        state = getattr(getattr(self, "power", None), "state", None)
        if state is None:
            return True, "ok"
        return policy.allows(state)

    def _fl_join(self, job: Any) -> None:
        from edgefleet.federated import SuperNode, load_dataset
        from edgefleet.federated._security import CLEAR_TEXT_WARNING, node_key

        assert self.config.fl_data_dir is not None
        work = self.state_dir / "federated" / job.job_id
        try:
            # a bad folder is a clear reason, not failed rounds; read once per job, not on every pass
            # while the node key waits for its registration
            if self._fl_samples is None or self._fl_samples[0] != job.job_id:
                self._fl_samples = (job.job_id, len(load_dataset(self.config.fl_data_dir)[0]))
            if self.creds.server_url.startswith("https://"):
                key = work / "node.key"
                got = self.director.post(
                    f"/v1/devices/{self.creds.device_id}/fl/{job.job_id}/node-key",
                    {"public_key": node_key(key)},
                )
                if not got.get("registered"):
                    self._fl_decline(
                        job.job_id,
                        "sent this device's node key; waiting for the job to register it",
                        "fl_key_sent",
                    )
                    return
                ca = self.identity.ca_file
                node = SuperNode(
                    job.superlink, self.config.fl_data_dir, work,
                    root_certificates=ca if ca.is_file() else None, auth_key=key, insecure=False,
                )  # fmt: skip
            else:
                log.warning(
                    "federated job %s: %s (the control plane is clear text too)",
                    job.job_id,
                    CLEAR_TEXT_WARNING,
                )
                node = SuperNode(job.superlink, self.config.fl_data_dir, work, insecure=True)
            node.start()
        except EdgefleetError as e:
            self._fl_decline(job.job_id, e.message)
            return
        except OSError as e:
            self._fl_decline(job.job_id, f"cannot start the SuperNode: {e}")
            return
        self.fl_node, self._fl_job, self._fl_declined = node, job, None
        self.journal.event(
            "fl_joined",
            job=job.job_id,
            superlink=job.superlink,
            samples=self._fl_samples[1],
            tls=not node.insecure,
        )
        self._save_quietly()

    def _fl_leave(self, reason: str) -> None:
        node, job = self.fl_node, self._fl_job
        self.fl_node, self._fl_job = None, None
        if node is not None:
            with contextlib.suppress(Exception):
                node.stop()
        self.journal.event("fl_left", job=job.job_id if job else None, reason=reason[:300])
        self._save_quietly()

    def _fl_decline(self, job_id: str, reason: str, event: str = "fl_declined") -> None:
        """Journal once per job and reason why the device does not take part (yet)."""
        if self._fl_declined == (job_id, reason):
            return
        self._fl_declined = (job_id, reason)
        self.journal.event(event, job=job_id, reason=reason[:300])
        self._save_quietly()

    def _fl_close(self) -> None:
        if self.fl_node is not None:
            self._fl_leave("the agent stopped")

    def fl_status(self) -> dict[str, Any]:
        job = self._fl_job or self._fl_named
        return {
            "job": job.job_id if job else None,
            "joined": self.fl_node is not None,
            "declined": self._fl_declined[1] if self._fl_declined else None,
        }
