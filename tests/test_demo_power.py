"""``edgefleet demo --story power`` end to end (issue 15): a scripted battery-and-heat trace (the stand-in for a
battery and thermal zone this machine lacks) drives the power policy of real agents.

The demo runs as a subprocess with ``--keep-running`` (3 devices, TLS on as by default). While it runs, headless
Chromium reloads the dashboard's overview and records what the device table's "power policy" column shows for
each device; once the demo is ready the test checks every device's switches against the points its trace and
policy files configure (recomputed here from those files), the dwell, the lowered rate, the deferred download,
and that the dashboard showed the rules coming on and off with the switch count. Then the demo is stopped with
SIGTERM and must leave no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from readmetext import readme_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
LAG_S = 6.0  # most trace seconds between a point and the agent's switch (its 1 s loop on a loaded machine)

# The device table's rows as [cells] with the index of its "power policy" column (no eval: the page's CSP
# forbids it, so this is an expression evaluated over the DevTools protocol, polled from Python).
POWER_CELLS = """
(() => {
  for (const t of document.querySelectorAll('table')) {
    const heads = Array.from(t.querySelectorAll('thead th')).map((th) => th.textContent.trim());
    const i = heads.indexOf('power policy');
    if (i < 0) continue;
    return Array.from(t.querySelectorAll('tbody tr')).map((tr) => {
      const cells = Array.from(tr.children).map((td) => td.textContent.trim());
      return [cells[0], cells[i]];
    });
  }
  return [];
})()
"""


@pytest.fixture(scope="module")
def power_run(tmp_path_factory: pytest.TempPathFactory):
    """Run the demo; while it runs, record the dashboard's power column per device (every ~2 s)."""
    if not CHROMIUM.exists():
        pytest.skip("headless chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("power")
    d = base / "state"
    err = open(base / "narration.txt", "w")  # noqa: SIM115 - closed below
    out = open(base / "summary-stdout.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            *readme_command("edgefleet demo --story power"),
            "--devices",
            "3",
        ]
        + ["--dir", str(d), "--keep-running", "--json"],
        stdout=out,
        stderr=err,
        env={**os.environ, "COLUMNS": "240"},
    )
    seen: dict[str, list[str]] = {}
    try:
        deadline = time.monotonic() + 480
        url = None
        while url is None:  # the control plane's address, from the narration
            assert proc.poll() is None, (base / "narration.txt").read_text()[-4000:]
            assert time.monotonic() < deadline, "the demo's control plane did not start"
            m = re.search(r"(https://127\.0\.0\.1:\d+) \(OpenAPI", (base / "narration.txt").read_text())
            url = m.group(1) if m else None
            time.sleep(0.5)
        token = (d / "server" / "admin-token").read_text().strip()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            ctx = browser.new_context(viewport={"width": 1366, "height": 900}, ignore_https_errors=True)
            page = ctx.new_page()
            page.goto(f"{url}/dashboard?token={token}#overview")
            ready = False
            while True:
                assert proc.poll() is None, (base / "narration.txt").read_text()[-4000:]
                assert time.monotonic() < deadline, "the demo did not become ready"
                page.wait_for_selector("body[data-loaded='overview']", timeout=60_000)
                for name, cell in page.evaluate(POWER_CELLS):
                    if cell not in seen.setdefault(name, []):
                        seen[name].append(cell)
                if ready:
                    break
                ready = (d / "summary.json").exists()  # one more look once the story is over
                time.sleep(1.5)
                page.reload()
            page.screenshot(path=str(base / "overview.png"), full_page=True)
            browser.close()
        summary = json.loads((d / "summary.json").read_text())
        yield summary, d, seen
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo's own: it stops every process it started
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        err.close()
        out.close()
    assert proc.returncode == 130, (base / "narration.txt").read_text()[-4000:]
    after = json.loads((d / "summary.json").read_text())
    started = after["processes"]["started"]  # server, 3 agents, the same 3 restarted on the trace
    assert after["processes"]["running"] == [] and len(started) == 7, started
    for p in started:
        with pytest.raises(ProcessLookupError):
            os.kill(p["pid"], 0)


def _crossings(rows: list[dict], policy: dict) -> list[tuple[str, bool, float]]:
    """Where the trace crosses the policy's points (its own files), with the dwell: (rule, on, trace s)."""
    dwell = policy["min_dwell_s"]
    out = []
    for rule in policy["rules"]:
        when, hyst = rule["when"], rule.get("hysteresis") or {}
        if "headroom_below" in when:
            lim, margin = when["headroom_below"], hyst.get("temp_c", 3.0)

            def value(r):
                return r["trip_c"] - r["temp_c"]
        else:
            lim, margin = when["battery_below"], hyst.get("battery_percent", 5.0)

            def value(r):
                return r["battery_percent"]

        on, changed = False, None
        for r in rows:
            flip = value(r) >= lim + margin if on else value(r) < lim
            if flip and (changed is None or r["t"] - changed >= dwell):
                on, changed = not on, r["t"]
                out.append((rule["name"], on, r["t"]))
    return sorted(out, key=lambda x: x[2])


