"""The operator's kit in deploy/: what can be checked without a container engine is checked here.

compose.yaml against the compose-spec JSON schema, the Dockerfiles with hadolint, the alert rules with
promtool, and every metric the alerts and the Grafana dashboard query against what a real server's
``/metrics`` serves. No image is built and no container runs here (CI has no container engine);
``deploy/container_check.sh`` builds and runs both images where one runs (deploy/README.md).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent
HARDWARE = {"arch": "x86_64", "cores": 4, "ram_mb": 1024, "disk_free_mb": 1000, "device_class": "cpu"}
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every target

# PromQL words that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "delta", "histogram_quantile",
    "by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "offset",
    "topk", "bottomk", "abs", "clamp_min", "clamp_max", "time", "vector", "scalar", "bool",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (label matchers, ranges, groupings and strings removed)."""
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d*e\d+", w)}


def alert_rules() -> list[dict]:
    return [
        r
        for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    ]


def dashboard_exprs() -> list[str]:
    d = json.loads((DEPLOY / "grafana" / "dashboards" / "edgefleet-fleet.json").read_text())
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[set[str], str]:
    """Sample names and text of a real server's /metrics after a device enrolled and sent a heartbeat."""
    from edgefleet.client import Client
    from edgefleet.server import ServerConfig, start_server

    cfg = ServerConfig(data_dir=tmp_path_factory.mktemp("deploy-srv"), engine_tick_s=0.2)
    with start_server(cfg) as srv:
        tok = Client(srv.url, token=srv.admin_token).create_enrollment_token(tags={"region": "eu"})["token"]
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            r = c.post("/v1/enroll", json={"token": tok, "name": "d1", "hardware": HARDWARE})
            r.raise_for_status()
            d = r.json()
            auth = {"Authorization": f"Bearer {d['device_token']}"}
            hb = c.post(
                f"/v1/devices/{d['device_id']}/heartbeat", json={"device_id": d["device_id"]}, headers=auth
            )
            hb.raise_for_status()
            text = c.get("/metrics", headers={"Authorization": f"Bearer {srv.admin_token}"}).text
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    names |= {fam.name for fam in text_string_to_metric_families(text)}  # gauges with no sample yet
    return names, text


def test_metrics_expose_process_figures_and_request_latency_by_route_template(served):
    names, text = served
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names
    hb = [
        s
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "edgefleet_http_request_duration_seconds_count"
        and s.labels.get("route") == "/v1/devices/{device_id}/heartbeat"
    ]
    # the heartbeat's fast path is a plain Starlette route: still labelled by its template, not the id
    assert hb and hb[0].labels["status"] == "200" and hb[0].labels["method"] == "POST" and hb[0].value >= 1
    assert "edgefleet_http_request_duration_seconds_bucket" in names


def test_every_alert_and_dashboard_query_reads_metrics_the_server_exports(served):
    names, _ = served
    exprs = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    assert len(exprs) >= 20
    wanted = set().union(*(metric_names(e) for e in exprs))
    assert "edgefleet_fleet_devices" in wanted and "edgefleet_http_request_duration_seconds_bucket" in wanted
    missing = wanted - names - PROMETHEUS_OWN
    assert not missing, f"queried but not exported by the server: {sorted(missing)}"


def test_metric_name_extraction_catches_an_unknown_metric(served):
    names, _ = served
    assert metric_names('sum by (route) (rate(edgefleet_no_such_metric{route="/x"}[5m])) > 2e9') == {
        "edgefleet_no_such_metric"
    }
    assert "edgefleet_no_such_metric" not in names


