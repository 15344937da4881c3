"""The .pyi stubs of the compiled modules match their current API (scripts/make_stubs.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stubs_are_current():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_stubs.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
