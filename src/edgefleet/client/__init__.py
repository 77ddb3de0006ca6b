"""The control plane's operator API from Python: one typed client used by the CLI, the demo and scripts.

    from edgefleet.client import Client

    with Client("http://127.0.0.1:8700", token_file="edgefleet-server/admin-token") as api:
        api.register_release("digits", "1.1.0")
        ro = api.create_rollout("digits", "1.1.0", waves=[5, 25, 100], soak_s=600)
        print(api.rollout(ro["id"])["state"])

Error answers of the server come back as the ``edgefleet.errors`` class it raised (``NotFoundError``,
``ConflictError``, ``AuthError``, ...); a server that cannot be reached raises ``ServerError`` with a hint.
"""

from edgefleet.client._client import DEFAULT_URL, Client, error_from_response

__all__ = ["DEFAULT_URL", "Client", "error_from_response"]
