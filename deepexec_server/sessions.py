"""Sessions: a per-client working directory that lives across several executions.

A session is created by a client (its owner: a token fingerprint, or ``None`` on a
server without tokens), used by code executions that name it, and ends when the
client closes it or after ``ttl`` seconds without use. Every use extends its life
(``expires_at = last use + ttl``); a session that is in use (see
:meth:`SessionManager.use`) never expires under a running program.

Working directories live at ``<state_dir>/sessions/<session_id>``. The ``sessions``
directory is ``0o711`` (traversable, not listable) and each workdir is created
``0o700`` owned by the server user. The sandbox runs programs as an unprivileged uid,
so it must make the directory usable by that uid: pass ``prepare_workdir``, called
with the new :class:`Session` right after its directory is created (for example to
``chown`` it to the sandbox uid or its group, set a quota, ...), and optionally
``release_workdir``, called before the directory is removed. Both may be plain or
async callables. If ``prepare_workdir`` fails the session is not created.

Sessions are kept in memory: they do not survive a server restart. On
:meth:`SessionManager.start`, leftover directories of a previous run are removed; on
:meth:`SessionManager.stop`, every session is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from attrs import define, evolve

from .jobs.models import rfc3339, utc_now

__all__ = [
    "ClosingSession",
    "Session",
    "SessionClosed",
    "SessionLimitExceeded",
    "SessionManager",
    "SessionNotFound",
    "WorkdirHook",
    "new_session_id",
]

logger = logging.getLogger(__name__)

#: Called with a session whose directory was just created / is about to be removed.
WorkdirHook = Callable[["Session"], Awaitable[None] | None]

_SESSION_ID_RE = re.compile(r"^sess_[0-9a-f]{32}$")


def new_session_id() -> str:
    """A fresh session id: ``sess_`` followed by 32 lowercase hex digits."""
    return "sess_" + secrets.token_hex(16)


@define(frozen=True, kw_only=True)
class Session:
    """A snapshot of one session. ``expires_at`` moves forward each time it is used."""

    session_id: str
    owner: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    workdir: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the HTTP layer (the workdir path is not exposed)."""
        return {
            "session_id": self.session_id,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
        }


class SessionNotFound(Exception):
    """No such session for this owner (another owner's session is reported the same way)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} not found or expired")
        self.session_id = session_id


class SessionLimitExceeded(Exception):
    """The owner already holds ``limit`` open sessions."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many open sessions for this token (limit {limit}); close one first")
        self.limit = limit


class SessionClosed(SessionNotFound):
    """The session was closed while a program ran in it: the program was stopped."""

    def __init__(self, session_id: str) -> None:
        Exception.__init__(
            self, f"session {session_id} was closed during the execution, which was stopped"
        )
        self.session_id = session_id


#: How long closing a session waits for the programs running in it to be stopped.
_STOP_WAIT = 10.0


class _Entry:
    def __init__(self, session: Session, ttl: timedelta) -> None:
        self.session = session
        self.ttl = ttl
        self.leases = 0
        self.closed = False
        #: the tasks running a program in the session -> whether closing it stopped them
        self.users: dict[asyncio.Task[Any], bool] = {}


class ClosingSession:
    """A session :meth:`SessionManager.begin_close` took away; :meth:`finish` stops what
    still runs in it and removes its directory."""

    def __init__(self, manager: SessionManager, entry: _Entry) -> None:
        self._manager = manager
        self._entry = entry

    @property
    def session(self) -> Session:
        return self._entry.session

    async def finish(self) -> None:
        await self._manager._stop_and_remove(self._entry)


async def _call_hook(hook: WorkdirHook | None, session: Session) -> None:
    if hook is None:
        return
    outcome = hook(session)
    if inspect.isawaitable(outcome):
        await outcome


