"""The dashboard's review queue in headless chromium against a real server: images shown as images, audio as
a player, tabular inputs as a table; labelling by keyboard, undo and a batch label, all reaching the server
(audited), with no console or CSP errors."""

from __future__ import annotations

import base64
import io
import struct
import time
import wave
import zlib

import numpy as np
import pytest
from fleettools import LiveClient
from pagewait import until, until_js
from servertools import Clock, Harness

pytestmark = pytest.mark.browser


def _png(level: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([level] * 8) for _ in range(8))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        t = np.arange(800) / 8000
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
    return buf.getvalue()


def _sample(rid, conf, predicted, **kw):
    return {
        "request_id": rid,
        "t": time.time(),
        "reason": "low_confidence" if conf < 0.6 else "random",
        "confidence": conf,
        "predicted": predicted,
        "privacy": "raw",
        "scores": [conf],
        "tags": {"model": "digits", "version": "1.0.0", "variant": "cpu"},
    } | kw


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from edgefleet.server import ServerConfig, start_server

    base = tmp_path_factory.mktemp("review-server")
    cfg = ServerConfig(data_dir=base / "server", keys_dir=base / "no-keys", engine_enabled=False)
    with start_server(cfg, clock=Clock()) as srv, LiveClient(srv.url, srv.app) as client:
        h = Harness(client, Clock())
        dev = h.enroll(tags={"region": "eu"})
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        tab = np.linspace(0, 1, 64, dtype=np.float32)
        samples = [
            _sample("req-img-0001", 0.31, "3", input_b64=b64(_png(40))),
            _sample("req-img-0002", 0.35, "8", input_b64=b64(_png(200))),
            _sample("req-wav-0001", 0.41, "yes", input_b64=b64(_wav())),
            _sample(
                "req-tab-0001",
                0.45,
                "5",
                input_b64=b64(tab.tobytes()),
                input_meta={"dtype": "float32", "shape": [64]},
            ),
            _sample("req-hash-001", 0.90, "1", privacy="hash", input_hash="ab" * 16, features=[0.5, 0.25]),
        ]
        r = client.post(
            f"/v1/devices/{dev['device_id']}/samples", json={"samples": samples}, headers=dev["headers"]
        )
        assert r.status_code == 200 and r.json()["accepted"] == 5, r.text
        h.url = srv.url
        h.deployer = h.token("deployer")["Authorization"].split()[1]
        yield h


def _label(h, rid):
    return h.c.get(f"/v1/samples/{rid}", headers=h.admin).json()["label"]


def test_review_queue_shows_inputs_and_labels_by_keyboard_with_undo_and_batch(browser, live, tmp_path):
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live.url}/dashboard?token={live.deployer}#review")
    page.wait_for_selector("body[data-loaded='review']", timeout=30_000)
    # lowest confidence first; every input shown as what it is
    assert page.locator(".sample").evaluate_all("els => els.map(e => e.dataset.id)") == [
        "req-img-0001", "req-img-0002", "req-wav-0001", "req-tab-0001", "req-hash-001",
    ]  # fmt: skip
    until_js(
        page,
        "[...document.querySelectorAll('.sample img')].length === 2 && "
        "[...document.querySelectorAll('.sample img')].every(i => i.complete && i.naturalWidth === 8)",
    )
    page.wait_for_selector(".sample[data-id='req-wav-0001'] audio[src^='data:audio/wav']", timeout=30_000)
    page.wait_for_selector(".sample[data-id='req-tab-0001'] table.values", timeout=30_000)
    cells = page.locator(".sample[data-id='req-tab-0001'] table.values td").all_inner_texts()
    assert len(cells) == 64 and cells[0] == "0" and cells[-1] == "1"
    page.wait_for_selector(".sample[data-id='req-hash-001'] table.values", timeout=30_000)  # its features
    assert "model: 3" in page.locator(".sample.focused").inner_text()
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)

    # Enter: the model is right for the focused sample
    page.keyboard.press("Enter")
    until(lambda: _label(live, "req-img-0001") == "3", "the keyboard label")
    until_js(page, "!document.querySelector(\".sample[data-id='req-img-0001']\")")
    # u: undo puts it back in the queue, unlabelled
    page.keyboard.press("u")
    until(lambda: _label(live, "req-img-0001") is None, "the undo")
    page.wait_for_selector(".sample[data-id='req-img-0001']", timeout=30_000)
    # batch: select two with x, type a label, Enter
    until_js(page, "document.querySelector('.sample.focused')?.dataset.id === 'req-img-0001'")
    page.keyboard.press("x")
    page.keyboard.press("j")
    page.keyboard.press("x")
    assert page.locator(".sample.selected").count() == 2
    page.keyboard.press("l")
    page.keyboard.type("9")
    page.keyboard.press("Enter")
    until(
        lambda: _label(live, "req-img-0001") == "9" and _label(live, "req-img-0002") == "9", "the batch label"
    )
    until_js(page, "document.querySelectorAll('.sample').length === 3")
    # the labels reached the live accuracy card (both wrong: the model said 3 and 8)
    until_js(page, "document.querySelector('table.accuracy')?.innerText.includes('digits@1.0.0')")
    rows = [r.split("\t") for r in page.locator("table.accuracy").inner_text().splitlines()]
    row = next(r for r in rows if r[0] == "digits@1.0.0")
    assert row[2:4] == ["2", "0.00%"], rows  # two labelled, none right
    audit = live.c.get("/v1/audit", params={"action": "samples.label"}, headers=live.admin).json()
    assert [(a["details"]["request_id"], a["details"]["new"]) for a in audit] == [
        ("req-img-0001", "3"), ("req-img-0001", None), ("req-img-0001", "9"), ("req-img-0002", "9"),
    ]  # fmt: skip
    # every label by the signed-in deployer (the operator token the page was opened with)
    assert {a["actor"] for a in audit} == {a["actor"] for a in audit[:1]}
    assert audit[0]["actor"].startswith("operator:deployer")
    assert errors == [], errors
    ctx.close()