def test_alert_rules_are_complete_and_promtool_accepts_them(tmp_path):
    rules = alert_rules()
    assert len(rules) >= 10
    for r in rules:
        assert r["alert"].startswith("Edgefleet") and r["expr"].strip(), r
        assert r["labels"]["severity"] in ("warning", "critical"), r
        assert r["annotations"]["summary"], r
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'); structure and names checked")
    out = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # every dashboard query parses too: checked as recording rules
    rec = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(dashboard_exprs())],
            }
        ]
    }
    (tmp_path / "dash.yml").write_text(yaml.safe_dump(rec))
    out = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "dash.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # the scrape configuration, with its container paths pointed at this checkout
    cfg = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "admin-token").write_text("x")
    cfg = cfg.replace("/etc/prometheus/alerts.yml", str(DEPLOY / "prometheus" / "alerts.yml"))
    cfg = cfg.replace("/edgefleet/admin-token", str(tmp_path / "admin-token"))
    (tmp_path / "prometheus.yml").write_text(cfg)
    out = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_refuses_a_broken_rule(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    bad = {
        "groups": [
            {"name": "g", "rules": [{"alert": "X", "expr": "sum(rate(edgefleet_heartbeats_total[5m]"}]}
        ]
    }
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    assert (
        subprocess.run(
            [promtool, "check", "rules", str(tmp_path / "bad.yml")], capture_output=True
        ).returncode
        != 0
    )


def test_compose_file_matches_the_compose_spec_and_provisions_the_kit():
    out = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"server", "postgres", "mosquitto", "prometheus", "grafana"}
    assert "postgresql+psycopg://" in compose["services"]["server"]["environment"]["EDGEFLEET_SERVER_DB_URL"]
    for svc in compose["services"].values():  # every file a service mounts from here exists
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), v
    dockerfile = (
        DEPLOY
        / compose["services"]["server"]["build"]["context"]
        / compose["services"]["server"]["build"]["dockerfile"]
    )
    assert dockerfile.is_file()
    # the image's ENTRYPOINT with the compose file's command is an invocation the CLI accepts
    entry = next(x for x in dockerfile.read_text().splitlines() if x.startswith("ENTRYPOINT"))
    argv = [*json.loads(entry.split(None, 1)[1]), *compose["services"]["server"]["command"]]
    assert argv[:3] == ["edgefleet", "server", "run"]
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *argv[1:], "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_schema_check_refuses_a_broken_file(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  server:\n    image: x\n    ports: 8700\n")
    out = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
        capture_output=True,
    )
    assert out.returncode != 0


@pytest.mark.parametrize("name", ["server", "agent"])
def test_dockerfiles_are_multi_stage_non_root_and_pass_hadolint(name):
    path = DEPLOY / f"{name}.Dockerfile"
    out = subprocess.run([str(BIN / "hadolint"), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = path.read_text().splitlines()
    assert sum(1 for ln in lines if ln.startswith("FROM ")) >= 2
    user = [ln.split()[1] for ln in lines if ln.startswith("USER ")][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) >= 1000
    if name == "agent":  # lean: the agent extra only
        assert '".[agent]"' in path.read_text() and "server" not in path.read_text().split("FROM")[1]


def test_hadolint_refuses_a_root_image_with_unpinned_apt(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    assert subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True).returncode != 0


def _context_admits(rules: list[str], path: str) -> bool:
    """Whether a build context filtered by .dockerignore ``rules`` holds ``path`` (last match wins)."""
    admitted = True
    for rule in rules:
        keep = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            admitted = keep
    return admitted


def test_the_build_context_holds_what_the_dockerfiles_copy_and_no_local_state():
    """.dockerignore: every COPY source of both Dockerfiles is in the context; a local venv, the tests and
    state folders are not (a context with .venv is gigabytes sent to the engine on every build)."""
    rules = [
        ln.strip()
        for ln in (DEPLOY.parent / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copied = set()
    for name in ("server", "agent"):
        for ln in (DEPLOY / f"{name}.Dockerfile").read_text().splitlines():
            if ln.startswith("COPY ") and "--from=" not in ln:
                copied.update(ln.split()[1:-1])
    assert copied == {"pyproject.toml", "README.md", "src"}
    for path in (*copied, "src/edgefleet/__init__.py"):
        assert _context_admits(rules, path), path
    for path in (".venv/bin/python", "tests/conftest.py", ".git/config", "srv/admin-token", "keys/root.json"):
        assert not _context_admits(rules, path), path
    assert not _context_admits(rules, "src/edgefleet/__pycache__/x.pyc")
    assert _context_admits([], ".venv/bin/python")  # without the file, everything goes


def test_the_container_check_script_parses():
    script = DEPLOY / "container_check.sh"
    assert script.stat().st_mode & 0o111, "not executable"
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
