"""``edgefleet certs init | issue | show``: the control plane's private CA and its server certificates."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from edgefleet.cli._common import console, print_json
from edgefleet.errors import ConfigError

certs_app = typer.Typer(
    help="A small private CA for TLS: server certificates with SANs; devices get theirs at enrollment.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(certs_app, name="certs")


def _passphrase(passphrase_file: Path | None) -> bytes | None:
    if passphrase_file is not None:
        if not passphrase_file.is_file():
            raise ConfigError(f"passphrase file {passphrase_file} does not exist", hint="check the path")
        data = passphrase_file.read_bytes().strip()
        if not data:
            raise ConfigError(
                f"passphrase file {passphrase_file} is empty", hint="write the passphrase into it"
            )
        return data
    env = os.environ.get("EDGEFLEET_CA_PASSPHRASE")
    return env.encode() if env else None


_HOSTS = typer.Option(
    ["127.0.0.1", "localhost"], "--host", help="DNS name or IP the server is reached by (repeat for several)."
)
_PASS = typer.Option(
    None,
    "--passphrase-file",
    help="Encrypt (init) or unlock the CA key with the passphrase in this file (or EDGEFLEET_CA_PASSPHRASE).",
)


@certs_app.command("init")
def init(
    ca_dir: Path = typer.Argument(
        ..., help="Folder to create (mode 0700): ca.crt, ca.key, server.crt, server.key."
    ),
    host: list[str] = _HOSTS,
    name: str = typer.Option("edgefleet CA", help="The CA's common name."),
    days: int = typer.Option(3650, min=1, help="How long the CA is valid."),
    server_days: int = typer.Option(397, min=1, help="How long the server certificate is valid."),
    passphrase_file: Path | None = _PASS,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create a CA and a server certificate for HOSTs; devices pin ca.crt."""
    from edgefleet.tls import CertificateAuthority, cert_expires

    ca = CertificateAuthority.init(ca_dir, name=name, days=days, passphrase=_passphrase(passphrase_file))
    issued = ca.issue_server(host, days=server_days)
    issued.write(ca_dir / "server.crt", ca_dir / "server.key")
    out = {
        "ca_cert": str(ca_dir / "ca.crt"),
        "ca_key": str(ca_dir / "ca.key"),
        "server_cert": str(ca_dir / "server.crt"),
        "server_key": str(ca_dir / "server.key"),
        "hosts": host,
        "server_expires": cert_expires(issued.cert_pem).isoformat(),
    }
    if json_out:
        print_json(out)
        return
    console.print(
        f"[green]created[/] a CA and a server certificate for {', '.join(host)} in {ca_dir}.\n"
        f"  server:  --tls-cert {out['server_cert']} --tls-key {out['server_key']}\n"
        f"  devices: pin {out['ca_cert']} (keep ca.key off the network when you can)",
        highlight=False,
    )


@certs_app.command("issue")
def issue(
    ca_dir: Path = typer.Argument(..., help="The CA folder made by 'certs init'."),
    out: Path = typer.Option(..., "--out", "-o", help="Write OUT.crt and OUT.key (0600)."),
    host: list[str] = _HOSTS,
    days: int = typer.Option(397, min=1, help="How long the certificate is valid."),
    passphrase_file: Path | None = _PASS,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Issue another server certificate (another replica, a new name, a renewal)."""
    from edgefleet.tls import CertificateAuthority, cert_expires

    ca = CertificateAuthority.load(ca_dir, passphrase=_passphrase(passphrase_file))
    issued = ca.issue_server(host, days=days)
    crt, key = out.with_suffix(".crt"), out.with_suffix(".key")
    issued.write(crt, key)
    res = {
        "cert": str(crt),
        "key": str(key),
        "hosts": host,
        "expires": cert_expires(issued.cert_pem).isoformat(),
    }
    if json_out:
        print_json(res)
    else:
        console.print(f"[green]issued[/] {crt} and {key} for {', '.join(host)}", highlight=False)
