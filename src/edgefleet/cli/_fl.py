"""``edgefleet fl start | join | status | export``: federated learning on Flower.

``start`` runs a job's SuperLink on this (the control-plane) host and waits for it with live progress;
``join`` is the device side: a SuperNode for the job, started only if the device's state allows;
``status`` reads a job folder's progress (``--watch`` follows it); ``export`` writes the final head back
into the base model with the job's lineage and, with ``--repo``, makes it a signed release of the base
optimized with the base's budget.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet.cli._common import console, emit, err_console, parse_duration
from edgefleet.errors import InputError

fl_app = typer.Typer(help="Federated learning across the fleet, on Flower.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(fl_app, name="fl")


def _load_xy(path: Path) -> tuple[Any, Any]:
    from edgefleet.federated import load_dataset

    if path.is_dir():
        return load_dataset(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="pass an .npz with x and y, or a folder of them")
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # one file: read it through the same bounded reader
        (Path(d) / path.name).symlink_to(path.resolve())
        return load_dataset(Path(d))


def _round_table(events: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title="rounds", show_lines=False)
    for col in (
        "round",
        "selected",
        "answered",
        "late",
        "dropped",
        "KiB down",
        "KiB up",
        "s",
        "accuracy",
        "ε",
    ):
        table.add_column(col, justify="right")
    for e in events:
        if e.get("event") != "round":
            continue
        eps = e.get("epsilon")
        acc = e.get("accuracy")
        table.add_row(
            str(e["round"]),
            str(e["selected"]),
            str(e["answered"]),
            str(e["late"]),
            str(e["dropped"]),
            f"{e['bytes_down'] / 1024:.1f}",
            f"{e['bytes_up'] / 1024:.1f}",
            f"{e['seconds']:.1f}",
            "-" if acc is None else f"{acc:.3f}",
            "-" if eps is None else f"{eps:.2f}",
        )
    return table


def _summary(job_dir: Path) -> dict[str, Any]:
    from edgefleet.federated import JobSpec, read_progress
    from edgefleet.federated._coordinator import job_state

    spec = JobSpec.load(job_dir)
    events = read_progress(job_dir)
    rounds = [e for e in events if e.get("event") == "round"]
    return {
        "job_id": spec.job_id,
        "state": job_state(events),
        "rounds_done": len(rounds),
        "rounds": spec.rounds,
        "events": events,
    }


def _show_progress(job_dir: Path, *, watch: bool, until=None) -> dict[str, Any]:
    """Print (or, with ``watch``, follow until finished/failed) a job's rounds as a rich table and bar."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    summary = _summary(job_dir)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console)
    task = bar.add_task(f"job {summary['job_id']}", total=summary["rounds"], completed=summary["rounds_done"])

    def view(s: dict[str, Any]):
        bar.update(task, completed=s["rounds_done"], description=f"job {s['job_id']} ({s['state']})")
        return Group(bar, _round_table(s["events"]))

    if not watch:
        console.print(view(summary))
        return summary
    with Live(view(summary), console=console, refresh_per_second=2) as live:
        while summary["state"] not in ("finished", "failed") and (until is None or until()):
            time.sleep(0.5)
            summary = _summary(job_dir)
            live.update(view(summary))
    return summary


