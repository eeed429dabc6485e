"""The sandbox executor interface: what the server codes against.

Every backend (``local`` = bubblewrap, ``subprocess-insecure``, ``e2b``) implements
:class:`Executor`. A request (:class:`ExecutionRequest`) carries the code, its
language, optional stdin, the *caller's* environment variables (nothing else is
ever added from the server's environment) and the :class:`Limits` to obey. The
server clamps limits to its maxima (:class:`~deepexec_server.sandbox.settings.SandboxSettings`)
before calling; a backend simply enforces what it is given.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import attrs
from attrs import define, field

__all__ = [
    "ExecutionOutcome",
    "ExecutionRequest",
    "Executor",
    "LanguageInfo",
    "Limits",
    "OutputCallback",
    "SandboxError",
    "SandboxUnavailableError",
    "UnsupportedLanguageError",
    "validate_env",
]

#: Called with ``("stdout" | "stderr", text)`` as output is produced. May be a plain
#: function or a coroutine function; a slow coroutine applies back-pressure (the
#: sandboxed process blocks on a full pipe rather than output piling up in memory).
OutputCallback = Callable[[str, str], Awaitable[None] | None]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SandboxError(Exception):
    """Base class of the sandbox package's errors (not of the program's failures:
    a program that crashes, times out or is killed is a normal
    :class:`ExecutionOutcome`)."""


class UnsupportedLanguageError(SandboxError):
    """The requested language is not available on this executor."""

    def __init__(self, language: str) -> None:
        super().__init__(f"unsupported language: {language!r}")
        self.language = language


class SandboxUnavailableError(SandboxError):
    """The backend cannot run sandboxes on this machine (e.g. bubblewrap or user
    namespaces are unusable); raised by :meth:`Executor.start`."""


def validate_env(env: Mapping[str, str]) -> None:
    """Reject environment variables a POSIX environment cannot carry faithfully.

    Names must be portable identifiers (``[A-Za-z_][A-Za-z0-9_]*``); values must not
    contain NUL. Raises :class:`ValueError` naming the offending variable (never its
    value: values may be secrets).
    """
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name: {name!r}")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"environment variable {name} has an invalid value")


@define(frozen=True, kw_only=True)
class Limits:
    """Resource limits for one execution (already clamped by the server).

    * ``timeout`` — wall-clock seconds; when reached the whole sandbox is killed and
      the outcome has ``timed_out=True``.
    * ``cpu_time`` — CPU seconds (``RLIMIT_CPU``: SIGXCPU, then SIGKILL one second later).
    * ``memory`` — bytes of memory the program may map (``RLIMIT_AS``; for JavaScript
      ``RLIMIT_DATA`` plus V8's heap limit, because V8 reserves ~1 GiB of address
      space it never touches). No cgroups are needed.
    * ``max_processes`` — processes *and threads* alive at once (``RLIMIT_NPROC``,
      counted per sandbox uid).
    * ``max_open_files`` — file descriptors per process (``RLIMIT_NOFILE``).
    * ``max_file_size`` — bytes any single file may grow to (``RLIMIT_FSIZE``).
    * ``max_output`` — bytes kept per stream (stdout, stderr); a program that writes
      more is killed and the stream's ``*_truncated`` flag is set.
    * ``max_disk`` — bytes in total for the work dir (a size-limited tmpfs). Without a
      session, ``/work``, ``/tmp`` and ``/dev/shm`` share this quota; with one, the
      session's ``/work`` has it and ``/tmp`` + ``/dev/shm`` another of the same size.
      Inodes are bounded too (one per 4 KiB of quota, at least 1024).
    """

    timeout: float
    cpu_time: float
    memory: int
    max_processes: int
    max_open_files: int
    max_file_size: int
    max_output: int
    max_disk: int

    def __attrs_post_init__(self) -> None:
        for f in attrs.fields(Limits):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Limits.{f.name} must be a positive number, got {value!r}")


@define(frozen=True, kw_only=True)
class ExecutionRequest:
    """One program to run.

    ``env`` holds the caller's environment variables *only*; the sandbox adds a fixed,
    documented base (``PATH``, ``HOME``, ``LANG``, ``TMPDIR``) under them.
    ``workdir`` is a persistent session directory (shared by the executions of one
    session, mounted at ``/work``); ``None`` gives a fresh, empty work dir that is
    destroyed after the execution. ``e2b_key`` is the caller's E2B API key (only the
    ``e2b`` backend uses it); it is excluded from ``repr`` and never logged.
    """

    code: str
    language: str
    stdin: str | None = None
    env: Mapping[str, str] = field(factory=dict)
    limits: Limits
    workdir: Path | None = None
    e2b_key: str | None = field(default=None, repr=False)


@define(frozen=True, kw_only=True)
class ExecutionOutcome:
    """What happened. A program's failure (non-zero exit, signal, timeout, output cut
    off) is reported here, never raised.

    ``exit_code`` is ``None`` when the program was killed by a signal (``signal`` then
    holds its number) or never ran (compile error: see ``compile_output``).
    ``execution_time_ms`` is the measured wall-clock time of the run step (for C/C++
    the compile step is not included); ``memory_usage`` the measured peak resident set
    size in bytes of the largest process of the sandbox (``wait4`` rusage).
    ``compile_output`` is the compiler's combined output for compiled languages
    (``None`` for interpreted ones).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    execution_time_ms: float
    memory_usage: int
    compile_output: str | None = None


@define(frozen=True, kw_only=True)
class LanguageInfo:
    """A language an executor can run, as detected at start (real versions)."""

    id: str
    name: str
    version: str
    file_extension: str


class Executor(abc.ABC):
    """A sandbox backend.

    Lifecycle: ``await start()`` once (detects runtimes, checks the sandbox works,
    fills warm pools), then any number of concurrent ``execute`` calls, then
    ``await close()``. Usable as an async context manager.
    """

    #: Backend name: ``"local"``, ``"e2b"`` or ``"subprocess-insecure"``.
    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Prepare the backend; raise :class:`SandboxUnavailableError` if it cannot work."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and kill every sandbox still running or pre-started."""

    @abc.abstractmethod
    def languages(self) -> list[LanguageInfo]:
        """The languages actually available (runtimes present), with real versions."""

    @abc.abstractmethod
    async def execute(
        self, req: ExecutionRequest, on_output: OutputCallback | None = None
    ) -> ExecutionOutcome:
        """Run ``req`` and return its outcome.

        ``on_output`` is called with each chunk of output as it is produced, in order
        per stream. Cancelling the task kills the whole sandbox (every process in it)
        before :class:`asyncio.CancelledError` propagates. Raises
        :class:`UnsupportedLanguageError` for an unknown language and
        :class:`ValueError` for a malformed request (e.g. an invalid env var name).
        """

    async def release_workdir(self, workdir: Path) -> None:  # noqa: B027 - optional hook
        """Forget a session work dir (call when the session closes, before removing it).

        Backends that attach resources to a session dir release them here: the local
        backend unmounts the size-limited tmpfs it mounted on it (its content is gone;
        the empty directory stays for the caller to remove), the e2b backend kills the
        session's remote sandbox. The default does nothing.
        """

    async def __aenter__(self) -> Executor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
