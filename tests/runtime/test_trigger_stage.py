"""The two-stage trigger as a runtime stage, on silero-vad's shipped ONNX model: through ``Runtime`` and
through ``edgefleet serve --trigger`` over HTTP. Gated inputs are answered ``triggered: false`` with no
outputs and the model does not run; the runtime counts model runs and gated requests and estimates the
energy saved from a power figure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.errors import ConfigError
from edgefleet.power import EnergyGate, parse_trigger
from edgefleet.runtime import Runtime, RuntimeConfig
from edgefleet.runtime._config import BatcherConfig, EngineConfig

silero_vad = pytest.importorskip("silero_vad")
MODEL = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
SR = np.array(16000, np.int64)


def _cfg(**kw):
    # silero-vad cannot run on the all-zeros 1-sample warm-up input, and its scalar `sr` cannot be batched
    return RuntimeConfig(engine=EngineConfig(warmup_runs=0), batcher=BatcherConfig(enabled=False), **kw)


@pytest.fixture(scope="module")
def frames():
    from edgefleet.optimize._zoo import synth_speech, vad_frames

    return vad_frames(synth_speech(8.0, seed=1))


def _stream(rt, frames):
    """Feed the chunks in order, carrying the LSTM state across the model's runs (as a client does)."""
    state, out = np.zeros((2, 1, 128), np.float32), []
    for f in frames:
        r = rt.predict({"input": f[None], "state": state, "sr": SR})
        if r.triggered is not False:
            state = r.outputs["stateN"]
        out.append(r)
    return out


def test_parse_trigger_and_bad_specs():
    g = parse_trigger("energy:-40dBFS")
    assert g.hangover == 8 and g.threshold == pytest.approx(0.01)
    assert parse_trigger("energy:-30:3").hangover == 3
    for bad in ("energy", "energy:loud", "frame:-40", "energy:+6dBFS", "energy:6"):
        with pytest.raises(ConfigError, match="trigger"):
            parse_trigger(bad)


def test_runtime_trigger_gates_silero_vad(frames):
    with Runtime.from_bundle(MODEL, _cfg()) as base:
        baseline = _stream(base, frames)
    assert all(r.triggered is None and "triggered" not in r.to_dict() for r in baseline[:3])
    alone = EnergyGate(-40, 8)
    expected = [alone(f) for f in frames]  # the gate alone, same chunks
    assert 0 < sum(expected) < len(frames)

    with Runtime.from_bundle(MODEL, _cfg(power_watts=4.0), trigger=EnergyGate(-40, 8)) as rt:
        got = _stream(rt, frames)
        st = rt.status()["trigger"]
        prom = rt.metrics.exposition().decode()
    assert [r.triggered for r in got] == expected
    runs = sum(expected)
    gated = len(frames) - runs
    assert st["requests"] == len(frames) and st["model_runs"] == runs and st["gated"] == gated
    assert st["share_to_model"] == pytest.approx(runs / len(frames))
    for r in got:
        d = r.to_dict()
        if r.triggered:
            assert set(r.outputs) == {"output", "stateN"} and d["tier"] == "primary"
        else:
            assert r.outputs == {} and d["triggered"] is False and d["tier"] == "gated"
            assert d["events"][0]["kind"] == "gated"
    # every chunk silero-vad calls speech was run by the model; the gated ones are pauses
    base_speech = np.array([float(r.outputs["output"][0, 0]) > 0.5 for r in baseline])
    assert all(got[i].triggered for i in np.flatnonzero(base_speech))
    assert st["energy_method"] == "estimate"
    assert st["energy_saved_mj"] == pytest.approx(gated * st["mean_model_ms"] * 4.0)
    assert f'edgefleet_runtime_trigger_total{{decision="gated"}} {float(gated)}' in prom
    assert f'edgefleet_runtime_trigger_total{{decision="model"}} {float(runs)}' in prom
    assert f'edgefleet_runtime_requests_total{{outcome="ok",tier="gated"}} {float(gated)}' in prom
    assert "edgefleet_runtime_trigger_energy_saved_mj" in prom


def test_trigger_from_config_and_errors(frames):
    with Runtime.from_bundle(MODEL, _cfg(trigger="energy:-20dBFS:0", trigger_input="input")) as rt:
        quiet = rt.predict(
            {"input": np.zeros((1, 576), np.float32), "state": np.zeros((2, 1, 128), np.float32), "sr": SR}
        )
        assert quiet.triggered is False
        st = rt.status()["trigger"]
        assert st["gated"] == 1 and st["energy_saved_mj"] is None  # no power figure: no estimate
        # bad input is still refused before the gate
        with pytest.raises(Exception, match="state"):
            rt.predict({"input": np.zeros((1, 576), np.float32), "sr": SR})
    with pytest.raises(ConfigError, match="not an input"):
        Runtime.from_bundle(MODEL, _cfg(trigger="energy:-40dBFS", trigger_input="audio"))
    with pytest.raises(ConfigError, match="not understood"):
        Runtime(_cfg(trigger="energy:quiet"))