@fl_app.command("start")
def start(
    job_dir: Annotated[Path, typer.Argument(help="Folder for the job (created).")],
    job_id: Annotated[str, typer.Option("--job-id", help="Name of the job (lowercase, digits, -).")],
    base_model: Annotated[
        Path | None, typer.Option("--base-model", help="ONNX model whose final Softmax(linear) layer trains.")
    ] = None,
    base_head: Annotated[
        Path | None, typer.Option("--base-head", help="Or a head .npz (W [F,C], b [C]) on raw features.")
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option("--eval-data", help="Server-held .npz (x, y) to score each round.")
    ] = None,
    rounds: int = typer.Option(5, help="Rounds of training."),
    clients_per_round: int = typer.Option(5, help="Devices sampled per round."),
    min_clients: int = typer.Option(2, help="Answers a round needs by its deadline to count."),
    local_epochs: int = typer.Option(1, help="Epochs each device trains per round."),
    learning_rate: float = typer.Option(0.1, help="Devices' learning rate."),
    deadline: str = typer.Option("30s", help="Round deadline: the round closes with whoever answered."),
    strategy: str = typer.Option("fedavg", help="fedavg, fedprox or fedadam (Flower's)."),
    trainer: str = typer.Option(
        "numpy", help="numpy, or torch: devices that have torch fine-tune the head with it (numpy where not)."
    ),
    proximal_mu: float = typer.Option(0.1, help="FedProx's proximal term."),
    dp_noise: Annotated[
        float | None, typer.Option("--dp-noise", help="DP noise multiplier (enables central DP).")
    ] = None,
    dp_clip: float = typer.Option(1.0, "--dp-clip", help="DP: clients clip their update to this L2 norm."),
    dp_delta: float = typer.Option(1e-5, "--dp-delta", help="DP: the δ ε is reported at."),
    secagg: bool = typer.Option(
        False,
        "--secagg",
        help="Flower's SecAgg+: the server sees only the sum of the devices' masked updates. Dropout "
        "tolerance: a round still unmasks while every sampled device keeps at least --secagg-threshold live "
        "share holders (itself included): with the default shares (every sampled device) up to "
        "sampled - threshold devices may drop after sharing their keys; more halt the round (the head is "
        "kept). Each of its four exchanges waits at most --deadline. Not with --dp-noise or "
        "--update-compression; needs --clients-per-round >= 3.",
    ),
    secagg_shares: Annotated[
        int | None,
        typer.Option(
            "--secagg-shares", help="SecAgg+: share holders per device (default: every sampled device)."
        ),
    ] = None,
    secagg_threshold: Annotated[
        int | None,
        typer.Option(
            "--secagg-threshold",
            help="SecAgg+: shares needed to rebuild a device's mask secret (default: 60 % of the shares, at "
            "least 2); below --secagg-shares. Higher: more privacy, fewer dropouts tolerated.",
        ),
    ] = None,
    update_compression: str = typer.Option(
        "none",
        "--update-compression",
        help="What devices send: none (the new head), int8 (their delta, per-tensor int8 with a scale: "
        "~1/4 of the bytes) or topk:FRACTION (the largest FRACTION of the delta's entries with their "
        "indices); error feedback keeps what was left out for the next round. Not with --dp-noise.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address the SuperLink listens on (devices connect to it)."),
    port: int = typer.Option(0, help="SuperLink port (0: a free one)."),
    out: Annotated[
        Path | None, typer.Option("--out", help="With --base-model: write the federated model here.")
    ] = None,
    timeout: str = typer.Option("1h", help="Give up on the job after this long."),
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve the job's Prometheus metrics on this port.")
    ] = None,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Register the job with this control plane: the devices --selector picks are told to join "
            "through their heartbeat, and the job's rounds and end are reported there.",
        ),
    ] = None,
    selector: str = typer.Option("*", "--selector", help="With --server: the devices that take part."),
    advertise: Annotated[
        str | None,
        typer.Option("--advertise", help="With --server: the SuperLink host:port devices connect to."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="EDGEFLEET_TOKEN", help="Operator token (deployer).")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", envvar="EDGEFLEET_TOKEN_FILE", help="File with the token.")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", envvar="EDGEFLEET_CA_FILE", help="The control plane's CA cert.")
    ] = None,
    tls_ca_dir: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca-dir",
            help="edgefleet's CA folder (`certs init`, the one devices pinned): the SuperLink gets a certificate "
            "for its host names from it and serves TLS; SuperNodes must then be registered (node keys). "
            "Passphrase: EDGEFLEET_CA_PASSPHRASE.",
        ),
    ] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="Or the SuperLink's own TLS certificate (PEM)...")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option("--ssl-keyfile", help="...its key...")] = None,
    ssl_ca_certfile: Annotated[
        Path | None,
        typer.Option("--ssl-ca-certfile", help="...and the CA that issued it (devices trust it)."),
    ] = None,
    node_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--node-key",
            help="With TLS: a device's SuperNode public key (OpenSSH, from `fl keygen`) to accept; repeat. "
            "Agents send theirs through the control plane (--server).",
        ),
    ] = None,
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Run the SuperLink in clear text without SuperNode authentication on a non-loopback address "
        "(a clear-text --server http:// implies it).",
    ),
) -> None:
    """Start a federated job: its Flower SuperLink runs here until the job ends; devices join it (with
    --server, the control plane tells the selected devices' agents to join). With TLS (--tls-ca-dir or
    --ssl-*; required when --server is https) only registered SuperNodes may join."""
    from edgefleet.federated import Coordinator, JobSpec, SoftmaxHead, export_model, head_of_model
    from edgefleet.federated._security import CLEAR_TEXT_WARNING, NodeKeyRegistrar, check_node_public_key

    if (base_model is None) == (base_head is None):
        raise InputError("give exactly one of --base-model and --base-head")
    if not secagg and (secagg_shares is not None or secagg_threshold is not None):
        raise InputError("--secagg-shares and --secagg-threshold need --secagg", hint="add --secagg")
    privacy = (
        None
        if dp_noise is None
        else {"noise_multiplier": dp_noise, "clipping_norm": dp_clip, "delta": dp_delta}
    )
    spec = JobSpec.parse(
        {
            "job_id": job_id,
            "rounds": rounds,
            "clients_per_round": clients_per_round,
            "min_clients": min_clients,
            "local_epochs": local_epochs,
            "learning_rate": learning_rate,
            "round_deadline_s": parse_duration(deadline, positive=True),
            "strategy": strategy,
            "trainer": trainer,
            "proximal_mu": proximal_mu,
            "privacy": privacy,
            "secagg": {"shares": secagg_shares, "threshold": secagg_threshold} if secagg else None,
            "update_compression": update_compression,
        }
    )
    feature_model = None
    if base_model is not None:
        head, feature_model = head_of_model(base_model)
    else:
        assert base_head is not None
        import numpy as np

        try:
            with np.load(base_head, allow_pickle=False) as npz:
                head = SoftmaxHead.from_arrays([npz["W"], npz["b"]])
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"cannot read the head {base_head}: {e}", hint="an .npz with W and b") from e
    tls = _superlink_tls(
        job_dir, host, advertise, server, tls_ca_dir, (ssl_certfile, ssl_keyfile, ssl_ca_certfile), insecure
    )
    manual_keys = [(p, check_node_public_key(_read_text(p), str(p))) for p in node_key or []]
    if manual_keys and tls is None:
        raise InputError(
            "--node-key needs TLS", hint="give --tls-ca-dir or --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile"
        )
    if tls is None:
        err_console.print(f"[yellow]warning: {CLEAR_TEXT_WARNING}[/]")
    coordinator = Coordinator(
        job_dir,
        spec,
        head,
        eval_data=_load_xy(eval_data) if eval_data else None,
        feature_model=feature_model,
        host=host,
        port=port or None,
        tls=tls,
    )
    api = reporter = registrar = None
    if server is not None:
        from edgefleet.client import Client
        from edgefleet.server._selector import Selector

        Selector.parse(selector)  # a bad selector is an error before any process starts
        api = Client(server, token=token, token_file=token_file, ca_file=ca)
    coordinator.start()
    try:
        for path, public in manual_keys:
            coordinator.register_node(public, name=path.stem)
    except BaseException:
        coordinator.stop()
        raise
    if api is not None:
        try:
            api.create_fl_job(
                job_id,
                advertise or coordinator.address,
                duration_s=parse_duration(timeout, positive=True),
                selector=selector,
                spec=spec.model_dump(mode="json"),
            )
        except BaseException:
            coordinator.stop()
            api.close()
            raise
        reporter = _ControlPlaneReport(api, job_id, coordinator)
        if tls is not None:
            registrar = NodeKeyRegistrar(api, job_id, coordinator)
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        from edgefleet.federated import JobCollector

        registry = CollectorRegistry()
        registry.register(JobCollector(coordinator.job_dir))
        start_http_server(metrics_port, addr=host, registry=registry)
    try:
        if not json_out:
            console.print(
                f"SuperLink for job [bold]{job_id}[/] at {coordinator.address} "
                f"({'TLS, registered SuperNodes only' if tls else 'clear text'}); devices join with"
            )
            trust = f"--root-certificates {tls.ca_certfile} --node-key KEY" if tls else "--insecure"
            console.print(f"  edgefleet fl join {advertise or coordinator.address} --data-dir DIR {trust}")
            _show_progress(coordinator.job_dir, watch=True, until=coordinator.alive)
        coordinator.wait(parse_duration(timeout, positive=True))
    except BaseException as e:
        if reporter is not None:
            reporter.end(e)
        if reporter is not None and reporter.stopped_there:
            raise InputError(
                f"federated job {job_id} was stopped on the control plane",
                hint=f"see `GET /v1/fl/jobs/{job_id}`",
            ) from None
        raise
    finally:
        if registrar is not None:
            registrar.stop()
        coordinator.stop()
        if api is not None:
            if reporter is not None:
                reporter.end(None)
            api.close()
    result = _summary(coordinator.job_dir)
    if out is not None and base_model is not None:
        result["export"] = export_model(coordinator.job_dir, base_model, out)
        if not json_out:
            console.print(f"federated model written to {out}")
    emit(result, json_out)


