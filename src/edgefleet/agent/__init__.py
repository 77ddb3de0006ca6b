"""The device agent: enroll, heartbeat, TUF-verified resumable download, stage, health gate, activate,
watch, commit or roll back, with a journal that survives kill -9 (see DESIGN.md "Device agent").

    from edgefleet.agent import Agent, AgentConfig, enroll

    cfg = AgentConfig(state_dir="/var/lib/edgefleet")
    enroll(cfg, token="...", root_json="root.json", server_url="http://server:8000")
    Agent(cfg).run()
"""

from pathlib import Path

from edgefleet.agent._agent import Agent
from edgefleet.agent._config import AgentConfig
from edgefleet.agent._control import agent_status, request_rollback
from edgefleet.agent._director import ServerUnreachable
from edgefleet.agent._enroll import Credentials, enroll
from edgefleet.agent._host import RuntimeHost
from edgefleet.agent._journal import Journal, JournalState, PendingUpdate, WatchState
from edgefleet.agent._store import ModelStore, StoredModel
from edgefleet.agent._tuf import TrustedRepository

#: The systemd unit shipped with the package (see docs/agent.md).
SYSTEMD_UNIT = Path(__file__).with_name("edgefleet-agent.service")

__all__ = [
    "SYSTEMD_UNIT",
    "Agent",
    "AgentConfig",
    "Credentials",
    "Journal",
    "JournalState",
    "ModelStore",
    "PendingUpdate",
    "RuntimeHost",
    "ServerUnreachable",
    "StoredModel",
    "TrustedRepository",
    "WatchState",
    "agent_status",
    "enroll",
    "request_rollback",
]
