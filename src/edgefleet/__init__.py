"""edgefleet: optimize, sign, roll out and watch ML models on fleets of edge devices."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # ``__version__`` is read from the installed metadata only when asked for: importlib.metadata
    # costs more to import than the CLI's help takes to print.
    if name != "__version__":
        raise AttributeError(f"module 'edgefleet' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("edgefleet")
    except PackageNotFoundError:  # running from a source tree without an install
        v = "0.0.0"
    globals()["__version__"] = v
    return v
