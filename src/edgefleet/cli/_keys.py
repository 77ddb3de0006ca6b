"""``edgefleet keys init | show | rotate``: the registry's signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edgefleet.cli._common import console, print_json

if TYPE_CHECKING:
    from edgefleet.registry import KeyStore

keys_app = typer.Typer(
    help="Signing keys of the TUF registry: root (offline, threshold), targets (publisher), "
    "snapshot and timestamp (online, server).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("init")
def init(
    keys_dir: Path = typer.Argument(..., help="Directory to create (mode 0700; keys are 0600 PEM files)."),
    root_keys: int = typer.Option(3, "--root-keys", min=1, help="How many root keys."),
    threshold: int = typer.Option(2, "--threshold", min=1, help="Root keys needed to sign a new root."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete and replace keys already in KEYS_DIR."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create root, targets, snapshot and timestamp keys."""
    from edgefleet.registry import init_keys

    store = init_keys(keys_dir, root_keys=root_keys, root_threshold=threshold, overwrite=overwrite)
    if json_out:
        print_json(
            {
                "keys_dir": str(store.dir),
                "root_threshold": threshold,
                "keys": [k.to_dict() for k in store.key_files()],
            }
        )
        return
    _print_keys(store, None)
    console.print(
        f"[green]created[/] {len(store.key_files())} keys in {store.dir} (root threshold {threshold} of {root_keys}). "
        "Keep root keys offline; give the publisher only targets-*.pem; the server needs snapshot-*.pem "
        "and timestamp-*.pem."
    )


@keys_app.command("show")
def show(
    keys_dir: Path = typer.Argument(..., help="Key directory."),
    repo: Path | None = typer.Option(None, "--repo", help="Also say which keys this repository trusts."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the keys in a directory (role, key id, file, mode) and whether a repository trusts them."""
    from edgefleet.registry import KeyStore, Repository

    store = KeyStore(keys_dir)
    trusted = None
    if repo is not None:
        root = Repository(repo).root()
        trusted = {kid: role for role, r in root.roles.items() for kid in r.keyids}
    if json_out:
        rows = []
        for k in store.key_files():
            d = k.to_dict()
            if trusted is not None:
                d["trusted"] = trusted.get(k.keyid) == k.role
            rows.append(d)
        print_json({"keys_dir": str(store.dir), "root_threshold": store.root_threshold, "keys": rows})
        return
    _print_keys(store, trusted)


def _print_keys(store: KeyStore, trusted: dict[str, str] | None) -> None:
    from rich.table import Table

    t = Table("role", "key id", "file", "mode", *(["trusted by repo"] if trusted is not None else []))
    for k in store.key_files():
        extra = []
        if trusted is not None:
            extra = ["[green]yes[/]" if trusted.get(k.keyid) == k.role else "[red]no[/]"]
        t.add_row(k.role, k.keyid[:16], k.path.name, f"{k.mode:04o}", *extra)
    console.print(t)


@keys_app.command("rotate")
def rotate(
    role: str = typer.Argument(..., help="root, targets, snapshot or timestamp."),
    keys: Path = typer.Option(
        ..., "--keys", help="Key directory with the root keys (threshold) and online keys."
    ),
    repo: Path = typer.Option(..., "--repo", help="Repository directory."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Replace a role's key: new key saved, new root signed by the root threshold, metadata re-signed.

    `root` replaces every root key at once (same count and threshold): the new root is signed by the old
    threshold and the new keys, so devices follow the chain; the old root keys are deleted here.
    """
    from edgefleet.registry import Repository

    result = Repository(repo, keys).rotate_key(role)
    if json_out:
        print_json(result.to_dict())
        return
    if role == "root":
        where = "keep the new root keys offline, apart from each other"
    else:
        where = f"copy the new key where the {role} role signs"
    console.print(
        f"[green]rotated[/] {role} key {', '.join(k[:16] for k in result.old_keyids)} -> "
        f"{', '.join(k[:16] for k in result.new_keyids)} (root v{result.root_version}); "
        f"saved as {', '.join(result.key_paths)}; the rotated-out private keys are deleted; {where}."
    )
