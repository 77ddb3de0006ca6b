"""``edgefleet keys init | show | rotate``: the registry's signing keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edgefleet.cli._common import console, err_console, print_json
from edgefleet.errors import InputError

if TYPE_CHECKING:
    from edgefleet.registry import KeyStore

keys_app = typer.Typer(
    help="Signing keys of the TUF registry: root (offline, threshold), targets (publisher), "
    "snapshot and timestamp (online, server).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


PASSPHRASE_FILE_HELP = (
    "File holding the passphrase of encrypted keys (first line); default: the EDGEFLEET_KEYS_PASSPHRASE "
    "environment variable."
)
ROOT_DIR_HELP = (
    "A folder holding root keys (e.g. a USB stick); repeat for each. KEYS/offline is searched too."
)


def passphrase_option() -> Path | None:
    return typer.Option(
        None, "--passphrase-file", help=PASSPHRASE_FILE_HELP, show_default=False, metavar="FILE"
    )


def root_dir_option() -> list[Path]:
    return typer.Option([], "--root-dir", help=ROOT_DIR_HELP, show_default=False, metavar="PATH")


def read_passphrase(passphrase_file: Path | None) -> bytes | None:
    """The passphrase from ``--passphrase-file`` (its first line), else the environment, else ``None``."""
    from edgefleet.registry import KeyStore

    if passphrase_file is None:
        env = os.environ.get(KeyStore.PASSPHRASE_ENV)
        return env.encode() if env else None
    try:
        mode = stat.S_IMODE(passphrase_file.stat().st_mode)
        lines = passphrase_file.read_bytes().splitlines()
    except OSError as e:
        raise InputError(
            f"cannot read passphrase file {passphrase_file}: {e.strerror or e}",
            hint="pass the file holding the key passphrase (mode 0600), or set EDGEFLEET_KEYS_PASSPHRASE",
        ) from e
    if not lines or not lines[0]:
        raise InputError(
            f"passphrase file {passphrase_file} is empty", hint="write the passphrase on its first line"
        )
    if mode & 0o077:
        err_console.print(f"[yellow]warning[/]: {passphrase_file} can be read by other users; chmod 600 it")
    return lines[0]


def open_keys(
    keys: Path, root_dirs: list[Path] | None = None, passphrase_file: Path | None = None
) -> KeyStore:
    """The key store of a signing command: ``--keys``, ``--root-dir`` folders, the passphrase."""
    from edgefleet.registry import KeyStore

    return KeyStore(keys, root_dirs=root_dirs or (), passphrase=read_passphrase(passphrase_file))


@keys_app.command("init")
def init(
    keys_dir: Path = typer.Argument(..., help="Directory to create (mode 0700; keys are 0600 PEM files)."),
    root_keys: int = typer.Option(3, "--root-keys", min=1, help="How many root keys."),
    threshold: int = typer.Option(2, "--threshold", min=1, help="Root keys needed to sign a new root."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete and replace keys already in KEYS_DIR."),
    root_dir: list[Path] = typer.Option(
        [],
        "--root-dir",
        help="Folder for the root keys: once for all of them, or once per root key (e.g. one USB stick each). "
        "Default: KEYS_DIR/offline.",
        show_default=False,
        metavar="PATH",
    ),
    passphrase_file: Path | None = typer.Option(
        None,
        "--passphrase-file",
        help="Encrypt the root and targets keys with the passphrase on this file's first line "
        "(default: EDGEFLEET_KEYS_PASSPHRASE if set; else unencrypted).",
        show_default=False,
        metavar="FILE",
    ),
    encrypt_online: bool = typer.Option(
        False,
        "--encrypt-online",
        help="Encrypt the snapshot and timestamp keys too; the server then needs EDGEFLEET_KEYS_PASSPHRASE.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create root, targets, snapshot and timestamp keys (root keys apart, in KEYS_DIR/offline or --root-dir)."""
    from edgefleet.registry import init_keys

    passphrase = read_passphrase(passphrase_file)
    if encrypt_online and passphrase is None:
        raise InputError(
            "--encrypt-online needs a passphrase",
            hint="pass --passphrase-file FILE or set EDGEFLEET_KEYS_PASSPHRASE",
        )
    store = init_keys(
        keys_dir,
        root_keys=root_keys,
        root_threshold=threshold,
        overwrite=overwrite,
        root_dirs=root_dir or [keys_dir / "offline"],
        passphrase=passphrase,
        encrypt_online=encrypt_online,
    )
    if json_out:
        print_json(
            {
                "keys_dir": str(store.dir),
                "root_threshold": threshold,
                "root_dirs": [str(d) for d in store.root_dirs],
                "encrypted_roles": sorted(store.encrypted_roles),
                "keys": [k.to_dict() for k in store.key_files()],
            }
        )
        return
    _print_keys(store, None)
    homes = sorted({str(k.path.parent) for k in store.key_files() if k.role == "root"})
    console.print(
        f"[green]created[/] {len(store.key_files())} keys in {store.dir} (root threshold {threshold} of {root_keys}); "
        f"root keys in {', '.join(homes)}"
        + (
            f", root and targets keys encrypted{' (online keys too)' if encrypt_online else ''}."
            if passphrase
            else ", unencrypted (pass --passphrase-file to encrypt the root and targets keys)."
        )
    )
    console.print(
        "Move the root keys offline (each to its own medium) and pass --root-dir when rotating root; "
        "give the publisher only targets-*.pem; the server needs snapshot-*.pem and timestamp-*.pem."
    )