class SessionManager:
    """Creates, finds, touches, closes and expires sessions and their workdirs."""

    def __init__(
        self,
        state_dir: Path | str,
        ttl: float = 3600.0,
        *,
        prepare_workdir: WorkdirHook | None = None,
        release_workdir: WorkdirHook | None = None,
        max_sessions_per_owner: int | None = None,
        sweep_interval: float | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """Configure the manager; call :meth:`start` to begin background expiry.

        ``ttl`` is the default idle lifetime in seconds (a session may ask for its
        own). ``sweep_interval`` (default: a tenth of the TTL, between 0.05 and 60
        seconds) is how often idle sessions are looked for.
        """
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._root = Path(state_dir) / "sessions"
        self._ttl = timedelta(seconds=ttl)
        self._prepare = prepare_workdir
        self._release = release_workdir
        self._max_per_owner = max_sessions_per_owner
        self._sweep_interval = (
            sweep_interval if sweep_interval is not None else min(60.0, max(0.05, ttl / 10))
        )
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def root(self) -> Path:
        """The directory holding every session's workdir."""
        return self._root

    @property
    def ttl(self) -> float:
        """Idle lifetime, in seconds."""
        return self._ttl.total_seconds()

    def __len__(self) -> int:
        """Number of open sessions."""
        return len(self._entries)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Remove leftovers of a previous run and start the expiry sweeper."""
        await asyncio.to_thread(self._reset_root)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="session-sweeper")

    def _reset_root(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        os.chmod(self._root, 0o711)
        for child in self._root.iterdir():
            if child.name not in self._entries:
                _remove_tree(child)

    async def stop(self) -> None:
        """Stop the sweeper and close every session."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for session_id in list(self._entries):
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.leases = 0
                await self._close_entry(entry)

    # -- operations ---------------------------------------------------------------------

    async def create(self, owner: str | None, *, ttl: float | None = None) -> Session:
        """Create a session and its workdir for ``owner``.

        ``ttl`` (seconds) overrides the manager's idle lifetime for this session.
        Raises :class:`SessionLimitExceeded` when the owner holds too many sessions.
        """
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive")
        lifetime = timedelta(seconds=ttl) if ttl is not None else self._ttl
        async with self._lock:
            if self._max_per_owner is not None:
                held = sum(1 for e in self._entries.values() if e.session.owner == owner)
                if held >= self._max_per_owner:
                    raise SessionLimitExceeded(self._max_per_owner)
            session_id = new_session_id()
            now = self._clock()
            session = Session(
                session_id=session_id,
                owner=owner,
                created_at=now,
                last_used_at=now,
                expires_at=now + lifetime,
                workdir=self._root / session_id,
            )
            await asyncio.to_thread(self._make_workdir, session.workdir)
            try:
                await _call_hook(self._prepare, session)
            except BaseException:
                await asyncio.to_thread(_remove_tree, session.workdir)
                raise
            self._entries[session_id] = _Entry(session, lifetime)
            return session

    def _make_workdir(self, workdir: Path) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        os.chmod(self._root, 0o711)
        workdir.mkdir(mode=0o700)
        os.chmod(workdir, 0o700)

    def get(self, session_id: str, owner: str | None, *, touch: bool = True) -> Session | None:
        """The session if it is open and belongs to ``owner`` (else ``None``).

        Unless ``touch=False``, this counts as a use and extends the session's life.
        """
        entry = self._lookup(session_id, owner)
        if entry is None:
            return None
        if touch:
            self._touch(entry)
        return entry.session

    def touch(self, session_id: str, owner: str | None) -> Session | None:
        """Record a use of the session now; ``None`` if there is no such session."""
        return self.get(session_id, owner, touch=True)

    @contextlib.asynccontextmanager
    async def use(self, session_id: str, owner: str | None) -> AsyncIterator[Session]:
        """Hold the session while a program runs in its workdir.

        A held session never expires. :meth:`close` stops the holders (it cancels the
        task holding it: what runs inside then raises :class:`SessionClosed`, unless the
        task was being cancelled anyway) and removes the directory once the last one has
        let go. Raises :class:`SessionNotFound`.
        """
        entry = self._lookup(session_id, owner)
        if entry is None:
            raise SessionNotFound(session_id)
        self._touch(entry)
        entry.leases += 1
        task = asyncio.current_task()
        if task is not None:
            entry.users[task] = False
        try:
            yield entry.session
        except asyncio.CancelledError:
            if task is not None and entry.users.get(task) and task.uncancel() == 0:
                raise SessionClosed(session_id) from None
            raise
        finally:
            if task is not None:
                entry.users.pop(task, None)
            entry.leases -= 1
            if entry.closed:
                if entry.leases == 0:
                    await self._remove_entry_files(entry)
            else:
                self._touch(entry)

    async def close(self, session_id: str, owner: str | None) -> bool:
        """Close the session: stop the programs running in it (see :meth:`use`; waits up
        to 10 s for them to end) and remove its workdir. False if there was no such
        session."""
        closing = self.begin_close(session_id, owner)
        if closing is None:
            return False
        await closing.finish()
        return True

    def begin_close(self, session_id: str, owner: str | None) -> ClosingSession | None:
        """The first half of :meth:`close`: from now on the session is gone for every new
        use or lookup (what holds it already goes on). ``None`` if there is no such
        session. Await the result's ``finish()`` for the rest."""
        entry = self._lookup(session_id, owner)
        if entry is None:
            return None
        self._detach(entry)
        return ClosingSession(self, entry)

    async def expire_idle(self) -> list[str]:
        """Close every session idle past its TTL (and not in use); return their ids."""
        now = self._clock()
        expired = [
            entry
            for entry in list(self._entries.values())
            if entry.leases == 0 and entry.session.expires_at <= now
        ]
        for entry in expired:
            await self._close_entry(entry)
        return [entry.session.session_id for entry in expired]

    # -- internals ----------------------------------------------------------------------

    def _lookup(self, session_id: str, owner: str | None) -> _Entry | None:
        if not _SESSION_ID_RE.match(session_id):
            return None
        entry = self._entries.get(session_id)
        if entry is None or entry.closed or entry.session.owner != owner:
            return None
        if entry.leases == 0 and entry.session.expires_at <= self._clock():
            return None  # expired; the sweeper removes it shortly
        return entry

    def _touch(self, entry: _Entry) -> None:
        now = self._clock()
        entry.session = evolve(entry.session, last_used_at=now, expires_at=now + entry.ttl)

    def _detach(self, entry: _Entry) -> None:
        """Mark the session closed and forget it: no lookup or new use finds it."""
        entry.closed = True
        self._entries.pop(entry.session.session_id, None)

    async def _close_entry(self, entry: _Entry) -> None:
        if entry.closed:
            return
        self._detach(entry)
        if entry.leases == 0:
            await self._remove_entry_files(entry)

    async def _stop_and_remove(self, entry: _Entry) -> None:
        """Stop the holders of a closed session; the last to let go removes its files."""
        me = asyncio.current_task()  # a holder closing its own session is not stopped
        users = [task for task in entry.users if not task.done() and task is not me]
        for task in users:
            entry.users[task] = True
            task.cancel()
        if users:
            await asyncio.wait(users, timeout=_STOP_WAIT)
        elif entry.leases == 0:
            await self._remove_entry_files(entry)

    async def _remove_entry_files(self, entry: _Entry) -> None:
        try:
            await _call_hook(self._release, entry.session)
        except Exception:
            logger.exception("release_workdir hook failed for %s", entry.session.session_id)
        await asyncio.to_thread(_remove_tree, entry.session.workdir)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                expired = await self.expire_idle()
                if expired:
                    logger.info("expired %d idle session(s)", len(expired))
            except Exception:
                logger.exception("session expiry failed")


def _remove_tree(path: Path) -> None:
    """Remove a directory tree, even where a program left parts of it read-only.

    Failures are logged, not raised: a session is closed even if its files resist.
    """

    def make_writable_and_retry(func: Callable[..., Any], target: str, _info: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
        with contextlib.suppress(OSError):
            if not os.path.islink(target):
                os.chmod(target, stat.S_IRWXU)
        func(target)

    try:
        if not os.path.lexists(path):
            return
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
        shutil.rmtree(path, onerror=make_writable_and_retry)
    except OSError:
        logger.exception("could not remove %s", path)
