"""Fixtures of the server core-services tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from deepexec_server.jobs import JobStore
from tests.fakes.fake_openai_provider import fake_openai_server  # noqa: F401 - fixture


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    """A job store in a fresh state dir."""
    job_store = JobStore(tmp_path / "state" / "jobs.sqlite3")
    assert await job_store.open() is job_store
    try:
        yield job_store
    finally:
        await job_store.close()
