"""README's table of stages names real commands: each one it shows answers ``--help``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app

ROOT = Path(__file__).resolve().parents[1]


def table_commands() -> list[list[str]]:
    """Every ``edgefleet ...`` command in the README's stage table, as argv lists (``a / b`` alternatives
    expanded under the same group; options, file names, placeholders and ``...`` left out)."""
    text = (ROOT / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`edgefleet " in line]
    out: list[list[str]] = []
    for row in rows:
        for code in re.findall(r"`(edgefleet [^`]+)`", row):
            words = code.removeprefix("edgefleet ").replace("...", "").strip()
            first, *alternatives = [p.strip() for p in words.split(" / ")]
            head = [w for w in first.split() if re.fullmatch(r"[a-z][a-z-]*", w)]
            out.append(head)
            out += [[*head[:-1], alt] for alt in alternatives]  # "a b / c": a b, a c
    return out


def test_the_table_shows_the_new_capabilities():
    groups = {c[0] for c in table_commands()}
    assert {"optimize", "samples", "retrain", "distill", "fl", "device", "sim", "rollout"} <= groups


@pytest.mark.parametrize("argv", table_commands(), ids=" ".join)
def test_each_table_command_exists(argv):
    r = CliRunner().invoke(app, [*argv, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output
