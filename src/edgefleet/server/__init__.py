"""The control plane: fleet registry, director (assignments), gated rollouts, TUF repository serving.

    from edgefleet.server import ServerConfig, create_app, start_server
    with start_server(ServerConfig(data_dir="state")) as srv:   # uvicorn in a thread
        print(srv.url, srv.admin_token)

``edgefleet server run`` does the same from the command line; ``uvicorn --factory
edgefleet.server:app_from_env`` runs it with settings from ``EDGEFLEET_SERVER_*``.
"""

from edgefleet.server._app import app_from_env, create_app
from edgefleet.server._auth import Role
from edgefleet.server._config import ServerConfig
from edgefleet.server._db import Database
from edgefleet.server._rollouts import RolloutEngine
from edgefleet.server._runner import ServerHandle, free_port, start_server, start_server_process

__all__ = [
    "Database",
    "Role",
    "RolloutEngine",
    "ServerConfig",
    "ServerHandle",
    "app_from_env",
    "create_app",
    "free_port",
    "start_server",
    "start_server_process",
]