def test_switches_follow_the_trace_points_hysteresis_and_dwell(power_run):
    s, d, _ = power_run
    assert s["ok"] and s["story"] == "power", json.dumps(s.get("power", {}), indent=1)[:4000]
    rows = yaml.safe_load((d / "power" / "trace.yaml").read_text())
    policy = yaml.safe_load((d / "power" / "policy.yaml").read_text())
    dwell = policy["min_dwell_s"]
    expected = _crossings(rows, policy)
    assert [(r, on) for r, on, _ in expected] == [
        ("hot", True),
        ("low-battery", True),
        ("hot", False),
        ("low-battery", False),
    ]
    # the fan kick: the zone cools below the release point within the dwell after "hot" came on
    hot_on = expected[0][2]
    kick = [r["t"] for r in rows if hot_on < r["t"] < hot_on + dwell and r["trip_c"] - r["temp_c"] >= 18]
    assert kick, "the trace no longer tests the dwell"
    devices = s["power"]["devices"]
    assert len(devices) == 3
    for dev in devices:
        sw = dev["switches"]
        assert [(x["rule"], x["on"]) for x in sw] == [(r, on) for r, on, _ in expected], (dev["name"], sw)
        for x, (_, _, t) in zip(sw, expected, strict=True):
            assert t <= x["t"] <= t + LAG_S, (dev["name"], x, t)
        # the readings each switch saw: the point (on) and the point plus the hysteresis (off)
        hot = [x for x in sw if x["rule"] == "hot"]
        low = [x for x in sw if x["rule"] == "low-battery"]
        assert hot[0]["headroom_c"] < 15 and hot[1]["headroom_c"] >= 18
        assert low[0]["battery_percent"] < 30 and low[1]["battery_percent"] >= 35
        assert low[1]["power_source"] == "ac"
        for rule in ("hot", "low-battery"):  # nothing flaps: changes of a rule are a dwell apart
            ts = [x["t"] for x in sw if x["rule"] == rule]
            assert all(b - a >= dwell for a, b in zip(ts, ts[1:], strict=False)), (rule, ts)
        # the agent's own journal says the same (what the summary was read from)
        hist = json.loads((Path(dev["state_dir"]) / "journal.json").read_text())["history"]
        pol = [e for e in hist if e["event"] == "power_policy"]
        assert [(e["rule"], e["on"]) for e in pol][-4:] == [(x["rule"], x["on"]) for x in sw]
        # the smaller kept version served while a rule was on, the larger one after
        assert dev["variants"][0]["serving"] == "1.0.0" and dev["variants"][0]["instead_of"] == "1.1.0"
        assert dev["variants"][-1]["serving"] == "1.1.0"
        assert hot_on <= dev["variants"][0]["t"] <= hot_on + LAG_S
        # the rate: lowered while a rule is on (4/s hot, 2/s low battery; traffic offers 8/s)
        phases = {tuple(p["rules"]): p for p in dev["served_per_s"]}
        assert phases[()]["served_per_s"] >= 5, dev["served_per_s"]
        assert phases[("hot", "low-battery")]["served_per_s"] <= 2.6, dev["served_per_s"]
        assert phases[("hot",)]["served_per_s"] <= 4.6, dev["served_per_s"]
        assert dev["refused_429"] > 0
        # the download of v1.1.1 waited for the battery, then went ahead
        assert [x["version"] for x in dev["downloads_deferred"]] == ["1.1.1"]
        assert dev["downloads_deferred"][0]["t"] >= expected[1][2]
        low_off = low[1]["t"]
        assert any(a["version"] == "1.1.1" and a["t"] >= low_off for a in dev["activated"])
        assert dev["final_version"] == "1.1.1"
        assert dev["heartbeat"]["power_switches"] == 4 and not dev["heartbeat"]["power_rules"]


def test_dashboard_device_table_shows_rules_and_switch_counts(power_run):
    s, _, seen = power_run
    print("dashboard power cells seen:", json.dumps(seen, indent=1))  # quoted in docs/benchmarks.md
    for dev in s["power"]["devices"]:
        cells = [c.split(";")[0].strip() for c in seen.get(dev["name"], [])]
        # the rules as they came on and went off, with the switch count, in the order they happened
        assert "hot (1 switches)" in cells, (dev["name"], cells)
        assert "low-battery (3 switches)" in cells or "hot, low-battery (2 switches)" in cells, cells
        assert cells[-1] == "normal (4 switches)", cells