CHECK_STOP_S = 5.0  # fl start --server: longest time before an operator's stop on the control plane is seen


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")[:4096]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"cannot read {path}: {e}", hint="give the .pub file `edgefleet fl keygen` wrote"
        ) from e


def _superlink_tls(
    job_dir: Path,
    host: str,
    advertise: str | None,
    server: str | None,
    ca_dir: Path | None,
    ssl: tuple[Path | None, Path | None, Path | None],
    insecure: bool,
) -> Any:
    """The SuperLink's TLS (a ``FlowerTLS``), or None for clear text where that is allowed: the control plane
    is clear text (``--server http://``), the SuperLink listens on loopback only, or ``--insecure``."""
    import os

    from edgefleet.federated._security import FlowerTLS, issue_superlink_cert, superlink_hosts
    from edgefleet.tls import is_loopback

    given = [p for p in ssl if p is not None]
    if given and ca_dir is not None:
        raise InputError("give --tls-ca-dir or --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile, not both")
    if given and len(given) != 3:
        raise InputError(
            "--ssl-certfile, --ssl-keyfile and --ssl-ca-certfile go together",
            hint="the certificate, its key and the CA that issued it",
        )
    if (given or ca_dir is not None) and insecure:
        raise InputError(
            "--insecure and a TLS certificate contradict each other", hint="leave --insecure out"
        )
    if given:
        cert, key, ca = given
        return FlowerTLS.from_files(cert, key, ca)
    if ca_dir is not None:
        passphrase = os.environ.get("EDGEFLEET_CA_PASSPHRASE")
        return issue_superlink_cert(
            ca_dir,
            superlink_hosts(host, advertise),
            Path(job_dir) / "tls",
            passphrase=passphrase.encode() if passphrase else None,
        )
    if server is not None and server.lower().startswith("https://"):
        raise InputError(
            "the control plane runs TLS, so the job's SuperLink must too",
            hint="give --tls-ca-dir DIR (the CA folder its devices pinned: `edgefleet certs init`), or "
            "--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile",
        )
    if not (insecure or server is not None or is_loopback(host)):
        raise InputError(
            f"the SuperLink would listen on {host} in clear text",
            hint="give --tls-ca-dir DIR (or --ssl-*), or --insecure to accept clear text",
        )
    return None


