"""Helpers shared by the command modules."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console

from edgefleet.client import DEFAULT_URL, Client
from edgefleet.errors import InputError


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


def emit(result: Any, json_out: bool, show: Callable[..., None] | None = None, **options: Any) -> None:
    """Print a command's result: as JSON with ``--json``, else as ``show(result, **options)``."""
    if json_out:
        print_json(result)
    elif show is not None:
        show(result, **options)


def load_preprocess(path: Path) -> list[dict[str, Any]]:
    """A preprocessing contract file: a JSON/YAML list of steps (or ``{steps: [...]}`` / ``{preprocess: [...]}``)."""
    import yaml

    try:
        steps = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(
            f"cannot read the preprocessing contract {path}: {e}", hint="write a JSON/YAML list of steps"
        ) from e
    if isinstance(steps, dict):
        steps = steps.get("steps", steps.get("preprocess", steps))
    if not isinstance(steps, list):
        raise InputError(
            f"{path} must hold a list of steps (or {{'steps': [...]}})",
            hint='e.g. [{"op": "scale", "factor": 0.0625}]',
        )
    return steps


# --- commands that drive a running control plane -----------------------------------------------

ServerUrl = Annotated[str, typer.Option("--server", envvar="EDGEFLEET_SERVER_URL", help="Control plane URL.")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="EDGEFLEET_TOKEN", help="Operator token (efo_...).")
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        envvar="EDGEFLEET_TOKEN_FILE",
        help="File holding the operator token (default: edgefleet-server/admin-token if present).",
    ),
]
CaFile = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        envvar="EDGEFLEET_CA_FILE",
        help="The control plane's CA certificate (ca.crt) an https server must chain to.",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


_KW = inspect.Parameter.KEYWORD_ONLY
_CONNECTION = [
    inspect.Parameter("server", _KW, annotation=ServerUrl, default=DEFAULT_URL),
    inspect.Parameter("token", _KW, annotation=Token, default=None),
    inspect.Parameter("token_file", _KW, annotation=TokenFile, default=None),
    inspect.Parameter("ca", _KW, annotation=CaFile, default=None),
]
_JSON = inspect.Parameter("json_out", _KW, annotation=JsonOut, default=False)


def operator_command(
    group: typer.Typer,
    name: str,
    *,
    show: Callable[..., None] | None = None,
    json_option: bool = True,
    doc: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(api, **options) -> result`` as the command ``name`` of ``group``.

    The command gets ``--server``, ``--token``, ``--token-file`` and ``--ca`` (and ``--json`` unless
    ``json_option`` is False), opens an :class:`edgefleet.client.Client` for ``fn`` and prints what
    ``fn`` returns: as JSON with ``--json``, else as ``show(result)``; ``show`` also gets the values
    of the command's options it names as further parameters (``show(rows, state)``).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
        ]
        wanted = list(inspect.signature(show).parameters)[1:] if show is not None else []

        def command(
            *,
            server: str,
            token: str | None,
            token_file: Path | None,
            ca: Path | None = None,
            json_out: bool = False,
            **kw: Any,
        ) -> None:
            with Client(server, token=token, token_file=token_file, ca_file=ca) as api:
                result = fn(api, **kw)
            emit(result, json_out, show, **{k: kw[k] for k in wanted})

        params = own[1:] + _CONNECTION + ([_JSON] if json_option else [])
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__ = fn.__name__
        command.__qualname__ = fn.__qualname__
        command.__module__ = fn.__module__
        command.__doc__ = doc or fn.__doc__
        group.command(name)(command)
        return fn

    return register


# --- parsing and formatting shared by the operator commands ------------------------------------


def parse_duration(text: str, *, positive: bool = False) -> float:
    """Seconds from ``30s``, ``10m``, ``12h``, ``7d`` or plain seconds (above zero if ``positive``)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        v = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise InputError(
            f"cannot read duration {text!r}", hint="use e.g. 30s, 10m, 12h, 7d or plain seconds"
        ) from None
    if positive and v <= 0:
        raise InputError(f"duration {text!r} must be positive", hint="use e.g. 12h")
    if v < 0:
        raise InputError(f"duration {text!r} is negative", hint="use e.g. 10m")
    return v


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """``key=value`` items (of the option ``--what``) as a dict."""
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            raise InputError(f"{what} {item!r} is not key=value", hint=f"e.g. --{what} region=eu-west")
        out[k] = v
    return out


def parse_numbers(items: list[str] | None, what: str) -> dict[str, float]:
    """``key=number`` items (of the option ``--what``) as a dict of floats; a clear error otherwise."""
    pairs = parse_pairs(items, what)
    try:
        return {k: float(v) for k, v in pairs.items()}
    except ValueError:
        bad = next(f"{k}={v}" for k, v in pairs.items() if not _is_number(v))
        raise InputError(
            f"--{what} {bad!r}: the value is not a number", hint=f"e.g. --{what} min_requests=100"
        ) from None


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def ago(t: float | None) -> str:
    """How long ago a UNIX time was, in the unit that reads best."""
    import time

    if t is None:
        return "-"
    s = time.time() - t
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def tags_text(tags: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in tags.items())
