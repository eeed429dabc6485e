"""The ``subprocess-insecure`` backend: plain child processes, NO isolation.

For development machines where bubblewrap or user namespaces are unavailable, and
only when ``SandboxSettings.allow_insecure`` is true. Programs run as the server's
own user, see the whole file system and the network, and can read the server's
files. What it still does: an environment holding only the caller's variables
(plus ``PATH``/``HOME``/``LANG``/``TMPDIR``), ``RLIMIT_CPU``/``AS``/``NOFILE``/
``FSIZE``/``CORE`` (not ``NPROC``, which would count every process of the server's
user), a fresh temporary work dir (no disk quota), the wall-clock timeout, output
caps, streaming, and killing the child's process group on timeout, cancellation or
exit (processes that left the group with ``setsid`` escape). Peak memory is exact
when the launcher (:mod:`.launcher`) could be built, else it includes the server's
own RSS.
Every :meth:`start` logs a loud warning.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .base import (
    ExecutionOutcome,
    ExecutionRequest,
    Executor,
    LanguageInfo,
    Limits,
    OutputCallback,
    SandboxError,
    UnsupportedLanguageError,
    validate_env,
)
from .hostfs import write_new_file
from .languages import C_INIT_NAME, C_INIT_SOURCE, LanguageSpec, detect_languages, resolve_language
from .launcher import RLIMIT_CODES, build_launcher
from .process import (
    Launch,
    Spawned,
    compile_and_run,
    control_channel,
    env_payload,
    run_outcome,
    start,
    supervise,
)
from .settings import SandboxSettings

__all__ = ["SubprocessExecutor"]

log = logging.getLogger(__name__)

PRLIMIT = "/usr/bin/prlimit"

WARNING = (
    "INSECURE SANDBOX: the 'subprocess-insecure' backend runs untrusted code as the "
    "server's own user with NO isolation (file system, network and processes are all "
    "reachable). Use it for local development only; install bubblewrap "
    "(scripts/install-system-deps.sh) and run as root for the real 'local' sandbox."
)


def _rlimits(limits: Limits, spec: LanguageSpec) -> list[tuple[int, int, int]]:
    r = RLIMIT_CODES
    cpu = max(1, math.ceil(limits.cpu_time))
    mem = r["data"] if spec.uses_rlimit_data else r["as"]
    return [
        (r["cpu"], cpu, cpu + 1),
        (r["nofile"], limits.max_open_files, limits.max_open_files),
        (r["fsize"], limits.max_file_size, limits.max_file_size),
        (r["core"], 0, 0),
        (mem, limits.memory, limits.memory),
    ]


def _prlimit_prefix(limits: Limits, spec: LanguageSpec) -> list[str]:
    """Fallback when the launcher cannot be built: rlimits through prlimit(1)."""
    if not os.access(PRLIMIT, os.X_OK):
        return []
    names = {v: k for k, v in RLIMIT_CODES.items()}
    return [
        PRLIMIT,
        *(f"--{names[res]}={soft}:{hard}" for res, soft, hard in _rlimits(limits, spec)),
        "--",
    ]


class SubprocessExecutor(Executor):
    """Runs code as plain subprocesses (see the module docstring). Insecure."""

    name = "subprocess-insecure"

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._langs: dict[str, tuple[LanguageSpec, LanguageInfo]] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._started = False
        self._launcher: str | None = None

    async def start(self) -> None:
        """Detect runtimes, build the launcher if possible; log the warning (every time)."""
        log.warning(WARNING)
        self._launcher = await asyncio.to_thread(self._build_launcher)
        self._langs = await detect_languages(enabled=self.settings.languages)
        self._started = True

    def _build_launcher(self) -> str | None:
        for directory in (
            self.settings.runtime_dir,
            Path(tempfile.gettempdir()) / f"deepexec-launcher-{os.getuid()}",
        ):
            try:
                return str(build_launcher(directory))
            except (OSError, RuntimeError):
                continue
        log.warning("no sandbox launcher (gcc missing?): memory_usage includes the server's RSS")
        return None

    def _spawn(
        self,
        command: list[str],
        env: dict[str, str],
        work: Path,
        spec: LanguageSpec,
        limits: Limits,
        **kw: Any,
    ) -> Spawned:
        # The child starts with an empty environment; env(1) sets ours and the cwd.
        argv = ["/usr/bin/env", "-i", "--chdir", str(work), *(f"{k}={v}" for k, v in env.items())]
        if self._launcher is not None:
            launch = Launch(launcher=self._launcher, rlimits=_rlimits(limits, spec), wait_all=False)
            return start([*argv, *command], launch=launch, **kw)
        return start([*_prlimit_prefix(limits, spec), *argv, *command], launch=None, **kw)

    async def close(self) -> None:
        """Nothing outlives an execution here; just mark the executor closed."""
        self._started = False

    def languages(self) -> list[LanguageInfo]:
        """Languages whose runtime answered ``--version`` at start."""
        return [info for _, info in self._langs.values()]

    async def execute(
        self, req: ExecutionRequest, on_output: OutputCallback | None = None
    ) -> ExecutionOutcome:
        """Run ``req`` as a plain subprocess (see :class:`~.base.Executor`)."""
        entry = self._langs.get(resolve_language(req.language))
        if entry is None:
            raise UnsupportedLanguageError(req.language)
        if not self._started:
            raise SandboxError("the executor is not running")
        validate_env(req.env)
        spec = entry[0]
        async with self._slots:
            tmp = Path(tempfile.mkdtemp(prefix="deepexec-insecure-"))
            try:
                return await self._run(spec, req, on_output, tmp)
            finally:
                await asyncio.to_thread(shutil.rmtree, tmp, True)

    async def _run(
        self,
        spec: LanguageSpec,
        req: ExecutionRequest,
        on_output: OutputCallback | None,
        tmp: Path,
    ) -> ExecutionOutcome:
        work = req.workdir if req.workdir is not None else tmp / "work"
        work.mkdir(parents=True, exist_ok=True)
        program = tmp / f"main.{spec.file_extension}"
        write_new_file(program, req.code.encode("utf-8", "surrogateescape"))
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),
        }
        stdin = req.stdin.encode("utf-8", "surrogateescape") if req.stdin is not None else None
        limits = req.limits
        if spec.compiled:
            assert spec.compile_argv is not None
            write_new_file(tmp / C_INIT_NAME, C_INIT_SOURCE.encode())
            command = spec.compile_argv(str(program), str(tmp / C_INIT_NAME), str(tmp / "main"))
            return await compile_and_run(
                lambda: self._spawn(command, env, work, spec, limits),
                lambda: self._spawn([str(tmp / "main")], {**env, **req.env}, work, spec, limits),
                limits=limits,
                stdin=stdin,
                on_output=on_output,
                via_bwrap=False,
            )
        assert spec.bootstrap is not None
        ctl_r, ctl = control_channel()
        try:
            command = spec.bootstrap(ctl_r, str(program), str(work), limits.memory)
            t0 = time.monotonic()
            sp = self._spawn(command, env, work, spec, limits, pass_fds=[ctl_r], control=ctl)
        finally:
            os.close(ctl_r)
        raw = await supervise(
            sp,
            stdin=stdin,
            timeout=limits.timeout,
            max_output=limits.max_output,
            on_output=on_output,
            t0=t0,
            control=env_payload(req.env),
        )
        return run_outcome(raw, via_bwrap=False, compile_output=None)
