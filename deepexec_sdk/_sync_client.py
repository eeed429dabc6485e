"""DeepExecClient: the blocking facade.

It drives a DeepExecAsyncClient on a private event loop (see _sync.LoopThread: the calling
thread runs it when it can, else a helper thread does), so it works in plain scripts, in
threads, and where an event loop is already running (Jupyter). Streams are plain
iterators. close() closes the loop and joins the helper thread, if one was started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from deepexec_protocol import models as m

from ._client import (
    AsyncSession,
    DeepExecAsyncClient,
    OutputCallback,
    ProgressCallback,
    _job_id,
)
from ._config import ClientConfig
from ._streams import ExecutionStream, TextStream
from ._sync import LoopThread
from .exceptions import MCPError

T = TypeVar("T")


def _closed_error() -> MCPError:
    return MCPError("the DeepExecClient is closed")


def _run(loop: LoopThread, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run(coro)``; a closed client raises MCPError (not LoopThread's RuntimeError)."""
    if loop.closed:
        coro.close()
        raise _closed_error()
    return loop.run(coro)


def _iterate(loop: LoopThread, factory: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """``loop.iterate(factory)``, checking at once that the client is open."""
    if loop.closed:
        raise _closed_error()
    return loop.iterate(factory)


class DeepExecClient:
    """Blocking client of a DeepExec server, with the same methods and arguments as
    :class:`DeepExecAsyncClient`. Use it as ``with DeepExecClient() as client:`` or call
    :meth:`close` when done.

    Configuration comes, per setting, from the constructor argument, else the environment
    (``DEEPEXEC_*``), else the TOML config file, else the default.

    Args:
        endpoint: base URL of the server (default ``http://127.0.0.1:8787``).
        timeout: seconds one HTTP request may take (default 60).
        max_retries: retries of a failed retryable request (default 3).
        retry_delay: base of the exponential backoff, in seconds (default 0.5).
        deepseek_key: DeepSeek API key, sent as ``X-DeepSeek-Key``.
        e2b_key: E2B API key, sent as ``X-E2B-Key``.
        verify_ssl: verify the server's TLS certificate (default True).
        api_key: the server's access token, sent as ``Authorization: Bearer``.
        headers: extra headers sent with every request.

    Raises:
        MCPConfigurationError: a setting is invalid; the message names its source.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        deepseek_key: str | None = None,
        e2b_key: str | None = None,
        verify_ssl: bool | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._async = DeepExecAsyncClient(
            endpoint=endpoint,
            timeout=timeout,
            max_retries=max_retries,
            retry_delay=retry_delay,
            deepseek_key=deepseek_key,
            e2b_key=e2b_key,
            verify_ssl=verify_ssl,
            api_key=api_key,
            headers=headers,
        )
        self._loop = LoopThread(name="deepexec-sync-client")

    @property
    def config(self) -> ClientConfig:
        """The resolved configuration (secrets are left out of its repr)."""
        return self._async.config

    def __repr__(self) -> str:
        return f"DeepExecClient(endpoint={self.config.endpoint!r})"

    def close(self) -> None:
        """Close the connections and the private event loop (idempotent). Calls
        still waiting in other threads raise MCPError at once; submitted jobs go on running
        on the server."""
        if not self._loop.closed:
            try:
                _run(self._loop, self._async.close())
            finally:
                self._loop.close()

    def __enter__(self) -> DeepExecClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.closed:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - best effort at interpreter teardown
                pass

    # ------------------------------------------------------------------ server

    def health(self) -> m.HealthInfo:
        """See :meth:`DeepExecAsyncClient.health`."""
        return _run(self._loop, self._async.health())

    def list_languages(self) -> list[m.LanguageInfo]:
        """See :meth:`DeepExecAsyncClient.list_languages`."""
        return _run(self._loop, self._async.list_languages())

    # ------------------------------------------------------------------ code execution

    def execute_code_and_wait(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        session_id: str | None = None,
        *,
        memory_limit: int | None = None,
        check: bool = True,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> m.CodeExecutionResult:
        """See :meth:`DeepExecAsyncClient.execute_code_and_wait` (callbacks run on the
        client's private loop: in the calling thread when it runs that loop itself)."""
        return _run(
            self._loop,
            self._async.execute_code_and_wait(
                code,
                language,
                environment,
                timeout,
                stdin,
                session_id,
                memory_limit=memory_limit,
                check=check,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
            ),
        )

    def execute_code_job(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        session_id: str | None = None,
        **kwargs: Any,
    ) -> m.JobSubmitted:
        """See :meth:`DeepExecAsyncClient.execute_code_job`."""
        return _run(
            self._loop,
            self._async.execute_code_job(
                code, language, environment, timeout, stdin, session_id, **kwargs
            ),
        )

    def get_code_execution_result(
        self,
        job_id: str,
        *,
        max_wait_time: float | None = None,
        check: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> m.CodeExecutionResult:
        """See :meth:`DeepExecAsyncClient.get_code_execution_result`."""
        return _run(
            self._loop,
            self._async.get_code_execution_result(
                job_id, max_wait_time=max_wait_time, check=check, on_progress=on_progress
            ),
        )

    def execute_code_stream(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        session_id: str | None = None,
        **kwargs: Any,
    ) -> SyncExecutionStream:
        """See :meth:`DeepExecAsyncClient.execute_code_stream`; iterate it with ``for``.

        Returns:
            SyncExecutionStream: ``for chunk in stream`` yields JobOutputEvent chunks;
            afterwards ``stream.result`` is the CodeExecutionResult.
        """
        stream = _run(
            self._loop,
            self._async.execute_code_stream(
                code, language, environment, timeout, stdin, session_id, **kwargs
            ),
        )
        return SyncExecutionStream(self._loop, stream)

    # ------------------------------------------------------------------ text generation

    def generate_text_and_wait(
        self,
        prompt: str,
        model: str = "deepseek-v3",
        max_tokens: int | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> m.TextGenerationResult:
        """See :meth:`DeepExecAsyncClient.generate_text_and_wait`."""
        return _run(
            self._loop,
            self._async.generate_text_and_wait(prompt, model, max_tokens, temperature, **kwargs),
        )

    def generate_text_stream(
        self,
        prompt: str,
        model: str = "deepseek-v3",
        max_tokens: int | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> SyncTextStream:
        """See :meth:`DeepExecAsyncClient.generate_text_stream`; iterate it with ``for``.

        Returns:
            SyncTextStream: ``for text in stream`` yields the pieces of text; afterwards
            ``stream.result`` and ``stream.usage`` are set.
        """
        stream = _run(
            self._loop,
            self._async.generate_text_stream(prompt, model, max_tokens, temperature, **kwargs),
        )
        return SyncTextStream(self._loop, stream)

    def generate_text_job(
        self,
        prompt: str,
        model: str = "deepseek-v3",
        max_tokens: int | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> m.JobSubmitted:
        """See :meth:`DeepExecAsyncClient.generate_text_job`."""
        return _run(
            self._loop,
            self._async.generate_text_job(prompt, model, max_tokens, temperature, **kwargs),
        )

    def get_text_generation_result(
        self,
        job_id: str,
        *,
        max_wait_time: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> m.TextGenerationResult:
        """See :meth:`DeepExecAsyncClient.get_text_generation_result`."""
        return _run(
            self._loop,
            self._async.get_text_generation_result(
                job_id, max_wait_time=max_wait_time, on_progress=on_progress
            ),
        )

    # ------------------------------------------------------------------ jobs

    def submit_job(
        self,
        name: str,
        job_type: str,
        data: Mapping[str, Any],
        timeout: float | None = None,
        priority: int = 0,
        tags: list[str] | None = None,
        *,
        session_id: str | None = None,
    ) -> m.JobSubmitted:
        """See :meth:`DeepExecAsyncClient.submit_job`."""
        return _run(
            self._loop,
            self._async.submit_job(
                name, job_type, data, timeout, priority, tags, session_id=session_id
            ),
        )

    def get_job_status(self, job_id: str) -> m.JobStatus:
        """See :meth:`DeepExecAsyncClient.get_job_status`."""
        return _run(self._loop, self._async.get_job_status(job_id))

    def cancel_job(self, job_id: str, reason: str | None = None) -> m.JobCanceled:
        """See :meth:`DeepExecAsyncClient.cancel_job`."""
        return _run(self._loop, self._async.cancel_job(job_id, reason))

    def list_jobs(
        self,
        status: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        *,
        page_size: int = 50,
    ) -> Iterator[m.JobStatus]:
        """See :meth:`DeepExecAsyncClient.list_jobs`; a plain iterator across pages.

        Returns:
            Iterator[JobStatus]: the jobs, newest first; pages are fetched as the
            iteration reaches them.
        """
        jobs = self._async.list_jobs(status, tag, limit, page_size=page_size)  # validates now
        return _iterate(self._loop, lambda: jobs)

    def wait_for_job(
        self,
        job_id: str,
        poll_interval: float | None = None,
        max_wait_time: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> m.JobStatus:
        """See :meth:`DeepExecAsyncClient.wait_for_job` (``on_progress`` runs on
        the client's private loop: in the calling thread when it runs that loop itself)."""
        return _run(
            self._loop, self._async.wait_for_job(job_id, poll_interval, max_wait_time, on_progress)
        )

    def job_events(self, job_id: str) -> Iterator[m.JobEvent]:
        """See :meth:`DeepExecAsyncClient.job_events`; a plain iterator.

        Returns:
            Iterator[JobEvent]: the job's events, ending with a JobResultEvent.
        """
        _job_id(job_id)  # validate now; the stream itself must be opened on the loop
        return _iterate(self._loop, lambda: self._async.job_events(job_id))

    # ------------------------------------------------------------------ sessions

    def create_session(self, ttl: int | None = None) -> Session:
        """See :meth:`DeepExecAsyncClient.create_session`; use it as ``with
        client.create_session() as session:``.

        Returns:
            Session: with ``session_id``, ``info`` and the execution and generation
            methods of the client.
        """
        return Session(self, _run(self._loop, self._async.create_session(ttl)))

    def close_session(self, session_id: str) -> m.SessionClosed:
        """See :meth:`DeepExecAsyncClient.close_session`."""
        return _run(self._loop, self._async.close_session(session_id))


class SyncTextStream:
    """Blocking view of a TextStream: ``for text in stream``, then ``stream.result``."""

    def __init__(self, loop: LoopThread, stream: TextStream) -> None:
        self._loop = loop
        self._stream = stream

    def __iter__(self) -> Iterator[str]:
        return _iterate(self._loop, self._stream.__aiter__)

    @property
    def result(self) -> m.TextGenerationResult | None:
        """The whole result, once the stream has ended."""
        return self._stream.result

    @property
    def usage(self) -> m.Usage | None:
        """Token usage, once the stream has ended."""
        return self._stream.usage

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._stream.text

    def close(self) -> None:
        """Stop receiving and close the connection."""
        _run(self._loop, self._stream.aclose())


class SyncExecutionStream:
    """Blocking view of an ExecutionStream: ``for chunk in stream``, then ``stream.result``."""

    def __init__(self, loop: LoopThread, stream: ExecutionStream) -> None:
        self._loop = loop
        self._stream = stream
        self.job_id = stream.job_id

    def __iter__(self) -> Iterator[m.JobOutputEvent]:
        return _iterate(self._loop, self._stream.__aiter__)

    @property
    def result(self) -> m.CodeExecutionResult | None:
        """The CodeExecutionResult, once the stream has ended."""
        return self._stream.result

    @property
    def job(self) -> m.JobStatus | None:
        """The final JobStatus, once the stream has ended."""
        return self._stream.job

    def kill(self, reason: str | None = "killed by the client") -> m.JobCanceled:
        """Cancel the job; its processes are killed at once.

        Args:
            reason: recorded with the job.

        Returns:
            JobCanceled: ``job_id``, ``status``, ``canceled_at`` and ``reason``.

        Raises:
            MCPConflictError: the job had already finished.
        """
        return _run(self._loop, self._stream.kill(reason))


class Session:
    """Blocking view of an AsyncSession; a context manager that closes the session."""

    def __init__(self, client: DeepExecClient, session: AsyncSession) -> None:
        self._client = client
        self._session = session
        self.session_id = session.session_id
        self.info = session.info

    def __repr__(self) -> str:
        return f"Session(session_id={self.session_id!r}, closed={self._session.closed})"

    def execute_code_and_wait(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        **kwargs: Any,
    ) -> m.CodeExecutionResult:
        """:meth:`DeepExecClient.execute_code_and_wait` inside this session."""
        return self._client.execute_code_and_wait(
            code, language, environment, timeout, stdin, self.session_id, **kwargs
        )

    def execute_code_job(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        **kwargs: Any,
    ) -> m.JobSubmitted:
        """:meth:`DeepExecClient.execute_code_job` inside this session."""
        return self._client.execute_code_job(
            code, language, environment, timeout, stdin, self.session_id, **kwargs
        )

    def execute_code_stream(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        **kwargs: Any,
    ) -> SyncExecutionStream:
        """:meth:`DeepExecClient.execute_code_stream` inside this session."""
        return self._client.execute_code_stream(
            code, language, environment, timeout, stdin, self.session_id, **kwargs
        )

    def generate_text_and_wait(self, prompt: str, **kwargs: Any) -> m.TextGenerationResult:
        """:meth:`DeepExecClient.generate_text_and_wait` inside this session."""
        return self._client.generate_text_and_wait(prompt, session_id=self.session_id, **kwargs)

    def generate_text_stream(self, prompt: str, **kwargs: Any) -> SyncTextStream:
        """:meth:`DeepExecClient.generate_text_stream` inside this session."""
        return self._client.generate_text_stream(prompt, session_id=self.session_id, **kwargs)

    def generate_text_job(self, prompt: str, **kwargs: Any) -> m.JobSubmitted:
        """:meth:`DeepExecClient.generate_text_job` inside this session."""
        return self._client.generate_text_job(prompt, session_id=self.session_id, **kwargs)

    def close(self) -> None:
        """Close the session on the server (idempotent).

        Raises:
            MCPConnectionError: the server can not be reached (the session stays open).
        """
        _run(self._client._loop, self._session.close())

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
