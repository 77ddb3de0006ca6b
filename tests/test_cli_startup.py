"""Start-up: the CLI's help imports none of the heavy libraries (issue 12, item 6).

Each command imports what it uses inside its own body, so ``edgefleet --help`` and every group's help stay
fast on a small device. Checked in a fresh interpreter, by the modules it ends up holding.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "onnx",
    "onnxruntime",
    "sklearn",
    "matplotlib",
    "sqlalchemy",
    "fastapi",
    "uvicorn",
    "flwr",
    "mlflow",
)

_PROBE = """
import json, sys
from edgefleet.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = json.loads(os_heavy)
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.__stderr__)
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["serve", "--help"], ["server", "run", "--help"], ["agent", "--help"]], ids=" ".join
)
def test_help_imports_no_heavy_library(argv):
    code = f"os_heavy = {json.dumps(json.dumps(HEAVY))}\n" + _PROBE
    r = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout
    loaded = json.loads(r.stderr.strip().splitlines()[-1])
    assert loaded == [], f"edgefleet {' '.join(argv)} imported {loaded}"
