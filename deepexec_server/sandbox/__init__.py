"""Sandboxed code execution for the DeepExec reference server.

The server codes against :class:`Executor` (see :mod:`.base`) and builds one with
:func:`create_executor` from a :class:`SandboxSettings` (limits table in
:mod:`.settings`). Backends:

* ``local`` (default, :mod:`.local`): bubblewrap, one fresh sandbox per execution,
  unprivileged per-sandbox uids, rlimits, size-limited tmpfs, warm pool.
* ``subprocess-insecure`` (:mod:`.insecure`): plain subprocesses, development only,
  used only with ``allow_insecure=True``.
* ``e2b`` (:mod:`.e2b_backend`): E2B cloud sandboxes with the caller's ``X-E2B-Key``
  (needs the optional ``e2b-code-interpreter`` package).
"""

from __future__ import annotations

import logging

from .base import (
    ExecutionOutcome,
    ExecutionRequest,
    Executor,
    LanguageInfo,
    Limits,
    OutputCallback,
    SandboxError,
    SandboxUnavailableError,
    UnsupportedLanguageError,
)
from .settings import DEFAULT_LIMITS, MAX_LIMITS, SandboxSettings

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_LIMITS",
    "ExecutionOutcome",
    "ExecutionRequest",
    "Executor",
    "LanguageInfo",
    "Limits",
    "OutputCallback",
    "SandboxError",
    "SandboxSettings",
    "SandboxUnavailableError",
    "UnsupportedLanguageError",
    "create_executor",
]

log = logging.getLogger(__name__)


def create_executor(settings: SandboxSettings) -> Executor:
    """Build the executor ``settings`` ask for (not started yet: ``await start()``).

    ``local``: when this machine cannot run bubblewrap sandboxes, returns the insecure
    subprocess backend if ``settings.allow_insecure`` (it warns loudly on every
    start), else the local executor, whose ``start()`` then raises
    :class:`SandboxUnavailableError` with the reason. ``subprocess-insecure`` itself
    also requires ``allow_insecure``.
    """
    if settings.backend == "e2b":
        from .e2b_backend import E2BExecutor

        return E2BExecutor(settings)
    from .insecure import SubprocessExecutor

    if settings.backend == "subprocess-insecure":
        if not settings.allow_insecure:
            raise SandboxUnavailableError(
                "the subprocess-insecure backend requires allow_insecure=True"
            )
        return SubprocessExecutor(settings)
    from .local import LocalExecutor, probe_local_sandbox

    if settings.allow_insecure:
        reason = probe_local_sandbox(settings)
        if reason is not None:
            log.warning("local sandbox unavailable (%s); falling back to subprocesses", reason)
            return SubprocessExecutor(settings)
    return LocalExecutor(settings)