@keys_app.command("show")
def show(
    keys_dir: Path = typer.Argument(..., help="Key directory."),
    repo: Path | None = typer.Option(None, "--repo", help="Also say which keys this repository trusts."),
    root_dir: list[Path] = root_dir_option(),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the keys (role, key id, where the file is, mode, encrypted) and whether a repository trusts them.

    Needs no passphrase: encrypted keys are listed by the key id prefix their file name carries.
    """
    from edgefleet.registry import KeyStore, Repository

    store = KeyStore(keys_dir, root_dirs=root_dir)
    trusted = None
    if repo is not None:
        root = Repository(repo).root()
        trusted = {kid: role for role, r in root.roles.items() for kid in r.keyids}
    if json_out:
        rows = []
        for k in store.key_files():
            d = k.to_dict()
            if trusted is not None:
                d["trusted"] = _trusted(trusted, k)
            rows.append(d)
        print_json(
            {
                "keys_dir": str(store.dir),
                "root_dirs": [str(d) for d in store.root_dirs],
                "absent_root_dirs": [str(d) for d in store.absent_root_dirs],
                "root_threshold": store.root_threshold,
                "keys": rows,
            }
        )
        return
    _print_keys(store, trusted)


def _trusted(trusted: dict[str, str], k: object) -> bool:
    return any(role == k.role and k.matches(kid) for kid, role in trusted.items())


def _print_keys(store: KeyStore, trusted: dict[str, str] | None) -> None:
    from rich.table import Table

    t = Table(
        "role", "key id", "where", "mode", "encrypted", *(["trusted by repo"] if trusted is not None else [])
    )
    for k in store.key_files():
        extra = []
        if trusted is not None:
            extra = ["[green]yes[/]" if _trusted(trusted, k) else "[red]no[/]"]
        t.add_row(k.role, k.keyid[:16], str(k.path), f"{k.mode:04o}", "yes" if k.encrypted else "no", *extra)
    console.print(t)
    if store.absent_root_dirs:
        console.print(
            f"root key folders recorded at keys init but not present now: {', '.join(map(str, store.absent_root_dirs))} "
            "(mount them, or pass --root-dir PATH where they are)"
        )
    elif not store.has("root"):
        console.print("no root keys here (kept offline; pass --root-dir PATH to list them)")


@keys_app.command("rotate")
def rotate(
    role: str = typer.Argument(..., help="root, targets, snapshot or timestamp."),
    keys: Path = typer.Option(
        ..., "--keys", help="Key directory with the root keys (threshold) and online keys."
    ),
    repo: Path = typer.Option(..., "--repo", help="Repository directory."),
    root_dir: list[Path] = root_dir_option(),
    passphrase_file: Path | None = passphrase_option(),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Replace a role's key: new key saved, new root signed by the root threshold, metadata re-signed.

    `root` replaces every root key at once (same count and threshold): the new root is signed by the old
    threshold and the new keys, so devices follow the chain; each new root key is written to the folder
    of the old one it replaces (--root-dir), and the old root keys are deleted.
    """
    from edgefleet.registry import Repository

    result = Repository(repo, open_keys(keys, root_dir, passphrase_file)).rotate_key(role)
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
