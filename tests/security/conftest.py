"""Fixtures for the security tests: a real local (bubblewrap) executor.

Every test runs a real program inside the sandbox and asserts containment, then
that the next execution still works. They need root, bubblewrap and the runtimes
(scripts/install-system-deps.sh), as in CI; nothing is skipped.

A fake provider key is put in the server's environment *before* the executor starts
(so warm sandboxes are started with it around) and stays there for the whole module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from deepexec_server.sandbox import Limits, SandboxSettings
from deepexec_server.sandbox.hostfs import mounts_under, unmount
from deepexec_server.sandbox.local import LocalExecutor

FAKE_KEY = "sk-deepexec-FAKE-provider-key-0123456789"


@pytest.fixture(scope="session")
def runtime_dir() -> Iterator[Path]:
    """A runtime dir unprivileged uids can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="deepexec-sec-runtime-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def provider_key_in_server_env() -> Iterator[str]:
    """``DEEPEXEC_DEEPSEEK_KEY`` set in this (server) process for the module."""
    old = os.environ.get("DEEPEXEC_DEEPSEEK_KEY")
    os.environ["DEEPEXEC_DEEPSEEK_KEY"] = FAKE_KEY
    yield FAKE_KEY
    if old is None:
        os.environ.pop("DEEPEXEC_DEEPSEEK_KEY", None)
    else:
        os.environ["DEEPEXEC_DEEPSEEK_KEY"] = old


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def executor(
    runtime_dir: Path, provider_key_in_server_env: str
) -> AsyncIterator[LocalExecutor]:
    """A started executor with a warm pool of one for python (cold for the rest)."""
    settings = SandboxSettings(runtime_dir=runtime_dir, warm_pool_size=1, max_concurrency=4)
    ex = LocalExecutor(settings)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.close()


@pytest.fixture()
def limits() -> Limits:
    """Default limits with a short timeout."""
    return SandboxSettings().clamp({"timeout": 10})


@pytest.fixture()
def session_root() -> Iterator[Path]:
    """A root-only parent for session dirs, like the server's state dir."""
    parent = Path(tempfile.mkdtemp(prefix="deepexec-sec-state-"))
    os.chmod(parent, 0o700)
    yield parent
    for point in mounts_under(parent):  # a failed test may not have released its session
        unmount(Path(point))
    shutil.rmtree(parent, ignore_errors=True)
