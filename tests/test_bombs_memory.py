"""Decompression bombs, each refused while it is read, with the peak memory measured in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# What the child prints: how the call ended and how much its peak RSS grew during it.
_HARNESS = """
import json, resource, sys
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    run()
    outcome = "accepted"
except Exception as e:  # the test reads the class and the message
    outcome = f"{type(e).__name__}: {e}"
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"outcome": outcome, "grew_kib": grew}))
"""


def _measure(setup: str, cwd) -> dict:
    code = textwrap.dedent(setup) + _HARNESS
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_zstd_upload_bomb_is_refused_within_its_raw_limit(tmp_path):
    """1 GiB of zeros in a few dozen KB of zstd, sent as a telemetry upload body (limit 32 MiB raw)."""
    res = _measure(
        """
        import io
        from edgefleet.telemetry._upload import _zstd, decode_upload
        z = _zstd()
        c = z.ZstdCompressor()
        chunk = b"\\0" * (1 << 20)
        body = b"".join(c.compress(chunk) for _ in range(1024)) + c.flush()
        assert len(body) < 1 << 20, len(body)
        def run():
            decode_upload(body, max_raw_bytes=32 << 20)
        """,
        tmp_path,
    )
    assert res["outcome"].startswith("PayloadTooLargeError"), res
    assert res["grew_kib"] < 96 * 1024, res  # the limit's 32 MiB plus slack, nowhere near 1 GiB


def test_zstd_delta_bomb_stops_at_the_declared_target_length(tmp_path):
    """A well-formed, self-consistent patch whose payload inflates to 256 MiB while its header says 1 MiB."""
    res = _measure(
        f"""
        import hashlib, os
        from pathlib import Path
        from edgefleet.bundle import _delta as d
        tmp = Path({str(tmp_path)!r})
        old = os.urandom(64 << 10)
        (tmp / "old.tar").write_bytes(old)
        claimed = 1 << 20
        wlog = d._window_log(len(old), claimed)
        z = d._zstd_module()
        p = z.CompressionParameter
        c = z.ZstdCompressor(options={{p.window_log: wlog}}, zstd_dict=z.ZstdDict(old, is_raw=True).as_prefix)
        chunk = b"\\0" * (1 << 20)
        payload = b"".join(c.compress(chunk) for _ in range(256)) + c.flush()
        target_sha = hashlib.sha256(b"whatever the signed target says").hexdigest()
        header = d._HEADER.pack(d.DELTA_MAGIC, d._FORMAT, d._METHODS["zstd"], 0, wlog,
            hashlib.sha256(old).digest(), len(old), bytes.fromhex(target_sha), claimed,
            hashlib.sha256(payload).digest())
        (tmp / "bomb.delta").write_bytes(header + payload)
        def run():
            d.apply_delta(tmp / "old.tar", tmp / "bomb.delta", tmp / "new.tar",
                          expected_sha256=target_sha, expected_length=claimed)
        """,
        tmp_path,
    )
    assert res["outcome"].startswith("DeltaError"), res
    assert res["grew_kib"] < 64 * 1024, res
    assert not (tmp_path / "new.tar").exists()
