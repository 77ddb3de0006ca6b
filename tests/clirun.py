"""``edgefleet ARGS`` run in the test's own process: (exit code, stdout, stderr) from pytest's capsys."""

from __future__ import annotations

from typing import Any


def run_cli(capsys: Any, argv: list[Any]) -> tuple[int, str, str]:
    """Run the CLI on ``argv`` (items turned into strings); output printed before the call is dropped."""
    from edgefleet.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
