"""Starting and supervising one sandbox process tree (shared by the local backends).

:func:`start` starts ``argv`` in a new session with an *empty* environment and
three fresh pipes, normally through the launcher (:mod:`.launcher`), which applies
the rlimits, drops to the sandbox uid, reaps the whole tree and reports the child's
wait status and the exact peak RSS. The launcher's own exit is observed through a
pidfd and reaped with ``wait4`` (no asyncio child watcher involved).

:func:`supervise` feeds stdin, pumps stdout/stderr incrementally (to the caller's
callback, in arrival order, with back-pressure), enforces the wall-clock timeout and
the per-stream output cap, and returns a :class:`RawResult`.

Killing (:meth:`Spawned.kill`): SIGTERM to the launcher, which SIGKILLs its child's
process group (for bubblewrap: both of its processes; the death of the sandbox's
pid 1 makes the kernel kill every process of the pid namespace at once, whatever
session or group they moved to), then reaps everything and exits. Without the
launcher, the process group is killed.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import inspect
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from attrs import define

from .base import ExecutionOutcome, Limits, OutputCallback

__all__ = [
    "Launch",
    "RawResult",
    "Spawned",
    "control_channel",
    "send_control",
    "start",
    "supervise",
]

_PIPE_FLAGS = os.O_CLOEXEC

#: Longest we wait for the pipes to reach EOF once the process tree is gone.
EOF_GRACE_S = 10.0


@define(frozen=True, kw_only=True)
class RawResult:
    """What :func:`supervise` observed."""

    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    #: ``os.wait4`` status of the spawned process.
    wait_status: int
    timed_out: bool
    elapsed_ms: float
    max_rss: int


class Spawned:
    """A started process tree owned by this process (see :func:`start`)."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin_w: int,
        stdout_r: int,
        stderr_r: int,
        control: socket.socket | None,
        status_r: int | None,
        *,
        watch_ready: bool = True,
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdin_w: int | None = stdin_w
        self.stdout_r: int | None = stdout_r
        self.stderr_r: int | None = stderr_r
        self.control = control
        self._status_r = status_r
        self.started = time.monotonic()
        self.killed = False
        #: The launcher exited normally after reaping every descendant (with ``wait_all``:
        #: no process of the sandbox can be left anywhere).
        self.reported = False
        loop = asyncio.get_running_loop()
        self._loop = loop
        #: ``(wait status of the command, peak RSS in bytes or None)`` once reaped.
        self.exited: asyncio.Future[tuple[int, int | None]] = loop.create_future()
        self._pidfd: int | None = os.pidfd_open(self.pid)
        loop.add_reader(self._pidfd, self._on_exit)
        #: Set once the bootstrap has said its interpreter is up (see :func:`control_channel`).
        self.ready: asyncio.Future[None] = loop.create_future()
        if control is not None:
            control.setblocking(False)
            if watch_ready:
                loop.add_reader(control.fileno(), self._on_ready)

    def _on_ready(self) -> None:
        assert self.control is not None
        try:
            byte = self.control.recv(1)
        except BlockingIOError:
            return
        except OSError:
            byte = b""
        self._loop.remove_reader(self.control.fileno())
        if byte == b"R" and not self.ready.done():
            self.ready.set_result(None)

    def _on_exit(self) -> None:
        if self._status_r is None:
            # No launcher: the leader is a zombie until reaped, so its process group
            # id cannot have been reused yet; kill what is left in the group.
            _killpg_quiet(self.pid)
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: should not happen
            pid, status, rusage = self.pid, 0, None
        if pid == 0:
            return
        self._close_pidfd()
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        result: tuple[int, int | None]
        if self._status_r is not None:
            report = b""
            try:
                report = os.read(self._status_r, 256)
            except OSError:
                pass
            os.close(self._status_r)
            self._status_r = None
            fields = report.split()
            if len(fields) == 2:
                self.reported = True
                result = (int(fields[0]), int(fields[1]) * 1024)
            else:  # the launcher itself was killed: no report
                result = (status, None)
        else:
            result = (status, int(rusage.ru_maxrss) * 1024 if rusage is not None else None)
        if not self.exited.done():
            self.exited.set_result(result)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    @property
    def alive(self) -> bool:
        """Whether the spawned process has not been reaped yet."""
        return not self.exited.done()

    def kill(self) -> None:
        """Kill the whole tree now; idempotent.

        With the launcher: SIGTERM asks it to SIGKILL its child's process group
        (bubblewrap's two processes; the pid namespace dies with its pid 1), then it
        reaps everything and reports. If it has not exited two seconds later, it is
        SIGKILLed itself (its child follows through ``PR_SET_PDEATHSIG``).
        """
        if self.exited.done():
            return
        self.killed = True
        if self._status_r is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._loop.call_later(2.0, self._killpg)
        else:
            self._killpg()

    def _killpg(self) -> None:
        if self.exited.done():
            return
        _killpg_quiet(self.pid)

    def close_fds(self) -> None:
        """Close our ends of every pipe still open (not the launcher's status pipe)."""
        if self.control is not None:
            self._loop.remove_reader(self.control.fileno())
            self.control.close()
            self.control = None
        for attr in ("stdin_w", "stdout_r", "stderr_r"):
            fd = getattr(self, attr)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, None)

    def discard(self) -> None:
        """Kill, close pipes; reaping still happens through the pidfd watcher."""
        self.kill()
        self.close_fds()


