"""Suite-wide set-up: the sandbox's system packages must be present for the tests that run
code (``pip install -r requirements-dev.txt && pytest`` on a fresh clone gives the same
result as ``make test``, which installs them first)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    if shutil.which("bwrap") and Path("/usr/bin/ruby").exists():
        return
    script = ROOT / "scripts" / "install-system-deps.sh"
    if os.geteuid() != 0 and not shutil.which("sudo"):
        raise pytest.UsageError(
            f"the sandbox needs bubblewrap and the language runtimes: run {script} as root"
        )
    subprocess.run([str(script)], check=True)
