"""Fixtures for the sandbox tests: a real local (bubblewrap) executor.

These tests need what CI provides: root, bubblewrap and the language runtimes
(scripts/install-system-deps.sh). Nothing is skipped when they are missing: the
executor's start fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from deepexec_server.sandbox import Limits, SandboxSettings
from deepexec_server.sandbox.hostfs import mounts_under, unmount
from deepexec_server.sandbox.local import LocalExecutor


@pytest.fixture(scope="session")
def runtime_dir() -> Iterator[Path]:
    """A runtime dir unprivileged uids can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="deepexec-test-runtime-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _settings(runtime_dir: Path, **kw: object) -> SandboxSettings:
    base: dict[str, object] = {
        "runtime_dir": runtime_dir,
        "warm_pool_size": 0,
        "max_concurrency": 4,
    }
    base.update(kw)
    return SandboxSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def make_settings(runtime_dir: Path) -> Callable[..., SandboxSettings]:
    """Build test settings (small concurrency, no warm pool unless asked)."""
    return lambda **kw: _settings(runtime_dir, **kw)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def executor(runtime_dir: Path) -> AsyncIterator[LocalExecutor]:
    """One started cold-start executor per test module."""
    ex = LocalExecutor(_settings(runtime_dir))
    await ex.start()
    try:
        yield ex
    finally:
        await ex.close()


@pytest.fixture()
def limits() -> Limits:
    """The default limits with a short timeout."""
    return SandboxSettings().clamp({"timeout": 10})


@pytest.fixture()
def session_dir() -> Iterator[Path]:
    """A fresh session dir path under a root-only parent (like a server state dir)."""
    parent = Path(tempfile.mkdtemp(prefix="deepexec-test-state-"))
    os.chmod(parent, 0o700)
    yield parent / "session" / "work"
    for point in mounts_under(parent):  # a failed test may not have released its session
        unmount(Path(point))
    shutil.rmtree(parent, ignore_errors=True)
