"""The control plane: fleet registry, director (assignments), gated rollouts, TUF repository serving.

    from edgefleet.server import ServerConfig, create_app, start_server
    with start_server(ServerConfig(data_dir="state")) as srv:   # uvicorn in a thread
        print(srv.url, srv.admin_token)

``edgefleet server run`` does the same from the command line; ``uvicorn --factory
edgefleet.server:app_from_env`` runs it with settings from ``EDGEFLEET_SERVER_*``.
"""

from edgefleet.server._app import ServerContext, app_from_env, create_app
from edgefleet.server._auth import Role
from edgefleet.server._blobs import BlobStore, FileBlobStore
from edgefleet.server._config import ServerConfig
from edgefleet.server._db import Database, schema_head
from edgefleet.server._fit import FitResult, VariantSpec, choose_variant
from edgefleet.server._notify import (
    MqttNotifier,
    Notifier,
    NullNotifier,
    device_topic,
    group_topic,
    make_notifier,
)
from edgefleet.server._rollouts import RolloutEngine
from edgefleet.server._runner import ServerHandle, free_port, start_server, start_server_process
from edgefleet.server._schemas import DEFAULT_WAVES, RolloutCreate, RolloutGates
from edgefleet.server._selector import Selector
from edgefleet.server._waves import member_hash, wave_size

__all__ = [
    "DEFAULT_WAVES",
    "BlobStore",
    "Database",
    "FileBlobStore",
    "FitResult",
    "MqttNotifier",
    "Notifier",
    "NullNotifier",
    "Role",
    "RolloutCreate",
    "RolloutEngine",
    "RolloutGates",
    "Selector",
    "ServerConfig",
    "ServerContext",
    "ServerHandle",
    "VariantSpec",
    "app_from_env",
    "choose_variant",
    "create_app",
    "device_topic",
    "free_port",
    "group_topic",
    "make_notifier",
    "member_hash",
    "schema_head",
    "start_server",
    "start_server_process",
    "wave_size",
]
