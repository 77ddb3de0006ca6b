"""``edgefleet sim SCENARIO``: a simulated fleet, faults and a rollout against a real control plane."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli._common import console, err_console, print_json

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("sim")
    def sim(
        scenario: str = typer.Argument("", help="A shipped scenario's name or a YAML file (see --list)."),
        devices: int | None = typer.Option(
            None, "--devices", min=1, max=200_000, help="Override the fleet size."
        ),
        poll_interval: float | None = typer.Option(
            None, "--poll-interval", min=0.05, help="Override heartbeat seconds."
        ),
        soak: float | None = typer.Option(
            None, "--soak", min=0, help="Override the seconds each wave soaks."
        ),
        out: Path = typer.Option(
            Path("edgefleet-sim"), "--out", help="Report folder (report.md/json, PNG plots)."
        ),
        db: str | None = typer.Option(None, "--db", help="Server database URL (default SQLite in --out)."),
        seed: int = typer.Option(0, "--seed"),
        workers: int | None = typer.Option(
            None,
            "--workers",
            min=1,
            max=256,
            help="Processes the devices run in (default: the scenario's, else one per 2,500 devices up to "
            "the core count; 1 keeps them in this process).",
        ),
        partitions: str = typer.Option(
            "auto",
            "--partitions",
            help="auto: a partitioned region runs in a network namespace and its link goes down where ip netns "
            "works (root, iproute2), else the fault-injecting proxy cuts it; netns or proxy to insist.",
        ),
        server_process: bool = typer.Option(
            False,
            "--server-process",
            help="Run the control plane in processes of its own as `server run` does (scale runs): one "
            "serving the devices, its periodic jobs (the rollout engine) in another.",
        ),
        server_jobs_in_process: bool = typer.Option(
            False,
            "--server-jobs-in-process",
            help="With it, as `server run --jobs-in-process`: the periodic jobs in a thread of the process "
            "serving the devices (implies --server-process).",
        ),
        list_: bool = typer.Option(False, "--list", help="List the shipped scenarios and exit."),
        json_out: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
    ) -> None:
        """Run a fleet scenario (devices, classes, regions, faults), check its expected outcome, write a report.

        Starts a control plane here, enrolls the simulated devices (each its own identity and token), puts each
        region behind its own fault-injecting TCP proxy and rolls the scenario's candidate out through gated
        waves. Exits 1 when the outcome is not the one the scenario expects.
        """
        from edgefleet.errors import ConfigError
        from edgefleet.sim._scenario import load_scenario, shipped_scenarios
        from edgefleet.sim._simreport import check, write_report
        from edgefleet.sim._simrun import run_scenario

        if list_:
            for name in shipped_scenarios():
                console.print(f"{name}: {load_scenario(name).description.strip()}")
            return
        if not scenario:
            raise ConfigError(
                "no scenario given", hint=f"one of {', '.join(shipped_scenarios())}, or a YAML file"
            )
        if partitions not in ("auto", "netns", "proxy"):
            raise ConfigError(
                f"--partitions {partitions!r} is not one of auto, netns, proxy", hint="--partitions auto"
            )
        sc = load_scenario(scenario)
        update: dict[str, Any] = {}
        for key, value in (("devices", devices), ("poll_interval_s", poll_interval), ("soak_s", soak)):
            if value is not None:
                update[key] = value
        sc = sc.model_copy(update=update)
        live = _Live(sc.name) if err_console.is_terminal and not json_out else None
        signal.signal(signal.SIGTERM, _interrupt)  # kill PID: clean up (namespaces, workers) as on Ctrl-C
        try:
            result = run_scenario(
                sc,
                work=out.resolve() / "work",
                database_url=db,
                seed=seed,
                on_sample=live,
                workers=workers,
                server_process=server_process or server_jobs_in_process,
                server_jobs_process=not server_jobs_in_process,
                partitions=partitions,
            )
        finally:
            if live is not None:
                live.stop()
        failures = check(sc, result)
        paths = write_report(sc, result, failures, out)
        verdict = {
            "scenario": sc.name,
            "passed": not failures,
            "failures": failures,
            "report": [str(p) for p in paths],
        }
        if json_out:
            print_json(verdict)
        else:
            console.print(f"{sc.name}: {'[green]passed[/]' if not failures else '[red]FAILED[/]'}")
            for f in failures:
                console.print(f"  - {f}")
            console.print(f"report: {paths[1]}")
        if failures:
            raise typer.Exit(1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _Live:
    """The run as it goes: devices per version, rollout state and wave, heartbeats, errors (rich, stderr)."""

    def __init__(self, name: str) -> None:
        from rich.live import Live

        self.name = name
        self.live = Live(console=err_console, refresh_per_second=4)
        self.live.start()

    def __call__(self, s: dict[str, Any], run: Any) -> None:
        from rich.table import Table

        t = Table(title=f"edgefleet sim {self.name}  t={s['t']:.1f}s")
        for col in ("rollout", "wave", *s["versions"], "heartbeats", "errors", "faults"):
            t.add_column(col)
        faults = ", ".join(f"{f['kind']}@{f['region']}" for f in getattr(run, "live_faults", [])) or "-"
        t.add_row(
            str(s["state"]),
            str(s["wave"]),
            *map(str, s["versions"].values()),
            str(s["heartbeats"]),
            str(s["errors"]),
            faults,
        )
        self.live.update(t)

    def stop(self) -> None:
        self.live.stop()