def control_channel() -> tuple[int, socket.socket]:
    """The bootstrap's control channel: ``(the child's end, our end)``, a socket pair.

    The bootstrap writes one byte, ``R``, once its interpreter is up, then reads the
    control data until EOF (we shut our writing side down after sending it; our end
    stays open until the sandbox is gone, so that late ``R`` never hits a closed peer).
    """
    ours, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return child.detach(), ours


@define(frozen=True, kw_only=True)
class Launch:
    """How to start a command through the launcher (see :mod:`.launcher`)."""

    launcher: str
    #: Host uid to run as; ``None`` keeps the server's.
    uid: int | None = None
    #: ``(resource, soft, hard)`` triples, resource numbers from ``RLIMIT_CODES``.
    rlimits: Sequence[tuple[int, int, int]] = ()
    #: Wait for every descendant (bubblewrap) instead of killing the group after the child.
    wait_all: bool = True
    #: A network namespace (descriptor) to move the command into (see :mod:`.netns`).
    netns_fd: int | None = None
    #: A mount namespace (descriptor) to start the command in (see :mod:`.launcher`).
    mntns_fd: int | None = None


def start(
    argv: Sequence[str],
    *,
    launch: Launch | None,
    pass_fds: Sequence[int] = (),
    control: socket.socket | None = None,
    watch_ready: bool = True,
) -> Spawned:
    """Start ``argv`` with an empty environment, in a new session, with new pipes.

    With ``launch``, through the launcher (exact peak RSS, rlimits, uid drop); without,
    directly (peak RSS then includes the server's own, see :mod:`.launcher`).
    ``pass_fds`` are inherited under the same numbers (the caller closes its copies
    afterwards). ``control`` is our end of a :func:`control_channel` whose other end
    is in ``pass_fds``; it stays open until the process is gone. ``watch_ready``:
    resolve :attr:`Spawned.ready` when the bootstrap says it is up (a cold start,
    whose control data is already written, does not wait for that). Must run on the
    event loop thread.
    """
    in_r, in_w = os.pipe2(_PIPE_FLAGS)
    out_r, out_w = os.pipe2(_PIPE_FLAGS)
    err_r, err_w = os.pipe2(_PIPE_FLAGS)
    status_r: int | None = None
    status_w: int | None = None
    fds = list(pass_fds)
    full = list(argv)
    if launch is not None:
        status_r, status_w = os.pipe2(_PIPE_FLAGS)
        fds.append(status_w)
        opts = [str(status_w), str(launch.uid if launch.uid is not None else -1)]
        if launch.wait_all:
            opts.append("-a")
        if launch.netns_fd is not None:
            opts += ["-n", str(launch.netns_fd)]
            fds.append(launch.netns_fd)
        if launch.mntns_fd is not None:
            opts += ["-m", str(launch.mntns_fd)]
            fds.append(launch.mntns_fd)
        for res, soft, hard in launch.rlimits:
            opts += ["-r", f"{res}:{soft}:{hard}"]
        full = [launch.launcher, *opts, "--", *full]
    try:
        popen = subprocess.Popen(
            full,
            stdin=in_r,
            stdout=out_w,
            stderr=err_w,
            pass_fds=tuple(fds),
            env={},
            close_fds=True,
            start_new_session=True,
        )
    except BaseException:
        for fd in (in_w, out_r, err_r, status_r):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w, status_w):
            if fd is not None:
                os.close(fd)
    for fd in (in_w, out_r, err_r):
        os.set_blocking(fd, False)
    return Spawned(popen, in_w, out_r, err_r, control, status_r, watch_ready=watch_ready)


