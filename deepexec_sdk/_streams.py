"""Stream handles returned by generate_text_stream and execute_code_stream."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
from deepexec_protocol import models as m

from ._results import job_result
from .exceptions import MCPConnectionError, MCPTimeoutError

if TYPE_CHECKING:
    from ._client import DeepExecAsyncClient

OutputCallback = Callable[[str], Awaitable[None] | None]

#: an ExecutionStream gives up after this many cuts in a row without new output
_MAX_RECONNECTS = 5


class TextStream:
    """A text generation in progress.

    ``async for text in stream`` yields each piece of text as the provider produces it.
    When the loop ends, :attr:`result` holds the whole TextGenerationResult (with the
    final ``usage``). Leaving the loop early closes the connection.
    """

    def __init__(self, events: AsyncIterator[m.TextGenerationStreamEvent]) -> None:
        self._events = events
        self.result: m.TextGenerationResult | None = None
        self.chunks: list[str] = []

    @property
    def usage(self) -> m.Usage | None:
        """Token usage, known once the stream has ended."""
        return None if self.result is None else self.result.usage

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self.chunks)

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for event in self._events:
                if isinstance(event, m.TextGenerationChunk):
                    self.chunks.append(event.delta)
                    yield event.delta
                elif isinstance(event, m.TextGenerationDone):
                    self.result = event.result
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop receiving and close the connection."""
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()


class ExecutionStream:
    """A code execution job whose output streams as it is produced.

    ``async for chunk in stream`` yields JobOutputEvent chunks (``chunk.stream`` is
    ``stdout`` or ``stderr``; ``chunk.data`` the text), calling ``on_stdout`` /
    ``on_stderr`` for each. When the loop ends, :attr:`result` is the CodeExecutionResult
    and :attr:`job` the final JobStatus. :meth:`kill` cancels the job.
    """

    def __init__(
        self,
        client: DeepExecAsyncClient,
        job_id: str,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> None:
        self._client = client
        self.job_id = job_id
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self.job: m.JobStatus | None = None
        self.result: m.CodeExecutionResult | None = None

    async def __aiter__(self) -> AsyncIterator[m.JobOutputEvent]:
        failures = 0  # consecutive cuts without new output
        seen = {"stdout": 0, "stderr": 0}  # characters yielded per stream
        while failures < _MAX_RECONNECTS:
            # each (re)connection replays the job's output from its start: skip what
            # this stream has already yielded
            skip = dict(seen)
            try:
                events = self._client._follow(self.job_id)
                async for event in events:
                    if isinstance(event, m.JobOutputEvent):
                        # a stream name of a later MINOR version is counted like the others
                        # (OutputStream keeps values it does not know); it has no callback
                        name = event.stream.value
                        done = skip.get(name, 0)
                        if done >= len(event.data):
                            skip[name] = done - len(event.data)
                            continue
                        if done:
                            event = attrs.evolve(event, data=event.data[done:])
                            skip[name] = 0
                        seen[name] = seen.get(name, 0) + len(event.data)
                        failures = 0
                        callback = self._callbacks.get(event.stream.value)
                        if callback is not None:
                            outcome = callback(event.data)
                            if inspect.isawaitable(outcome):
                                await outcome
                        yield event
                    elif isinstance(event, m.JobResultEvent):
                        self._client._close_later(events)
                        self._finish(event.job)
                        return
            except (MCPConnectionError, MCPTimeoutError) as exc:
                if isinstance(exc, MCPTimeoutError) and exc.code is not None:
                    raise  # the job's own time limit, not a silent connection
                # reconnect: the server sends the job's current state first (a job that
                # ended meanwhile ends the new stream at once)
                failures += 1
                await asyncio.sleep(0.05 * 2 ** (failures - 1))
        status = await self._client.get_job_status(self.job_id)
        if status.status.value in ("COMPLETED", "FAILED", "CANCELED"):
            self._finish(status)
            return
        raise MCPConnectionError(
            f"lost the event stream of job {self.job_id} {_MAX_RECONNECTS} times in a row; "
            "the job goes on (follow it with wait_for_job)"
        )

    def _finish(self, job: m.JobStatus) -> None:
        self.job = job
        self.result = job_result(job, m.CodeExecutionResult)

    async def kill(self, reason: str | None = "killed by the client") -> m.JobCanceled:
        """Cancel the job; its processes are killed at once.

        Args:
            reason: recorded with the job.

        Returns:
            JobCanceled: ``job_id``, ``status``, ``canceled_at`` and ``reason``.

        Raises:
            MCPConflictError: the job had already finished.
        """
        return await self._client.cancel_job(self.job_id, reason=reason)
