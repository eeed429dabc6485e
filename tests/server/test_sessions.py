"""Sessions: workdirs, owner isolation, close, TTL expiry."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deepexec_server.sessions import (
    Session,
    SessionClosed,
    SessionLimitExceeded,
    SessionManager,
    SessionNotFound,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 13, 40, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_create_makes_a_private_workdir_and_calls_the_hook(tmp_path: Path) -> None:
    prepared: list[Session] = []

    async def prepare(session: Session) -> None:
        assert session.workdir.is_dir()
        prepared.append(session)

    manager = SessionManager(tmp_path, ttl=60, prepare_workdir=prepare)
    await manager.start()
    try:
        session = await manager.create("alice")
        assert re.fullmatch(r"sess_[0-9a-f]{32}", session.session_id)
        assert session.workdir == tmp_path / "sessions" / session.session_id
        assert mode(session.workdir) == 0o700
        assert mode(tmp_path / "sessions") == 0o711
        assert prepared == [session]
        assert session.expires_at - session.created_at == timedelta(seconds=60)
        info = session.to_dict()
        assert set(info) == {"session_id", "created_at", "expires_at"}
        assert info["created_at"].endswith("Z")
    finally:
        await manager.stop()


async def test_owners_are_isolated(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path, ttl=60)
    mine = await manager.create("alice")
    assert manager.get(mine.session_id, "bob") is None
    assert manager.get(mine.session_id, None) is None
    assert not await manager.close(mine.session_id, "bob")
    assert mine.workdir.is_dir()
    with pytest.raises(SessionNotFound):
        async with manager.use(mine.session_id, "bob"):
            pass
    assert manager.get(mine.session_id, "alice") is not None
    assert manager.get("../../etc", "alice") is None
    await manager.stop()


async def test_close_frees_everything(tmp_path: Path) -> None:
    released: list[str] = []
    manager = SessionManager(
        tmp_path, ttl=60, release_workdir=lambda s: released.append(s.session_id)
    )
    session = await manager.create("alice")
    (session.workdir / "sub").mkdir()
    (session.workdir / "sub" / "data.txt").write_text("x")
    os.chmod(session.workdir / "sub", 0o500)  # a program made it read-only
    assert await manager.close(session.session_id, "alice")
    assert not session.workdir.exists()
    assert released == [session.session_id]
    assert manager.get(session.session_id, "alice") is None
    assert not await manager.close(session.session_id, "alice")
    assert len(manager) == 0


async def test_idle_sessions_expire_and_use_extends_life(tmp_path: Path) -> None:
    clock = Clock()
    manager = SessionManager(tmp_path, ttl=100, clock=clock)
    idle = await manager.create("alice")
    busy = await manager.create("alice")
    clock.now += timedelta(seconds=60)
    touched = manager.touch(busy.session_id, "alice")
    assert touched is not None and touched.expires_at == clock.now + timedelta(seconds=100)
    clock.now += timedelta(seconds=50)  # idle: 110 s, busy: 50 s since last use
    assert manager.get(idle.session_id, "alice", touch=False) is None  # already expired
    assert await manager.expire_idle() == [idle.session_id]
    assert not idle.workdir.exists()
    assert manager.get(busy.session_id, "alice") is not None
    assert busy.workdir.is_dir()

    # A session may ask for its own idle lifetime.
    short = await manager.create("alice", ttl=5)
    assert short.expires_at == clock.now + timedelta(seconds=5)
    clock.now += timedelta(seconds=4)
    manager.touch(short.session_id, "alice")
    clock.now += timedelta(seconds=4)
    assert await manager.expire_idle() == []
    clock.now += timedelta(seconds=2)
    assert await manager.expire_idle() == [short.session_id]


async def test_a_session_in_use_does_not_expire_and_close_waits_for_it(tmp_path: Path) -> None:
    clock = Clock()
    manager = SessionManager(tmp_path, ttl=10, clock=clock)
    session = await manager.create("alice")
    async with manager.use(session.session_id, "alice") as held:
        assert held.workdir == session.workdir
        clock.now += timedelta(seconds=3600)  # a very long program
        assert await manager.expire_idle() == []
        assert session.workdir.is_dir()
        assert await manager.close(session.session_id, "alice")
        assert manager.get(session.session_id, "alice") is None
        assert session.workdir.is_dir()  # still in use: removal deferred
    assert not session.workdir.exists()


async def test_close_stops_the_programs_holding_the_session(tmp_path: Path) -> None:
    """A holder in another task (a program running in the session) is stopped: it sees
    SessionClosed; close() returns once it has let go, with the directory removed."""
    manager = SessionManager(tmp_path, ttl=60)
    session = await manager.create("alice")
    started = asyncio.Event()
    cleaned_up: list[bool] = []

    async def program() -> None:
        async with manager.use(session.session_id, "alice"):
            started.set()
            try:
                await asyncio.sleep(60)
            finally:
                cleaned_up.append(session.workdir.is_dir())  # still there while it runs

    holder = asyncio.create_task(program())
    await started.wait()
    assert await manager.close(session.session_id, "alice")
    assert holder.done() and cleaned_up == [True]
    with pytest.raises(SessionClosed, match="closed during the execution"):
        holder.result()
    assert isinstance(holder.exception(), SessionNotFound)  # what callers already catch
    assert not session.workdir.exists()
    assert not holder.cancelled() and holder.cancelling() == 0


async def test_a_closing_session_takes_no_new_use(tmp_path: Path) -> None:
    """From begin_close on (the server cancels the session's jobs meanwhile), the session
    is gone for lookups and new uses; finish() then removes it."""
    manager = SessionManager(tmp_path, ttl=60)
    session = await manager.create("alice")
    closing = manager.begin_close(session.session_id, "alice")
    assert closing is not None and closing.session.session_id == session.session_id
    assert manager.get(session.session_id, "alice") is None
    assert manager.begin_close(session.session_id, "alice") is None
    with pytest.raises(SessionNotFound):
        async with manager.use(session.session_id, "alice"):
            pass
    assert session.workdir.is_dir()
    await closing.finish()
    assert not session.workdir.exists()


async def test_a_holder_cancelled_for_another_reason_stays_cancelled(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path, ttl=60)
    session = await manager.create("alice")
    started = asyncio.Event()

    async def program() -> None:
        async with manager.use(session.session_id, "alice"):
            started.set()
            await asyncio.sleep(60)

    holder = asyncio.create_task(program())
    await started.wait()
    holder.cancel()  # e.g. its client went away, at the same moment
    assert await manager.close(session.session_id, "alice")
    assert holder.cancelled()
    assert not session.workdir.exists()


async def test_background_sweeper_expires_sessions(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path, ttl=0.15, sweep_interval=0.03)
    await manager.start()
    try:
        session = await manager.create(None)
        await asyncio.sleep(0.05)
        assert session.workdir.is_dir()
        for _ in range(100):
            if not session.workdir.exists():
                break
            await asyncio.sleep(0.02)
        assert not session.workdir.exists()
        assert len(manager) == 0
    finally:
        await manager.stop()


async def test_start_cleans_leftovers_and_stop_closes_all(tmp_path: Path) -> None:
    leftover = tmp_path / "sessions" / ("sess_" + "a" * 32)
    leftover.mkdir(parents=True)
    (leftover / "f").write_text("old")
    manager = SessionManager(tmp_path, ttl=60)
    await manager.start()
    assert not leftover.exists()
    sessions = [await manager.create("alice") for _ in range(3)]
    await manager.stop()
    assert all(not s.workdir.exists() for s in sessions)
    assert len(manager) == 0


async def test_failed_prepare_hook_creates_nothing(tmp_path: Path) -> None:
    def refuse(session: Session) -> None:
        raise PermissionError("cannot chown")

    manager = SessionManager(tmp_path, ttl=60, prepare_workdir=refuse)
    with pytest.raises(PermissionError):
        await manager.create("alice")
    assert len(manager) == 0
    assert list((tmp_path / "sessions").iterdir()) == []


async def test_sessions_per_owner_are_limited(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path, ttl=60, max_sessions_per_owner=2)
    first = await manager.create("alice")
    await manager.create("alice")
    with pytest.raises(SessionLimitExceeded):
        await manager.create("alice")
    await manager.create("bob")
    await manager.close(first.session_id, "alice")
    await manager.create("alice")
    await manager.stop()