class _Dispatcher:
    """Delivers output chunks to the caller's callback in arrival order.

    Synchronous callbacks are called inline; awaitables returned are awaited one by one
    by a single task. While more than ``HIGH`` chunks wait, the pipes stop being read
    (the sandboxed program then blocks on a full pipe: back-pressure, no memory growth).
    """

    HIGH = 16
    LOW = 4

    def __init__(self, callback: OutputCallback | None) -> None:
        self.callback = callback
        self.queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.pausers: list[Callable[[bool], None]] = []
        self.paused = False
        self.error: BaseException | None = None
        self.on_error: Callable[[], None] = lambda: None

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self.on_error()

    def emit(self, stream: str, text: str) -> None:
        if self.callback is None or not text or self.error is not None:
            return
        if self.task is None and self.queue.empty():
            try:
                result = self.callback(stream, text)
            except Exception as exc:  # stop the program, report after reaping it
                self._fail(exc)
                return
            if inspect.isawaitable(result):
                self.task = asyncio.ensure_future(self._drain(result))
            return
        self.queue.put_nowait((stream, text))
        if self.queue.qsize() > self.HIGH and not self.paused:
            self.paused = True
            for pause in self.pausers:
                pause(True)

    async def _drain(self, first: Awaitable[None]) -> None:
        try:
            await first
            while True:
                if self.paused and self.queue.qsize() < self.LOW:
                    self.paused = False
                    for pause in self.pausers:
                        pause(False)
                if self.queue.empty():
                    return
                item = self.queue.get_nowait()
                if item is None:
                    return
                assert self.callback is not None
                result = self.callback(*item)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            self._fail(exc)
        finally:
            self.task = None
            if self.paused:
                self.paused = False
                for pause in self.pausers:
                    pause(False)
            if not self.queue.empty() and self.error is None:
                # Items queued while the last awaitable finished: keep going.
                self.task = asyncio.ensure_future(self._drain(_noop()))

    async def flush(self) -> None:
        while self.task is not None:
            await asyncio.shield(self.task)


async def _noop() -> None:
    return None


