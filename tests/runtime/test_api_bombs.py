"""Decompression bombs sent to the local API: refused while reading, with memory bounded (issue 11)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile

import httpx
import numpy as np
import pytest

from edgefleet.errors import InputError, PayloadTooLargeError
from edgefleet.runtime import ApiConfig, ApiServer, Runtime
from edgefleet.runtime._decode import load_npz_bounded


def _npz(arrays: dict[str, np.ndarray], *, compressed: bool = True) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _zeros_bomb(nbytes: int) -> bytes:
    """An .npz whose one member inflates to ``nbytes`` of zeros (deflate packs them ~1000:1)."""
    return _npz({"input": np.zeros(nbytes, dtype=np.uint8)})


def test_npz_at_the_limit_is_read_and_one_byte_past_is_refused():
    arr = np.arange(100, dtype=np.float32).reshape(10, 10)
    body = _npz({"input": arr})
    limit = arr.nbytes
    got = load_npz_bounded(body, limit)
    np.testing.assert_array_equal(got["input"], arr)
    with pytest.raises(PayloadTooLargeError, match="shape \\[10, 10\\]"):
        load_npz_bounded(body, limit - 1)


def test_npz_limit_counts_every_member():
    a = np.ones(60, dtype=np.uint8)
    body = _npz({"a": a, "b": a})
    assert set(load_npz_bounded(body, 120)) == {"a", "b"}
    with pytest.raises(PayloadTooLargeError):
        load_npz_bounded(body, 119)


def test_npz_member_that_lies_about_its_shape_is_refused():
    """A header that claims a huge shape is refused before numpy allocates it."""
    buf = io.BytesIO()
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("input.npy", hdr.getvalue() + b"\0" * 64)
    with pytest.raises(PayloadTooLargeError):
        load_npz_bounded(buf.getvalue(), 16 << 20)


@pytest.mark.parametrize(
    "body, why",
    [
        (b"PK\x03\x04 not really a zip", "not a valid .npz"),
        (b"", "not a valid .npz"),
        (None, "not an .npy array"),
        ("object", "holds Python objects"),
    ],
)
def test_npz_malformed_bodies_are_input_errors(body, why):
    if body is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("readme.txt", b"hello")
        body = buf.getvalue()
    elif body == "object":
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        zb = io.BytesIO()
        with zipfile.ZipFile(zb, "w") as zf:
            zf.writestr("input.npy", buf.getvalue())
        body = zb.getvalue()
    with pytest.raises(InputError, match=why):
        load_npz_bounded(body, 1 << 20)


def test_npz_bomb_peak_memory_stays_bounded():
    """1 GiB of zeros in ~1 MB of deflate: refused, and the process never holds more than a few MB of it."""
    script = textwrap.dedent(
        """
        import io, json, resource, sys
        import numpy as np
        from edgefleet.runtime._decode import load_npz_bounded
        from edgefleet.errors import PayloadTooLargeError
        body = sys.stdin.buffer.read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_npz_bounded(body, 16 << 20)
            outcome = "accepted"
        except PayloadTooLargeError as e:
            outcome = "refused: " + str(e)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"outcome": outcome, "grew_kib": after - before}))
        """
    )
    import zlib

    # build the bomb without holding 1 GiB here either: a stored .npy header + deflate-streamed zeros
    n = 1 << 30
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    payload = [comp.compress(hdr.getvalue())]
    payload += [comp.compress(chunk) for _ in range(n >> 20)]
    payload.append(comp.flush())
    deflated = b"".join(payload)
    info = zipfile.ZipInfo("input.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        # write the member with its true sizes and CRC via the low-level API
        crc = zlib.crc32(hdr.getvalue())
        for _ in range(n >> 20):
            crc = zlib.crc32(chunk, crc)
        info.CRC = crc
        info.compress_size = len(deflated)
        info.file_size = len(hdr.getvalue()) + n
        zf.fp.write(info.FileHeader(zip64=True))
        info.header_offset = 0
        zf.fp.write(deflated)
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
        zf.start_dir = zf.fp.tell()
    body = buf.getvalue()
    assert len(body) < 2 << 20  # the bomb is small on the wire
    r = subprocess.run(
        [sys.executable, "-c", script], input=body, capture_output=True, timeout=120, check=True
    )
    res = json.loads(r.stdout)
    assert res["outcome"].startswith("refused"), res
    assert res["grew_kib"] < 64 * 1024, res  # nowhere near the 1 GiB it would inflate to


@pytest.fixture
def served(digits_bundle):
    rt = Runtime.from_bundle(digits_bundle)
    srv = ApiServer(rt, ApiConfig(port=0, max_body_bytes=1 << 20)).start()
    client = httpx.Client(base_url=srv.url, timeout=30)
    yield client
    client.close()
    srv.stop()
    rt.close()


def test_api_refuses_an_npz_bomb_with_413_and_keeps_serving(served, digits_split):
    r = served.post(
        "/v1/predict", content=_zeros_bomb(64 << 20), headers={"content-type": "application/x-npz"}
    )
    assert r.status_code == 413, r.text
    assert "EDGEFLEET_API_MAX_BODY_BYTES" in r.json()["hint"]
    ok = served.post(
        "/v1/predict",
        content=_npz({"input": digits_split.x_test[:2].astype(np.float32)}),
        headers={"content-type": "application/x-npz"},
    )
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == 2
