"""Helpers shared by the command modules."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, TextIO

from rich.console import Console


def _width(stream: TextIO) -> int | None:
    """The terminal's width; 160 columns when writing to a pipe or a file (rich would wrap wide tables
    at 80), unless COLUMNS says otherwise."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return None if tty or os.environ.get("COLUMNS") else 160


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


def print_json(obj: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout, nothing else."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def daemon_logging() -> None:
    """Long-running commands (agent run, server run) log edgefleet's INFO lines unless -v asked for more."""
    logging.getLogger("edgefleet").setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