def gate_rms(f):
    return float(np.sqrt(np.mean(np.square(f))))


def _wait_ready(c, proc, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read().decode()}")
        try:
            if c.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not answer /healthz")


def test_serve_trigger_over_http(tmp_path, frames):
    sock, prof = tmp_path / "rt.sock", tmp_path / "device.yaml"
    # the power figure comes from the device profile: RAPL-measured watts win over cpu_watts
    prof.write_text("name: dev\ncores: 1\ndevice:\n  cpu_watts: 2.0\n  compute:\n    rapl_watts: 5.0\n")
    env = {**os.environ, "EDGEFLEET_ENGINE_WARMUP_RUNS": "0"}
    cmd = [sys.executable, "-m", "edgefleet.cli", "serve", str(MODEL), "--uds", str(sock), "--no-batching"]
    proc = subprocess.Popen(
        [*cmd, "--trigger", "energy:-40dBFS:8", "--profile", str(prof)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    gate = EnergyGate(-40, 8)
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://rt", timeout=20
        ) as c:
            _wait_ready(c, proc)
            state = np.zeros((2, 1, 128), np.float32).tolist()
            seen = []
            for f in frames[:80]:
                body = {"inputs": {"input": [f.tolist()], "state": state, "sr": 16000}}
                r = c.post("/v1/predict", json=body)
                assert r.status_code == 200, r.text
                d = r.json()
                assert d["triggered"] is gate(f)
                if d["triggered"]:
                    state = d["outputs"]["stateN"]
                else:
                    assert d["outputs"] == {} and d["predictions"] == [{"tier": "gated"}]
                seen.append(d["triggered"])
            assert True in seen and False in seen
            st = c.get("/v1/model").json()["status"]["trigger"]
            assert st["model_runs"] == sum(seen) and st["gated"] == seen.count(False)
            assert st["energy_method"] == "estimate"
            assert st["energy_saved_mj"] == pytest.approx(st["gated"] * st["mean_model_ms"] * 5.0)
            prom = c.get("/metrics").text
            # the Open Inference Protocol says the same in the response's parameters
            loud, quiet = (frames[int(np.argmax([gate_rms(f) for f in frames]))], np.zeros(576, np.float32))
            for chunk, want, times in (
                (quiet, False, 9),
                (loud, True, 1),
            ):  # 9 quiet ones outlast the hangover
                doc = {
                    "inputs": [
                        {"name": "input", "shape": [1, 576], "datatype": "FP32", "data": chunk.tolist()},
                        {"name": "state", "shape": [2, 1, 128], "datatype": "FP32", "data": [0.0] * 256},
                        {"name": "sr", "shape": [], "datatype": "INT64", "data": [16000]},
                    ],
                    "outputs": [{"name": "output"}],
                }
                for _ in range(times):
                    r = c.post("/v2/models/silero_vad/infer", json=doc)
                    assert r.status_code == 200, r.text
                body = r.json()
                assert body["parameters"] == {"triggered": want}
                assert [o["name"] for o in body["outputs"]] == (["output"] if want else [])
            assert f'edgefleet_runtime_trigger_total{{decision="gated"}} {float(seen.count(False))}' in prom
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert "trigger: EnergyGate(-40 dBFS, hangover 8)" in proc.stderr.read().decode()


def test_serve_bad_trigger_is_a_clear_error(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\ncores: 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "serve", str(MODEL), "--trigger", "loudness"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "trigger 'loudness' is not understood" in r.stderr
    assert "Traceback" not in r.stderr
    env = {**os.environ, "EDGEFLEET_ENGINE_WARMUP_RUNS": "0"}
    for extra, says in (
        (["--trigger-input", "audio"], "trigger input 'audio' is not an input of silero_vad"),
        (["--watts", "-2"], "--watts -2 must be positive"),
        (["--profile", str(bare)], "has no power figure"),
    ):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgefleet.cli",
                "serve",
                str(MODEL),
                "--no-batching",
                "--trigger",
                "energy:-40",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode != 0 and says in " ".join(r.stderr.split()), r.stderr
        assert "Traceback" not in r.stderr
