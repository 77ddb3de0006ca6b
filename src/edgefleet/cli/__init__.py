"""The ``edgefleet`` command line: one module per command group, thin over the library."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from edgefleet.cli._common import err_console
from edgefleet.errors import EdgefleetError

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgefleet",
    help="Optimize, sign, roll out and watch ML models on fleets of edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module has ``register(app)``; imports of heavy libraries stay inside the commands so that
# ``edgefleet --help`` is fast on a small device.
_COMMAND_MODULES = [
    "_keys",
    "_certs",
    "_bundle",
    "_registry",
    "_optimize",
    "_distill",
    "_serve",
    "_agent",
    "_server",
    "_rollout",
    "_devices",
    "_release",
    "_retrain",
    "_samples",
    "_update_policy",
    "_telemetry",
    "_fleet",
    "_demo",
    "_sim",
    "_device",
    "_fl",
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"edgefleet {version('edgefleet')}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-v info, -vv debug)."),
    _show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"edgefleet.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command group whose module is not written yet
        if _e.name != f"edgefleet.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, printing edgefleet errors as 'error: ... / hint: ...' and exiting 1."""
    try:
        app(args=argv, standalone_mode=True)
    except EdgefleetError as e:
        err_console.print(f"[bold red]error:[/] {e.message}", highlight=False, markup=True)
        if e.hint:
            err_console.print(f"[yellow]hint:[/] {e.hint}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
