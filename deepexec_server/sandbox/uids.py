"""Unprivileged host uids for sandboxes: one per live sandbox, never shared.

``RLIMIT_NPROC`` counts processes per *real uid across the whole machine*, and a
process can signal or ptrace any other process of its uid; so every live sandbox
(running or pre-started) gets its own uid from ``[uid_base, uid_base + uid_count)``.
A uid is held by an exclusive ``flock`` on ``<runtime_dir>/uids/<uid>.lock``, which
also keeps two executors (in one process or in two servers on one machine) apart.

A uid is released only after :func:`sweep_uid` has checked that no process of it is
left anywhere on the machine (killing stragglers, which the pid namespace should
already have made impossible).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import time
from pathlib import Path

__all__ = ["UidLease", "UidPool", "check_uid_range", "processes_of_uid", "sweep_uid"]

log = logging.getLogger(__name__)


class UidLease:
    """A uid held by this process until :meth:`release`."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the uid back (unlocks the lock file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether the lease is still held."""
        return self._fd is not None


class UidPool:
    """Hands out uids from a range, coordinating through lock files."""

    def __init__(self, lock_dir: Path, base: int, count: int) -> None:
        self.lock_dir = lock_dir
        self.base = base
        self.count = count
        self._next = 0
        self._released = asyncio.Event()
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def try_lease(self) -> UidLease | None:
        """Take a free uid now, or return ``None`` if the whole range is in use."""
        for i in range(self.count):
            uid = self.base + (self._next + i) % self.count
            fd = os.open(
                self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._next = (self._next + i + 1) % self.count
            return UidLease(uid, fd)
        return None

    async def lease(self) -> UidLease:
        """Take a free uid, waiting for one to be released if the range is exhausted."""
        while True:
            got = self.try_lease()
            if got is not None:
                return got
            self._released.clear()
            try:
                await asyncio.wait_for(self._released.wait(), timeout=0.05)
            except TimeoutError:
                pass

    def release(self, lease: UidLease) -> None:
        """Release ``lease`` and wake waiters."""
        lease.release()
        self._released.set()


def processes_of_uid(uid: int) -> list[int]:
    """Pids of every process on the machine whose real, effective or saved uid is ``uid``."""
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if str(uid).encode() in line.split()[1:5]:
                            found.append(int(name))
                        break
        except OSError:
            continue
    return found


def sweep_uid(uid: int, deadline_s: float = 5.0) -> int:
    """SIGKILL every process of ``uid`` until none is left; return how many were found.

    Zombies count as processes until their parent reaps them, so this waits (up to
    ``deadline_s``) rather than killing once.
    """
    end = time.monotonic() + deadline_s
    seen: set[int] = set()
    while True:
        pids = processes_of_uid(uid)
        if not pids:
            return len(seen)
        seen.update(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > end:
            log.error("sandbox uid %d still has processes %s after SIGKILL", uid, pids)
            return len(seen)
        time.sleep(0.005)


def check_uid_range(base: int, count: int) -> str | None:
    """Return why ``[base, base+count)`` is unsafe to use for sandboxes, or ``None``.

    The range must not contain a user from ``/etc/passwd`` nor overlap a subordinate
    uid range from ``/etc/subuid`` (rootless containers would share the uids).
    """
    if base <= 0 or base + count >= 2**32 - 1:
        return f"uid range {base}+{count} is out of bounds"
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit() and base <= int(parts[2]) < base + count:
                    return f"uid {parts[2]} ({parts[0]}) from /etc/passwd is in the sandbox range"
    except FileNotFoundError:
        pass
    try:
        with open("/etc/subuid", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    lo, n = int(parts[1]), int(parts[2])
                    if lo < base + count and base < lo + n:
                        return f"/etc/subuid range of {parts[0]} overlaps the sandbox range"
    except FileNotFoundError:
        pass
    return None
