"""``edgefleet publish`` and ``edgefleet registry init | list | show | refresh-timestamp | serve | fetch``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import typer

from edgefleet.cli._common import console, parse_duration, print_json
from edgefleet.cli._keys import open_keys, passphrase_option, root_dir_option

registry_app = typer.Typer(
    help="The TUF image repository: create it, list and show releases, refresh the timestamp, serve, fetch.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.add_typer(registry_app, name="registry")


def _duration(text: str | None) -> timedelta | None:
    return None if text is None else timedelta(seconds=parse_duration(text, positive=True))


def publish(
    bundle: Path = typer.Argument(..., help="Bundle archive (.tar) from `edgefleet bundle create`."),
    repo: Path = typer.Option(..., "--repo", help="Repository directory."),
    keys: Path = typer.Option(..., "--keys", help="Key directory (at least the targets key)."),
    no_delta: bool = typer.Option(
        False, "--no-delta", help="Do not publish a delta from the previous version."
    ),
    init: bool = typer.Option(False, "--init", help="Create the repository first if REPO has none."),
    passphrase_file: Path | None = passphrase_option(),
    root_dir: list[Path] = root_dir_option(),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Sign a bundle (and a delta from its previous version) into the TUF repository."""
    from edgefleet.registry import Repository

    store = open_keys(keys, root_dir, passphrase_file)
    if init and not (repo / "metadata" / "1.root.json").exists():
        Repository.init(repo, store)
        if not json_out:
            console.print(f"initialized a new repository in {repo}")
    r = Repository(repo, store)
    with console.status(f"publishing {bundle.name}..."):
        result = r.publish(bundle, delta=not no_delta)
    if json_out:
        print_json(result.to_dict())
        return
    key = f"{result.name}/{result.version}/{result.variant}"
    if result.unchanged:
        console.print(
            f"[yellow]unchanged[/] {key} is already published with these exact bytes; nothing was written"
        )
        return
    console.print(f"[green]published[/] {key} as {result.target_path} ({result.length:,} bytes)")
    for d in result.deltas:
        console.print(f"  delta from {d.base_version}: {d.target_path} ({d.length:,} bytes, "
                      f"{100 * d.length / max(result.length, 1):.1f}% of the bundle)")  # fmt: skip
    if result.pending:
        console.print(
            "[yellow]pending[/]: no snapshot/timestamp key here; devices see it after the server runs "
            "`edgefleet registry refresh-timestamp`"
        )


