"""Commands the tests run as README.md shows them (every command README shows is run by a test)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(command: str) -> list[str]:
    """``command`` (e.g. ``edgefleet demo --story loop``) as README shows it in backticks, as the argv
    after ``edgefleet``; fails when README no longer shows it."""
    text = README.read_text()
    assert re.search(rf"`{re.escape(command)}`", text), f"README.md no longer shows `{command}`"
    return command.split()[1:]