class _StreamProtocol(asyncio.Protocol):
    """Reads one output pipe: keeps up to ``cap`` bytes, decodes incrementally."""

    def __init__(
        self, name: str, cap: int, dispatcher: _Dispatcher, on_overflow: Callable[[], None]
    ) -> None:
        self.name = name
        self.cap = cap
        self.kept = 0
        self.truncated = False
        self.parts: list[str] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.dispatcher = dispatcher
        self.on_overflow = on_overflow
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self.transport = transport

    def pause(self, on: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if on:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self.cap - self.kept
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.kept += len(data)
        text = self.decoder.decode(data)
        if text:
            self.parts.append(text)
            self.dispatcher.emit(self.name, text)
        if self.truncated:
            self.on_overflow()

    def _finish(self) -> None:
        tail = self.decoder.decode(b"", final=True)
        if tail:
            self.parts.append(tail)
            self.dispatcher.emit(self.name, tail)
        if not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    @property
    def text(self) -> str:
        return "".join(self.parts)


class _StdinProtocol(asyncio.BaseProtocol):
    """Write side of the stdin pipe; errors (the program stopped reading) are ignored."""

    def connection_lost(self, exc: Exception | None) -> None:
        return None


async def _open_writer(fd: int, data: bytes) -> asyncio.WriteTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(_StdinProtocol, os.fdopen(fd, "wb", buffering=0))
    if data:
        transport.write(data)
    transport.close()  # flushes what is buffered, then closes
    return transport


def send_what_fits(sock: socket.socket, payload: bytes) -> bytes | None:
    """Send what of ``payload`` the socket's buffer takes now, without blocking; then EOF
    (``shutdown(SHUT_WR)``) if that was all. Returns the rest (None: all sent)."""
    sock.setblocking(False)
    if payload:
        try:
            payload = payload[sock.send(payload) :]
        except BlockingIOError:
            return payload
        if payload:
            return payload
    sock.shutdown(socket.SHUT_WR)
    return None


async def send_control(sp: Spawned, payload: bytes) -> None:
    """Send the control payload to the child, then EOF (``shutdown(SHUT_WR)``)."""
    sock = sp.control
    if sock is None:
        return
    await asyncio.get_running_loop().sock_sendall(sock, payload)
    sock.shutdown(socket.SHUT_WR)


async def supervise(
    sp: Spawned,
    *,
    stdin: bytes | None,
    timeout: float,
    max_output: int,
    on_output: OutputCallback | None,
    t0: float,
    control: bytes | None = None,
) -> RawResult:
    """Drive ``sp`` to completion (see the module docstring).

    ``t0`` is the ``time.monotonic()`` the run is measured from; the timeout counts
    from it too. ``control``: control data still to send to ``sp`` (then EOF), sent once
    the pipes are being read, so that a program blocked on a full pipe cannot keep the
    rest from arriving (what fits the socket's buffer is best sent before, with
    :func:`send_what_fits`).
    On cancellation the tree is killed and reaped before ``CancelledError`` propagates.
    """
    loop = asyncio.get_running_loop()
    dispatcher = _Dispatcher(on_output)
    dispatcher.on_error = sp.kill
    overflowed = False

    def on_overflow() -> None:
        nonlocal overflowed
        overflowed = True
        sp.kill()

    protos: list[_StreamProtocol] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        for name, attr in (("stdout", "stdout_r"), ("stderr", "stderr_r")):
            fd = getattr(sp, attr)
            setattr(sp, attr, None)
            proto = _StreamProtocol(name, max_output, dispatcher, on_overflow)
            transport, _ = await loop.connect_read_pipe(
                functools.partial(_same, proto), os.fdopen(fd, "rb", buffering=0)
            )
            transports.append(transport)
            protos.append(proto)
            dispatcher.pausers.append(proto.pause)
        if control is not None:
            await send_control(sp, control)
        if sp.stdin_w is not None:
            fd, sp.stdin_w = sp.stdin_w, None
            if stdin:
                transports.append(await _open_writer(fd, stdin))
            else:
                os.close(fd)  # nothing to feed: the program reads EOF at once

        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            if sp.alive:
                timed_out = True
                sp.kill()

        # A timer plus one await (not wait_for): the fewest event-loop hops between the
        # launcher's exit and the result. On timeout the tree is killed and reaped.
        timer = loop.call_at(loop.time() + max(0.0, t0 + timeout - time.monotonic()), on_timeout)
        try:
            status, max_rss = await asyncio.shield(sp.exited)
        finally:
            timer.cancel()
        elapsed_ms = (time.monotonic() - t0) * 1000.0
        pending = [p.done for p in protos if not p.done.done()]
        if pending:
            await asyncio.wait([asyncio.shield(f) for f in pending], timeout=EOF_GRACE_S)
        if dispatcher.task is not None:
            await dispatcher.flush()
        if dispatcher.error is not None:
            raise dispatcher.error
        return RawResult(
            stdout=protos[0].text,
            stderr=protos[1].text,
            stdout_truncated=protos[0].truncated,
            stderr_truncated=protos[1].truncated,
            wait_status=status,
            timed_out=timed_out and not overflowed,
            elapsed_ms=elapsed_ms,
            max_rss=max_rss or 0,
        )
    except asyncio.CancelledError:
        sp.kill()
        try:
            await asyncio.wait_for(asyncio.shield(sp.exited), 5.0)
        except (TimeoutError, asyncio.CancelledError):
            pass
        raise
    finally:
        if sp.alive:
            sp.kill()
        for t in transports:
            if isinstance(t, asyncio.WriteTransport):
                if t.get_write_buffer_size():  # stdin the program never read: drop it
                    t.abort()
            else:
                t.close()
        sp.close_fds()


def _same(proto: _StreamProtocol) -> _StreamProtocol:
    return proto


def _killpg_quiet(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def decode_status(status: int, *, via_bwrap: bool) -> tuple[int | None, int | None]:
    """``(exit_code, signal)`` of a wait status. Through bubblewrap, a program killed by
    signal N shows as exit 128+N, and is reported as that signal (as a shell would)."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    if via_bwrap and 128 < code <= 128 + 64:
        return None, code - 128
    return code, None


def env_payload(env: Mapping[str, str]) -> bytes:
    """The caller's environment as the bootstrap reads it from the control channel."""
    return b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0" for k, v in env.items())


def run_outcome(raw: RawResult, *, via_bwrap: bool, compile_output: str | None) -> ExecutionOutcome:
    """The outcome of a program that ran (whatever its exit)."""
    exit_code, sig = decode_status(raw.wait_status, via_bwrap=via_bwrap)
    return ExecutionOutcome(
        stdout=raw.stdout,
        stderr=raw.stderr,
        exit_code=exit_code,
        signal=sig,
        timed_out=raw.timed_out,
        stdout_truncated=raw.stdout_truncated,
        stderr_truncated=raw.stderr_truncated,
        execution_time_ms=raw.elapsed_ms,
        memory_usage=raw.max_rss,
        compile_output=compile_output,
    )


def compile_failure(raw: RawResult, *, via_bwrap: bool) -> ExecutionOutcome:
    """The outcome of a compile step that failed (or ran out of time): the compiler's
    messages as stderr and compile_output, nothing run."""
    exit_code, sig = decode_status(raw.wait_status, via_bwrap=via_bwrap)
    compile_output = raw.stdout + raw.stderr
    return ExecutionOutcome(
        stdout="",
        stderr=compile_output,
        exit_code=exit_code,
        signal=sig,
        timed_out=raw.timed_out,
        stdout_truncated=False,
        stderr_truncated=raw.stdout_truncated or raw.stderr_truncated,
        execution_time_ms=0.0,
        memory_usage=raw.max_rss,
        compile_output=compile_output,
    )


async def compile_and_run(
    compile_step: Callable[[], Spawned],
    run_step: Callable[[], Spawned],
    *,
    limits: Limits,
    stdin: bytes | None,
    on_output: OutputCallback | None,
    via_bwrap: bool,
) -> ExecutionOutcome:
    """A compiled language: start ``compile_step`` and wait for it; if it failed, that is
    the outcome (nothing runs); else start ``run_step`` (timed from its start, with the
    caller's stdin and output callback) and return its outcome with the compiler's
    messages as ``compile_output``."""
    sp = compile_step()
    raw = await supervise(
        sp,
        stdin=None,
        timeout=limits.timeout,
        max_output=limits.max_output,
        on_output=None,
        t0=time.monotonic(),
    )
    if raw.timed_out or raw.wait_status != 0:
        return compile_failure(raw, via_bwrap=via_bwrap)
    compile_output = raw.stdout + raw.stderr
    t0 = time.monotonic()
    sp = run_step()
    raw = await supervise(
        sp,
        stdin=stdin,
        timeout=limits.timeout,
        max_output=limits.max_output,
        on_output=on_output,
        t0=t0,
    )
    return run_outcome(raw, via_bwrap=via_bwrap, compile_output=compile_output)
