"""The in-process Runtime: bundles and contracts, fallback, escalation, hot swap, metrics, config."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgefleet.errors import (
    DeadlineExceededError,
    GoldenMismatchError,
    InferenceError,
    ModelLoadError,
    PreprocessError,
    ValidationError,
)
from edgefleet.runtime import (
    BatcherConfig,
    FallbackConfig,
    OrtEngine,
    Runtime,
    RuntimeConfig,
)

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def cfg(**kw) -> RuntimeConfig:
    return RuntimeConfig(**kw)


def test_bundle_raw_inputs_go_through_the_contract(digits_bundle, digits_mlp, digits_split):
    raw = digits_split.x_test[:20]  # pixels in [0, 16]: the contract scales them
    with Runtime.from_bundle(digits_bundle) as rt:
        assert rt.manifest.key == "digits/1.0.0/cpu"
        res = rt.predict(raw)
        again = rt.predict({"input": raw.tolist()})  # JSON-style nested lists by input name
    want = OrtEngine(digits_mlp).predict({"input": (raw / 16).astype(np.float32)})
    assert res.classes.tolist() == want["label"].tolist() == again.classes.tolist()
    assert res.labels == [NAMES[i] for i in want["label"]]
    np.testing.assert_allclose(res.confidence, want["probabilities"].max(axis=1), rtol=1e-5)
    assert res.tier == "primary" and (res.model, res.version) == ("digits", "1.0.0")
    body = json.loads(json.dumps(res.to_dict()))
    assert body["predictions"][0] == {
        "tier": "primary",
        "class": int(want["label"][0]),
        "label": res.labels[0],
        "confidence": pytest.approx(float(res.confidence[0]), abs=1e-6),
    }


def test_bare_model_file_and_predictor_sources(digits_mlp, x_test):
    with Runtime.from_bundle(digits_mlp) as rt:
        assert rt.manifest.name == "digits_mlp" and rt.manifest.postprocess.output == "probabilities"
        assert rt.predict(x_test[:2]).classes.shape == (2,)
    eng = OrtEngine(digits_mlp, name="custom", version="2.1.0")
    with Runtime.from_bundle(eng, cfg(batcher=BatcherConfig(enabled=False))) as rt:
        assert rt.manifest.key == "custom/2.1.0/local"
        assert rt.predict({"input": x_test[:1]}).version == "2.1.0"


def test_bad_inputs_are_4xx_and_never_reach_the_model(digits_mlp, doubles, x_test):
    rec = doubles.Recording(OrtEngine(digits_mlp))
    with Runtime.from_bundle(rec) as rt:
        cases = [
            {"input": x_test[:1, :10]},
            {"input": [[float("nan")] * 64]},
            {"input": x_test[:1], "extra": [1]},
            {"wrong": x_test[:1]},
            {"input": [[1, 2], [3]]},
            {"input": "hello"},
            "not a batch",
        ]
        for bad in cases:
            with pytest.raises(ValidationError) as e:
                rt.predict(bad)
            assert 400 <= e.value.status_code < 500 and e.value.hint
        assert rec.calls == []
        assert rt.predict(x_test[:1]).tier == "primary"  # still serving
        text = rt.metrics.exposition().decode()
    assert 'edgefleet_runtime_requests_total{outcome="validation",tier="none"} 7.0' in text


def test_contract_errors_are_4xx(digits_bundle):
    with Runtime.from_bundle(digits_bundle) as rt:
        with pytest.raises((PreprocessError, ValidationError)) as e:
            rt.predict([[b"bytes are not pixels"]])
        assert 400 <= e.value.status_code < 500
        with pytest.raises(ValidationError, match="axis 1"):
            rt.predict(np.full((1, 60), 3.0))  # the contract runs, validation catches the shape
        assert rt.predict(np.full((1, 64), 3.0)).tier == "primary"


def test_deadline_in_the_past_is_never_run(digits_mlp, doubles, x_test):
    rec = doubles.Recording(OrtEngine(digits_mlp))
    with Runtime.from_bundle(rec) as rt:
        for d in (0, -1):
            with pytest.raises(DeadlineExceededError) as e:
                rt.predict(x_test[:1], deadline=d)
            assert e.value.status_code == 504
        assert rec.calls == []
        assert rt.predict(x_test[:1], deadline=5).tier == "primary"


def test_hung_model_with_deadline_fails_fast_and_cleanly(digits_mlp, doubles, x_test):
    gate = doubles.Gate(OrtEngine(digits_mlp))
    rt = Runtime.from_bundle(gate, cfg(fallback=FallbackConfig(timeout_ms=200), drain_timeout_s=2))
    try:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            rt.predict(x_test[:1], deadline=0.1)
        with pytest.raises(InferenceError) as e:  # no deadline: the model timeout applies
            rt.predict(x_test[:1])
        assert e.value.code in ("model_timeout", "deadline_exceeded")
        assert time.monotonic() - t0 < 3
    finally:
        gate.release()
        rt.close()


def test_failing_primary_is_answered_by_the_backup(digits_mlp, big_mlp, doubles, x_test):
    flaky = doubles.Flaky(OrtEngine(digits_mlp), fail_rate=0.3, seed=1)
    with Runtime.from_bundle(flaky, backup=big_mlp) as rt:
        results = [rt.predict(x_test[i : i + 1]) for i in range(60)]
        text = rt.metrics.exposition().decode()
    tiers = [r.tier for r in results]
    assert tiers.count("backup") >= flaky.failures > 0
    assert all(r.fallback for r in results if r.tier == "backup")
    assert 'edgefleet_runtime_fallbacks_total{reason="inference",tier="primary"}' in text


def test_heuristic_when_everything_else_fails(digits_mlp, doubles, x_test):
    broken = doubles.Raising(OrtEngine(digits_mlp), InferenceError("down"))
    prior = {"probabilities": np.full(10, 0.1, np.float32), "label": np.int64(0)}
    with Runtime.from_bundle(broken, heuristic=prior) as rt:
        res = rt.predict(x_test[:2])
    assert res.tiers == ("heuristic", "heuristic") and res.classes.tolist() == [0, 0]


def test_runtime_escalates_to_a_large_model_and_the_cloud(digits_mlp, big_mlp, cloud, tmp_path, x_test):
    from edgefleet.runtime import EscalationConfig

    c = cfg(escalation=EscalationConfig(threshold=1.1))
    with Runtime.from_bundle(digits_mlp, c, large=big_mlp) as rt:
        res = rt.predict(x_test[:3])
        assert res.tiers == ("large",) * 3 and res.escalated
        assert rt.predict(x_test[:3], escalate=False).tier == "primary"

    from edgefleet.telemetry import Outbox

    box = Outbox(tmp_path / "o.sqlite")
    cloud.mode = "error"
    with Runtime.from_bundle(digits_mlp, c, cloud_url=cloud.url, outbox=box) as rt:
        res = rt.predict(x_test[:2])
        assert res.tier == "primary" and any(e.kind == "escalation_queued" for e in res.events)
        assert len(box) == 1
        cloud.mode = "ok"
        assert rt.resend_escalations() == 1 and len(box) == 0
        assert rt.predict(x_test[:2]).tier == "cloud"
    box.close()


def test_cache_in_the_runtime(digits_mlp, x_test):
    from edgefleet.runtime import CacheConfig

    with Runtime.from_bundle(digits_mlp, cfg(cache=CacheConfig(enabled=True))) as rt:
        assert rt.predict(x_test[:1]).tier == "primary"
        assert rt.predict(x_test[:1]).tier == "cache"


# --- hot swap ----------------------------------------------------------------------------------------


def test_hot_swap_under_concurrent_load_drops_nothing(digits_bundle, digits_bundle_v2, digits_split):
    raw = digits_split.x_test
    rt = Runtime.from_bundle(digits_bundle, cfg(batcher=BatcherConfig(max_delay_ms=1)))
    stop = threading.Event()
    errors: list[Exception] = []
    versions: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            try:
                res = rt.predict(raw[i % len(raw) : i % len(raw) + 1])
                assert res.classes.shape == (1,)
                with lock:
                    versions.append(res.version)
            except Exception as e:  # any failure during a swap is a bug
                errors.append(e)
            i += 8

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        old = rt.pipeline
        rt.swap(digits_bundle_v2)
        time.sleep(0.3)
        rt.swap(digits_bundle)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    try:
        assert errors == []
        assert "1.1.0" in versions and versions.count("1.0.0") > 0
        assert versions[-1] == "1.0.0"
        with pytest.raises(InferenceError, match="closed"):  # the old pipeline was drained and closed
            old.predict({"input": (raw[:1] / 16).astype(np.float32)})
        assert "edgefleet_runtime_swaps_total 2.0" in rt.metrics.exposition().decode()
    finally:
        rt.close()


def test_swap_drains_in_flight_requests_on_the_old_model(digits_mlp, digits_mlp_v2, doubles, x_test):
    gate = doubles.Gate(OrtEngine(digits_mlp, name="m", version="1.0.0"))
    rt = Runtime.from_bundle(
        gate, cfg(batcher=BatcherConfig(enabled=False), fallback=FallbackConfig(timeout_ms=None))
    )
    try:
        pool = ThreadPoolExecutor(2)
        slow = pool.submit(rt.predict, x_test[:1])
        assert gate.entered.wait(5)
        swapper = pool.submit(rt.swap, OrtEngine(digits_mlp_v2, name="m", version="2.0.0"))
        time.sleep(0.2)
        assert not swapper.done()  # waiting for the in-flight request on the old model
        assert rt.predict(x_test[:1]).version == "2.0.0"  # new requests already go to the new one
        gate.release()
        assert slow.result(5).version == "1.0.0"  # the old request finished on the old model
        assert swapper.result(5).version == "2.0.0"
        pool.shutdown()
    finally:
        gate.release()
        rt.close()


def test_a_bad_new_bundle_never_replaces_the_good_one(digits_bundle, digits_mlp_v2, tmp_path, digits_split):
    import shutil
    import tarfile

    from edgefleet.bundle import Bundle

    rt = Runtime.from_bundle(digits_bundle)
    try:
        with pytest.raises(ModelLoadError):
            rt.swap(_broken_model(tmp_path))
        # the golden set catches a model that loads but answers differently
        d = tmp_path / "tampered"
        with tarfile.open(digits_bundle) as tf:
            tf.extractall(d, filter="data")
        shutil.copy(digits_mlp_v2, d / "model.onnx")
        tampered = Bundle.from_dir(d, check=False)
        with pytest.raises(GoldenMismatchError):
            rt.swap(tampered)
        assert rt.manifest.version == "1.0.0"
        assert rt.predict(digits_split.x_test[:1]).version == "1.0.0"
    finally:
        rt.close()


def _broken_model(tmp_path):
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"\x08\x07garbage")
    return p


def test_closed_runtime_refuses_clearly(digits_mlp, x_test):
    rt = Runtime.from_bundle(digits_mlp)
    rt.close()
    with pytest.raises(InferenceError, match="not serving"):
        rt.predict(x_test[:1])


def test_each_runtime_has_its_own_metrics(digits_mlp, x_test):
    with Runtime.from_bundle(digits_mlp) as a, Runtime.from_bundle(digits_mlp) as b:
        for _ in range(3):
            a.predict(x_test[:1])
        b.predict(x_test[:1])
        ta, tb = a.metrics.exposition().decode(), b.metrics.exposition().decode()
    assert 'requests_total{outcome="ok",tier="primary"} 3.0' in ta
    assert 'requests_total{outcome="ok",tier="primary"} 1.0' in tb
    assert 'model_info{name="digits_mlp",variant="local",version="0.0.0"} 1.0' in ta


def test_config_from_environment(monkeypatch):
    monkeypatch.setenv("EDGEFLEET_BATCHER_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("EDGEFLEET_API_RATE_LIMIT_RPS", "2.5")
    monkeypatch.setenv("EDGEFLEET_FALLBACK_TIMEOUT_MS", "250")
    c = RuntimeConfig()
    assert c.batcher.max_batch_size == 4 and c.api.rate_limit_rps == 2.5 and c.fallback.timeout_ms == 250
    monkeypatch.setenv("EDGEFLEET_BATCHER_MAX_BATCH_SIZE", "0")
    from pydantic import ValidationError as PydanticValidationError

    with pytest.raises(PydanticValidationError, match="max_batch_size"):
        RuntimeConfig()


def test_wrap_observes_every_served_model(digits_mlp, digits_mlp_v2, doubles, x_test):
    seen = []

    def observe(p):
        rec = doubles.Recording(p)
        seen.append(rec)
        return rec

    with Runtime.from_bundle(digits_mlp, wrap=observe) as rt:
        rt.predict(x_test[:2])
        rt.swap(digits_mlp_v2)
        rt.predict(x_test[:1])
    assert [len(r.calls) for r in seen] == [1, 1]