class _ControlPlaneReport:
    """Posts a registered job's rounds to the control plane as they close (a thread), and its end. An
    operator's stop there (the progress post is refused) stops the job's SuperLink here."""

    def __init__(self, api: Any, job_id: str, coordinator: Any) -> None:
        import threading

        self.api, self.job_id, self.coordinator = api, job_id, coordinator
        self.stopped_there = False
        self._ended = False
        self._posted = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fl-report", daemon=True)
        self._thread.start()

    def _rounds(self) -> list[dict[str, Any]]:
        from edgefleet.federated import read_progress

        return [e for e in read_progress(self.coordinator.job_dir) if e.get("event") == "round"]

    def _run(self) -> None:
        from edgefleet.errors import ConflictError, EdgefleetError

        last = 0.0
        while not self._stop.wait(1.0):
            rounds = self._rounds()
            # a new round, or every few seconds anyway: an operator's stop is seen within that
            if len(rounds) == self._posted and time.monotonic() - last < CHECK_STOP_S:
                continue
            try:
                self.api.fl_job_progress(self.job_id, rounds)
                self._posted, last = len(rounds), time.monotonic()
            except ConflictError:  # stopped (or ended) on the control plane: the job stops here too
                self.stopped_there = True
                self.coordinator.stop()
                return
            except EdgefleetError as e:  # the control plane is away: the job goes on, reported later
                last = time.monotonic()
                err_console.print(f"[yellow]could not report progress: {e.message}[/]")

    def end(self, error: BaseException | None) -> None:
        """Mark the job finished (``error`` None), failed or stopped there (once; best effort)."""
        from edgefleet.errors import EdgefleetError

        if self._ended:
            return
        self._ended = True
        self._stop.set()
        self._thread.join(5)
        if self.stopped_there:
            return
        if error is None:
            state, reason = "finished", None
        elif isinstance(error, KeyboardInterrupt | SystemExit):
            state, reason = "stopped", "fl start was interrupted"
        else:
            state, reason = "failed", str(error)[:1000]
        try:
            self.api.stop_fl_job(self.job_id, state=state, reason=reason, rounds=self._rounds())
        except EdgefleetError as e:
            err_console.print(f"[yellow]could not report the job's end to the control plane: {e.message}[/]")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


