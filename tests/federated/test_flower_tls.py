"""Flower's transport security with edgefleet's CA: a SuperLink serving TLS with a certificate from the CA
and SuperNode authentication on; real flower-superlink / flower-supernode processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import digits_federation, wait_for
from edgefleet.federated import Coordinator, JobSpec, SuperNode
from edgefleet.federated._security import issue_superlink_cert, node_key, superlink_hosts
from edgefleet.tls import CertificateAuthority

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_tls_job_completes_and_refuses_a_node_without_the_ca_or_without_a_registered_key(tmp_path):
    folders, base, held_out = digits_federation(2, tmp_path / "data")
    CertificateAuthority.init(tmp_path / "ca")
    other_ca = CertificateAuthority.init(tmp_path / "other-ca")
    tls = issue_superlink_cert(tmp_path / "ca", superlink_hosts("127.0.0.1"), tmp_path / "job" / "tls")
    spec = JobSpec(
        job_id="tls", rounds=1, clients_per_round=2, min_clients=2, local_epochs=1, learning_rate=0.5,
        round_deadline_s=120,
    )  # fmt: skip
    coordinator = Coordinator(tmp_path / "job", spec, base, eval_data=held_out, tls=tls)
    started: list = [coordinator]
    try:
        coordinator.start()
        # device 0: a SuperNode with a node key edgefleet makes; device 1: a manual device, `edgefleet fl keygen`
        # then `edgefleet fl join --root-certificates --node-key` (the operator registers its .pub)
        public = node_key(tmp_path / "node0" / "node.key")
        assert coordinator.register_node(public, name="device0") > 0
        nodes = [
            SuperNode(coordinator.address, folders[0], tmp_path / "node0", root_certificates=tls.ca_certfile,
                      auth_key=tmp_path / "node0" / "node.key")
        ]  # fmt: skip
        from typer.testing import CliRunner

        from edgefleet.cli import app

        (tmp_path / "node1").mkdir()
        made = CliRunner().invoke(app, ["fl", "keygen", str(tmp_path / "node1" / "node.key")])
        assert made.exit_code == 0, made.output
        assert (
            coordinator.register_node((tmp_path / "node1" / "node.key.pub").read_text(), name="device1") > 0
        )
        (tmp_path / "sys").mkdir()  # an empty device tree: the busy test machine does not block training
        join = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "fl", "join", coordinator.address, "--data-dir", str(folders[1]),
             "--work-dir", str(tmp_path / "node1"), "--state-source", f"sysfs:{tmp_path / 'sys'}",
             "--duration", "4m", "--root-certificates", str(tls.ca_certfile),
             "--node-key", str(tmp_path / "node1" / "node.key")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        # a stranger with the right CA but a key the job never registered
        node_key(tmp_path / "stranger" / "node.key")
        stranger = SuperNode(coordinator.address, folders[0], tmp_path / "stranger",
                             root_certificates=tls.ca_certfile, auth_key=tmp_path / "stranger" / "node.key")  # fmt: skip
        # a registered device that trusts another CA: it must not talk to this SuperLink
        wrong_ca = SuperNode(coordinator.address, folders[1], tmp_path / "node1-wrong-ca",
                             root_certificates=other_ca.directory / "ca.crt", auth_key=tmp_path / "node0" / "node.key")  # fmt: skip
        for node in (*nodes, stranger, wrong_ca):
            started.append(node)
            node.start()

        events = coordinator.wait(timeout_s=240)
        rounds = [e for e in events if e["event"] == "round"]
        assert rounds[0]["answered"] == 2 and rounds[0]["aggregated"]
        assert events[-1]["event"] == "finished"

        wait_for(lambda: not stranger.alive() and not wrong_ca.alive(), 120)
        assert "node key is not registered" in stranger.failure()
        assert "TLS refused" in wrong_ca.failure()
        log = (coordinator.job_dir / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in log
    finally:
        if "join" in locals():
            os.killpg(join.pid, signal.SIGTERM)
            join.wait(60)
        for proc in reversed(started):
            proc.stop()
