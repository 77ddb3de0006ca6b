"""``edgefleet demo``: the whole flow on this machine (the story is ``edgefleet.sim._demo``)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import console, err_console, print_json
from edgefleet.errors import ConfigError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        dir: Path = typer.Option(
            Path("edgefleet-demo"), "--dir", help="State directory, left behind to explore."
        ),  # noqa: A002
        devices: int = typer.Option(8, "--devices", min=2, max=32, help="Agent processes to run."),
        keep_running: bool = typer.Option(
            False, "--keep-running", help="Keep server, agents and traffic running until Ctrl-C."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of training, traffic and the bad release."),
        json_out: bool = typer.Option(
            False, "--json", help="Print the final summary as JSON (narration to stderr)."
        ),
        story: str = typer.Option(
            "rollout",
            "--story",
            help="rollout: three releases through gated waves, the bad one halted. loop: one region's inputs "
            "shift; samples come back, a scripted reviewer labels them, retraining makes the next release "
            "and its gated rollout restores accuracy. federated: the devices train the model on data that "
            "never leaves them (Flower); the federated model goes out through gated waves. power: a scripted "
            "battery-and-heat trace (a stand-in) drives each device's power policy: smaller model, lower rate, "
            "deferred download, switches back after the hysteresis.",
        ),
        insecure_http: bool = typer.Option(
            False,
            "--insecure-http",
            help="Run the control plane in clear text with device tokens (loopback only), as before TLS.",
        ),
    ) -> None:
        """Train, optimize, sign and roll out three releases to real agents on loopback; the bad one is halted.

        Runs on embedded defaults (SQLite, no MQTT) in a few minutes and leaves DIR to explore. The control
        plane serves HTTPS with a private CA made in DIR/tls, and the agents authenticate with the device
        certificates they get at enrollment (mutual TLS).
        """
        from edgefleet.sim import run_demo
        from edgefleet.sim._demo_config import DemoConfig
        from edgefleet.sim._narrator import RichNarrator

        # SIGTERM and SIGHUP end the demo like Ctrl-C does: every process it started is stopped. Ctrl-C's
        # own handler is set too: a shell starts background jobs with SIGINT ignored, and Python then
        # leaves it ignored (a demo started with `&` and interrupted with kill -INT ran to its end).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.default_int_handler)
        out = err_console if json_out else console
        narrator = RichNarrator(out)

        def explore(summary: dict[str, Any], cmds: list[str]) -> None:
            verdict = (
                "[bold green]the story went as planned[/]" if summary["ok"] else "[bold red]unexpected end[/]"
            )
            out.print(f"\n{verdict} in {summary['duration_s']:.0f}s; state kept in {summary['dir']}")
            out.print("explore it:")
            for c in cmds:
                out.print(f"  {c}", highlight=False, soft_wrap=True)

        def ready(summary: dict[str, Any], cmds: list[str]) -> None:
            if not keep_running:
                return  # printed once every process has stopped
            if json_out:
                print_json(summary)
            explore(summary, cmds)
            out.print(
                f"dashboard: {summary['dashboard']} (operator token in {summary['server']['admin_token_file']})",
                highlight=False,
                soft_wrap=True,
            )
            if summary.get("trust_ca"):
                out.print(
                    f"its certificate chains to the demo's private CA: trust {summary['trust_ca']} in your "
                    "browser, or pass --ca to the edgefleet CLI",
                    highlight=False,
                    soft_wrap=True,
                )
            out.print("[bold]server, agents and traffic keep running; Ctrl-C stops them[/]")

        if story not in ("rollout", "loop", "federated", "power"):
            raise ConfigError(
                f"--story {story!r} is not a story of the demo", hint="use rollout, loop, federated or power"
            )
        cfg = DemoConfig(
            dir=dir, devices=devices, keep_running=keep_running, seed=seed, tls=not insecure_http, story=story
        )
        try:
            summary = run_demo(cfg, narrator=narrator, on_ready=ready)
        except KeyboardInterrupt:
            out.print(f"interrupted; every process the demo started is stopped (state kept in {dir})")
            raise typer.Exit(130) from None
        if not keep_running:
            if json_out:
                print_json(summary)
            explore(summary, summary["explore"])
        if not summary["ok"]:
            raise typer.Exit(1)