@fl_app.command("join")
def join(
    superlink: Annotated[str, typer.Argument(help="The job's SuperLink, host:port.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The device's dataset folder (.npz: x, y).")],
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Where the SuperNode keeps its state.")] = Path(
        "fl-node"
    ),
    state_source: str = typer.Option("sysfs", help="Device state: sysfs, sysfs:ROOT or scripted:TRACE."),
    min_battery: float = typer.Option(50.0, help="On battery, train only above this level (%)."),
    allow_metered: bool = typer.Option(False, help="Train on a metered link too."),
    duration: str = typer.Option("1h", help="Leave the job after this long."),
    root_certificates: Annotated[
        Path | None,
        typer.Option(
            "--root-certificates",
            help="The CA that issued the SuperLink's certificate (the control plane's ca.crt); default: the "
            "system's store.",
        ),
    ] = None,
    node_key: Annotated[
        Path | None,
        typer.Option(
            "--node-key",
            help="This device's SuperNode key (`fl keygen`; its .pub goes to the operator's `fl start --node-key`).",
        ),
    ] = None,
    insecure: bool = typer.Option(
        False, "--insecure", help="Clear text, no SuperNode authentication (a SuperLink started without TLS)."
    ),
) -> None:
    """Join a federated job from this device while its state allows (idle, power or battery, unmetered)."""
    from edgefleet.federated import SuperNode, TrainingPolicy, load_dataset
    from edgefleet.federated._security import CLEAR_TEXT_WARNING
    from edgefleet.federated._security import node_key as read_node_key
    from edgefleet.power import open_state_source

    load_dataset(data_dir)  # a bad folder is an error now, not a failed round later
    if insecure and (root_certificates or node_key):
        raise InputError("--insecure takes no --root-certificates or --node-key", hint="leave --insecure out")
    if not insecure and node_key is None:
        raise InputError(
            "a SuperLink with TLS accepts registered SuperNodes only: give --node-key",
            hint="`edgefleet fl keygen node.key`, give node.key.pub to the operator (`fl start --node-key`); "
            "--insecure for a clear-text SuperLink",
        )
    for what, path in (("--root-certificates", root_certificates), ("--node-key", node_key)):
        if path is not None and not path.is_file():
            raise InputError(f"{what} {path} does not exist", hint="check the path")
    if node_key is not None:
        read_node_key(node_key)  # an unreadable key is an error now
    if insecure:
        err_console.print(f"[yellow]warning: {CLEAR_TEXT_WARNING}[/]")
    source = open_state_source(state_source)
    policy = TrainingPolicy(min_battery_percent=min_battery, allow_metered=allow_metered)
    node = SuperNode(
        superlink,
        data_dir,
        work_dir,
        root_certificates=root_certificates,
        auth_key=node_key,
        insecure=insecure,
    )
    end = time.monotonic() + parse_duration(duration, positive=True)
    retry_at = 0.0
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the SuperNode (own session) is stopped too
    try:
        while time.monotonic() < end:
            ok, why = policy.allows(source.read())
            failure = node.failure()
            if failure is not None and retry_at == 0.0:
                err_console.print(
                    f"[red]the SuperNode could not join {superlink}: {failure}[/] (retrying in 30 s)"
                )
                retry_at = time.monotonic() + 30.0
            if ok and not node.alive() and time.monotonic() >= retry_at:
                console.print(f"joining {superlink}")
                retry_at = 0.0
                node.start()
            elif not ok and node.alive():
                console.print(f"leaving the job: {why}")
                node.stop()
            time.sleep(2.0)
    finally:
        node.stop()


