"""Issue 16 (items 5, 7, 8): does `edgefleet optimize` finish a conv recognizer within a time budget, and
what do the variants measure on each execution provider?

The model is SYNTHETIC: a CRNN-style conv recognizer built here with random weights (about 10.5 MB fp32,
input 3x48x320, 80 frames x 37 classes, class 0 the CTC blank with its bias set so it wins most frames, as
in a trained CTC model), standing in for the 10.6 MB recognizer of the issue. 64 calibration and 128
evaluation images (random). Runs are the real CLI in a subprocess with stdout/stderr going to files (so
progress comes as plain lines), timed from outside:

- ``budget``: ``edgefleet optimize ... --time-budget B`` (default variant set) plus ``--providers
  cpu,openvino,cuda,tensorrt`` (OpenVINO measured in the venv EDGEFLEET_OPTIMIZE_PROVIDER_PYTHONS names);
- ``default``: the same without a time budget or providers (what the issue measured), stopped after
  ``--cap`` seconds if it has not finished.

Run:  .venv/bin/python benchmarks/search_bench.py [--budget 600] [--cap 1800] [--skip-default | --skip-budget]
        [--results benchmarks/results/search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "search.json"
CLASSES = 37


def build_crnn(path: Path, seed: int = 0) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin: int, cout: int, pool: tuple[int, int] | None) -> list[nn.Module]:
        mods: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        return [*mods, nn.MaxPool2d(pool)] if pool else mods

    class Crnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                *block(3, 64, (2, 2)),  # 24 x 160
                *block(64, 128, (2, 2)),  # 12 x 80
                *block(128, 128, None),
                *block(128, 256, (2, 1)),  # 6 x 80
                *block(256, 256, (2, 1)),  # 3 x 80
                *block(256, 512, (3, 1)),  # 1 x 80
                nn.Conv2d(512, 512, 1),
                nn.ReLU(),
            )
            self.head = nn.Linear(512, CLASSES)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            f = self.features(image).squeeze(2).transpose(1, 2)  # [N, 80, 512]
            return self.head(f)  # [N, 80, 37] per-frame scores

    model = Crnn().eval()
    x = torch.randn(16, 3, 48, 320)
    with torch.no_grad():
        s = model(x).reshape(-1, CLASSES)
        margin = s[:, 1:].max(dim=1).values - s[:, 0]
        model.head.bias[0] += float(torch.quantile(margin, 0.6))
    torch.onnx.export(
        model,
        (x[:1],),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def run_cli(args: list[str], out: Path, cap: float, env: dict[str, str]) -> dict:
    t0 = time.monotonic()
    with open(out / "stdout.txt", "w") as so, open(out / "stderr.txt", "w") as se:
        p = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", *args], stdout=so, stderr=se, env=env)
        try:
            rc = p.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
    wall = time.monotonic() - t0
    lines = [x for x in (out / "stderr.txt").read_text().splitlines() if x.startswith("[")]
    row: dict = {
        "wall_s": round(wall, 1),
        "exit": rc,
        "finished": rc is not None,
        "progress_lines": len(lines),
    }
    rep = out / "o" / "report.json"
    if rc is not None and rep.exists():
        r = json.loads(rep.read_text())
        base = next(v for v in r["variants"] if v["name"] == "fp32")
        chosen = next((v for v in r["variants"] if v["name"] == r["chosen"]), None)
        row.update(
            task=r["task"],
            metric=r["metric"],
            task_reason=r["task_reason"],
            chosen=r["chosen"],
            reason=r["reason"],
            fp32_p50_ms=base["bench"]["latency"]["p50_ms"],
            chosen_p50_ms=chosen["bench"]["latency"]["p50_ms"] if chosen else None,
            chosen_interleaved_ratio=(chosen.get("interleaved") or {}).get("median_ratio")
            if chosen
            else None,
            chosen_drop=chosen["drop"] if chosen else None,
            search=r.get("search"),
            variants=[
                {k: v.get(k) for k in ("name", "outcome", "size_bytes", "drop", "reason", "build_s")}
                | {"p50_ms": v["bench"]["latency"]["p50_ms"] if v.get("bench") else None}
                for v in r["variants"]
            ],
            providers=r.get("providers"),
        )
    row["last_lines"] = lines[-6:]
    return row


def _budget_run(a: argparse.Namespace, common: list[str], work: Path, env: dict[str, str]) -> dict:
    d = work / "budget"
    d.mkdir()
    return run_cli(
        [
            *common,
            "-o",
            str(d / "o"),
            "--time-budget",
            str(a.budget),
            "--providers",
            "cpu,openvino,cuda,tensorrt",
        ],
        d,
        a.cap,
        env,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=600)
    ap.add_argument("--cap", type=float, default=1800)
    ap.add_argument("--skip-default", action="store_true")
    ap.add_argument("--skip-budget", action="store_true", help="run only the default row")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--openvino-python", default="/tmp/ov-venv/bin/python")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="search-bench-"))
    model = build_crnn(work / "crnn.onnx")
    rng = np.random.default_rng(0)
    np.savez(work / "calib.npz", image=rng.normal(size=(64, 3, 48, 320)).astype(np.float32))
    np.savez(work / "eval.npz", image=rng.normal(size=(128, 3, 48, 320)).astype(np.float32))
    common = ["optimize", str(model), "--calib", str(work / "calib.npz"), "--eval", str(work / "eval.npz")]
    env = {
        **os.environ,
        "EDGEFLEET_OPTIMIZE_PROVIDER_RUNS": "20",
        "EDGEFLEET_OPTIMIZE_PROVIDER_SAMPLES": "16",
    }
    if Path(a.openvino_python).exists():
        env["EDGEFLEET_OPTIMIZE_PROVIDER_PYTHONS"] = json.dumps({"openvino": a.openvino_python})
    out = {
        "model": {
            "synthetic": True,
            "bytes": model.stat().st_size,
            "input": [3, 48, 320],
            "calib": 64,
            "eval": 128,
        },
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_at_start": os.getloadavg(),
    }
    if not a.skip_budget:
        out["budget"] = _budget_run(a, common, work, env)
        print(json.dumps(out["budget"], indent=1, default=str)[:4000])
    if not a.skip_default:
        d = work / "default"
        d.mkdir()
        out["default"] = run_cli([*common, "-o", str(d / "o")], d, a.cap, env)
        print(json.dumps(out["default"], indent=1, default=str)[:3000])
    out["load_avg_at_end"] = os.getloadavg()
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {a.results} (work dir {work})")


if __name__ == "__main__":
    main()