@registry_app.command("init")
def init_repo(
    repo: Path = typer.Argument(..., help="Directory for the new repository."),
    keys: Path = typer.Option(..., "--keys", help="Key directory from `edgefleet keys init` (all roles)."),
    timestamp_expiry: str | None = typer.Option(None, help="Timestamp lifetime, e.g. 1d (default 1d)."),
    root_dir: list[Path] = root_dir_option(),
    passphrase_file: Path | None = passphrase_option(),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create an empty TUF repository (root, targets, snapshot, timestamp metadata)."""
    from edgefleet.registry import RegistryConfig, Repository

    cfg = RegistryConfig()
    if (ts := _duration(timestamp_expiry)) is not None:
        cfg = cfg.model_copy(update={"timestamp_expiry": ts})
    r = Repository.init(repo, open_keys(keys, root_dir, passphrase_file), cfg)
    if json_out:
        print_json({"repo": str(r.repo_dir), "root": str(r.root_json_path), **r.status()})
        return
    console.print(f"[green]initialized[/] {r.repo_dir}; devices pin {r.root_json_path}")


@registry_app.command("list")
def list_(
    name: str | None = typer.Argument(None, help="Only this model name."),
    repo: Path = typer.Option(..., "--repo", help="Repository directory."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List published bundles with their size and deltas."""
    from rich.table import Table

    from edgefleet.registry import Repository

    items = Repository(repo).list_versions(name)
    if json_out:
        print_json([p.to_dict() for p in items])
        return
    t = Table("name", "version", "variant", "bytes", "sha256", "deltas from", "published")
    for p in items:
        t.add_row(p.name, p.version, p.variant, f"{p.length:,}", p.sha256[:12],
                  ", ".join(d.base_version for d in p.deltas) or "-", p.published or "")  # fmt: skip
    console.print(t)
    if not items:
        console.print("nothing published yet (`edgefleet publish BUNDLE --repo ... --keys ...`)")


@registry_app.command("show")
def show(
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    variant: str = typer.Argument(...),
    repo: Path = typer.Option(..., "--repo", help="Repository directory."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show one published bundle: target, manifest summary, lineage and deltas."""
    from rich.table import Table

    from edgefleet.registry import Repository

    p = Repository(repo).show(name, version, variant)
    if json_out:
        print_json(p.to_dict())
        return
    t = Table(title=p.key, show_header=False)
    t.add_row("target", p.target_path)
    t.add_row("file", f"targets/{p.url_path}")
    t.add_row("bytes", f"{p.length:,}")
    t.add_row("sha256", p.sha256)
    t.add_row("manifest sha256", p.manifest_sha256 or "")
    t.add_row("created / published", f"{p.created} / {p.published}")
    m = p.manifest
    if m is not None:
        t.add_row("parent version", m.lineage.parent_version or "-")
        if m.lineage.dataset_sha256:
            t.add_row("dataset sha256", m.lineage.dataset_sha256)
        if m.lineage.source_commit:
            t.add_row("source commit", m.lineage.source_commit)
        if m.metrics.accuracy is not None:
            t.add_row("accuracy", f"{m.metrics.accuracy:.4f}")
        t.add_row("inputs", ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in m.inputs))
        t.add_row("preprocess", " -> ".join(s.op for s in m.preprocess) or "-")
    for d in p.deltas:
        t.add_row(f"delta from {d.base_version}", f"{d.target_path} ({d.length:,} bytes, {d.method or '?'})")
    console.print(t)


@registry_app.command("refresh-timestamp")
def refresh_timestamp(
    repo: Path = typer.Option(..., "--repo", help="Repository directory."),
    keys: Path = typer.Option(..., "--keys", help="Key directory with the timestamp (and snapshot) key."),
    expires_in: str | None = typer.Option(None, "--expires-in", help="Lifetime, e.g. 12h (default: config)."),
    passphrase_file: Path | None = passphrase_option(),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Re-sign timestamp (and snapshot when targets changed); run it periodically on the server."""
    from edgefleet.registry import Repository

    ttl = _duration(expires_in)
    result = Repository(repo, open_keys(keys, None, passphrase_file)).refresh_timestamp(ttl)
    if json_out:
        print_json(result.to_dict())
        return
    console.print(
        f"[green]signed[/] timestamp v{result.timestamp_version} -> snapshot v{result.snapshot_version} "
        f"-> targets v{result.targets_version}; expires {result.expires.isoformat()}"
    )


@registry_app.command("serve")
def serve(
    repo: Path = typer.Option(..., "--repo", help="Repository directory."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port (0 picks a free one)."),
) -> None:
    """Serve the repository as static files (any static HTTP server works as well)."""
    from edgefleet.registry import Repository, RepositoryServer

    Repository(repo)  # refuse to serve a directory that is not a repository
    srv = RepositoryServer(repo, host, port)
    console.print(f"serving {repo} at {srv.url} (metadata/ and targets/); Ctrl-C stops")
    try:
        srv.serve_forever()
    finally:
        srv.stop()


@registry_app.command("fetch")
def fetch(
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    variant: str = typer.Argument(...),
    url: str = typer.Option(..., "--url", help="Base URL the repository is served at."),
    root: Path = typer.Option(..., "--root", help="Pinned root.json (the trust anchor)."),
    out: Path = typer.Option(Path("."), "-o", "--out", help="Directory to download into."),
    state: Path = typer.Option(
        Path(".edgefleet-tuf"), "--state", help="Where trusted metadata is kept between runs."
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Download a bundle through python-tuf: refresh, verify metadata, download, verify hashes."""
    from edgefleet.registry import fetch_bundle

    path = fetch_bundle(url, root, name, version, variant, out, state_dir=state)
    if json_out:
        print_json({"path": str(path), "bytes": path.stat().st_size})
        return
    console.print(f"[green]verified[/] {path} ({path.stat().st_size:,} bytes)")