@fl_app.command("keygen")
def keygen(
    out: Annotated[
        Path, typer.Argument(help="Write the private key here (0600) and its public key to OUT.pub.")
    ],
) -> None:
    """A SuperNode key for `fl join --node-key` (ECDSA P-256, OpenSSH); the operator accepts OUT.pub with
    `fl start --node-key`. An existing key is kept."""
    from edgefleet.federated._security import node_key as make_node_key

    public = make_node_key(out)
    pub = out.with_name(out.name + ".pub")
    pub.write_text(public + "\n", encoding="ascii")
    console.print(f"node key {out}; give {pub} to the operator:\n{public}", highlight=False)


@fl_app.command("status")
def status(
    job_dir: Annotated[Path, typer.Argument(help="The job's folder.")],
    watch: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """A job's rounds: selected, answered, late, dropped, bytes, accuracy, ε."""
    if json_out:
        emit(_summary(job_dir), True)
        return
    _show_progress(job_dir, watch=watch)


@fl_app.command("export")
def export(
    job_dir: Annotated[Path, typer.Argument(help="The finished job's folder.")],
    base_model: Annotated[Path, typer.Option("--base-model", help="The ONNX model the job started from.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the federated model.")],
    repo: Annotated[
        Path | None,
        typer.Option(
            "--repo",
            help="The TUF repository the base release is published in: the model is optimized for each of "
            "its variants with that variant's budget, bundled and signed into it (needs --keys, --name, "
            "--version).",
        ),
    ] = None,
    keys: Annotated[
        Path | None, typer.Option("--keys", help="With --repo: the publisher's key folder (targets key).")
    ] = None,
    work: Annotated[
        Path | None,
        typer.Option(
            "--work", help="With --repo: folder for optimizer runs and bundles (default JOB/release)."
        ),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="A base that is not a published release: one fp32 bundle archive here, no optimizer "
            "(needs --name, --version).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The release's model name.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="The new release's version.")] = None,
    parent_version: Annotated[
        str | None,
        typer.Option(
            "--parent-version", help="The base release's version (with --repo: default the newest)."
        ),
    ] = None,
    preprocess: Annotated[
        Path | None,
        typer.Option(
            "--preprocess",
            help="With --bundle: the base release's preprocessing contract (JSON/YAML); --repo reads it "
            "from the base release.",
        ),
    ] = None,
    golden_data: Annotated[
        Path | None,
        typer.Option(
            "--golden-data",
            help=".npz whose x holds raw inputs (before preprocessing) for the golden set and drift "
            "reference (default: the job's held-out set, which is in the model's input space).",
        ),
    ] = None,
    device_classes: Annotated[
        str | None, typer.Option("--device-classes", help="With --bundle: e.g. gateway,sensor (a tag).")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="With --repo: register the release on this control plane and start its gated rollout "
            "(policy approval by default: each next wave waits for `edgefleet rollout approve`).",
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="EDGEFLEET_TOKEN", help="Operator token (deployer).")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", envvar="EDGEFLEET_TOKEN_FILE", help="File with the token.")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", envvar="EDGEFLEET_CA_FILE", help="The control plane's CA cert.")
    ] = None,
    selector: Annotated[
        str | None, typer.Option("--selector", help="With --server: rollout selector.")
    ] = None,
    waves: Annotated[str | None, typer.Option("--waves", help="With --server: e.g. 10,50,100.")] = None,
    soak: Annotated[
        str | None, typer.Option("--soak", help="With --server: soak per wave, e.g. 10m.")
    ] = None,
    policy: str = typer.Option(
        "approval", "--policy", help="With --server: approval (an operator approves each next wave) or auto."
    ),
    gate: Annotated[
        list[str] | None, typer.Option("--gate", help="With --server: a rollout gate, e.g. min_devices=2.")
    ] = None,
    device_gate: Annotated[
        list[str] | None, typer.Option("--device-gate", help="With --server: a device-side gate, k=v.")
    ] = None,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write the job's final head into the base model (lineage in OUT.lineage.json: no device ids); with
    --repo, a release of the base optimized with its budget and signed; with --server too, registered and
    rolled out through gated waves; with --bundle, one fp32 bundle of an unpublished base."""
    from edgefleet.cli._common import load_preprocess
    from edgefleet.federated import bundle_model, export_model, release_from_job

    if repo is not None and bundle is not None:
        raise InputError(
            "give --repo or --bundle, not both", hint="--repo when the base is a published release"
        )
    if (repo is not None or bundle is not None) and not (name and version):
        raise InputError(
            f"{'--repo' if repo is not None else '--bundle'} needs --name and --version",
            hint="e.g. --name digits --version 1.1.0",
        )
    if repo is not None and keys is None:
        raise InputError("--repo needs --keys", hint="the publisher's key folder (the targets key signs)")
    if repo is not None and (preprocess or device_classes):
        raise InputError(
            "--preprocess and --device-classes come from the base release with --repo", hint="leave them out"
        )
    if server is not None and repo is None:
        raise InputError("--server needs --repo", hint="the release is registered from the repository")
    if policy not in ("approval", "auto"):
        raise InputError(f"unknown rollout policy {policy!r}", hint="approval or auto")
    rollout = None
    if server is not None:
        from edgefleet.cli._retrain import _rollout

        rollout = _rollout(selector, waves, soak, policy, gate, device_gate)  # bad values: before any work
    result = export_model(job_dir, base_model, out)
    golden = _load_xy(golden_data)[0] if golden_data else None
    if repo is not None:
        assert name and version and keys
        result["release"] = release_from_job(
            job_dir,
            out,
            repo_dir=repo,
            keys_dir=keys,
            name=name,
            version=version,
            parent_version=parent_version,
            golden_inputs=golden,
            work_dir=work,
        )
        if server is not None:
            from edgefleet.client import Client

            assert rollout is not None
            with Client(server, token=token, token_file=token_file, ca_file=ca) as api:
                rel = api.register_release(name, version)
                result["registered"] = {v["variant"]: v["device_classes"] for v in rel["variants"]}
                r = api.create_rollout(name, version, **rollout)
                result["rollout"] = {"id": r["id"], "policy": r["policy"], "waves": r["waves"]}
    elif bundle is not None:
        assert name and version
        steps = load_preprocess(preprocess) if preprocess else None
        result["bundle"] = str(
            bundle_model(
                job_dir,
                out,
                bundle,
                name=name,
                version=version,
                parent_version=parent_version,
                preprocess=steps,
                golden_inputs=golden,
                device_classes=device_classes,
            )
        )
    emit(result, json_out, _show_export)


def _show_export(r: dict[str, Any]) -> None:
    console.print(f"wrote {r['model']}: {r['lineage']}")
    rel = r.get("release")
    if rel is None:
        return
    from rich.table import Table

    table = Table(
        title=f"{rel['name']} {rel['version']} from {rel['parent_version']}: the optimizer's choice per variant"
    )
    for col in ("variant", "chosen", "accuracy", "KB", "why the others lost", "published"):
        table.add_column(col)
    for v in rel["variants"]:
        lost = "; ".join(
            f"{c['variant']}: {c['why']}" for c in v["candidates"] if c["variant"] != v["chosen"]
        )
        table.add_row(
            v["variant"],
            v["chosen"],
            "-" if v["accuracy"] is None else f"{v['accuracy']:.2f}",
            f"{(v['size_bytes'] or 0) / 1024:.1f}",
            lost or "-",
            v.get("target", "-"),
        )
    console.print(table)
    if r.get("rollout"):
        ro = r["rollout"]
        console.print(
            f"registered; rollout {ro['id']} started (policy {ro['policy']}, waves "
            f"{', '.join(f'{w:g}%' for w in ro['waves'])}): edgefleet rollout show {ro['id']}"
        )


# --- jobs on the control plane (registered by `fl start --server`) --------------------------------


def _show_jobs(jobs: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from edgefleet.cli._common import ago

    table = Table(title="federated jobs")
    for col in ("job", "state", "devices", "SuperLink", "rounds", "accuracy", "ε", "started"):
        table.add_column(col)
    for j in jobs:
        spec = j.get("spec") or {}
        acc, eps = j.get("accuracy"), j.get("epsilon")
        table.add_row(
            j["job_id"],
            j["state"],
            j["selector"],
            j["superlink"],
            f"{j['rounds_done']}/{spec.get('rounds', '?')}",
            "-" if acc is None else f"{acc:.1%}",
            "-" if eps is None else f"{eps:.2f}",
            ago(j.get("created_at")),
        )
    console.print(table if jobs else "no federated jobs (edgefleet fl start --server ... registers one)")


def _show_job(job: dict[str, Any]) -> None:
    _show_jobs([job])
    if job.get("rounds"):
        console.print(_round_table([{"event": "round", **r} for r in job["rounds"]]))


def _register_operator_commands() -> None:
    from edgefleet.cli._common import operator_command

    @operator_command(fl_app, "jobs", show=_show_jobs)
    def jobs(api: Any) -> list[dict[str, Any]]:
        """Federated jobs the control plane knows (newest first): state, devices, rounds, accuracy, ε."""
        return api.fl_jobs()

    @operator_command(fl_app, "job", show=_show_job)
    def job(api: Any, job_id: str = typer.Argument(..., help="The job's id.")) -> dict[str, Any]:
        """One federated job on the control plane, with its rounds."""
        return api.fl_job(job_id)

    @operator_command(fl_app, "stop", show=_show_job)
    def stop(
        api: Any,
        job_id: str = typer.Argument(..., help="The job's id."),
        reason: str | None = typer.Option(None, "--reason", help="Why (kept with the job and audited)."),
    ) -> dict[str, Any]:
        """Stop a federated job: its devices are no longer asked to join, and its `fl start` ends it."""
        return api.stop_fl_job(job_id, state="stopped", reason=reason)


_register_operator_commands()
