"""The progress-line convention for code execution jobs.

A program running as a ``code_execution`` job reports progress by printing, on its
**stdout**, a line that consists of exactly::

    ##deepexec-progress <N>

where ``<N>`` is an integer percentage (1 to 3 digits; values above 100 count as
100). For example, in Python: ``print(f"##deepexec-progress {pct}", flush=True)``.

Such lines are a control channel, not output: they are **removed** from the job's
output events and from the captured stdout of the result, and each one sets the job's
progress. A line that merely contains the marker (leading spaces, other text after
the number) is ordinary output. A marker that ends the stream without a newline still
counts. stderr is never parsed.

When a program prints no progress lines, the job manager estimates progress from the
elapsed time against the job's timeout instead.

:class:`ProgressLineFilter` applies the convention to output arriving in arbitrary
chunks (a marker may be split across chunks); it holds back only a partial line that
could still turn out to be a marker, so ordinary output is never delayed waiting for
a newline. :func:`strip_progress_lines` applies it to a complete captured text.
"""

from __future__ import annotations

import re

__all__ = ["PROGRESS_MARKER", "PROGRESS_LINE_RE", "ProgressLineFilter", "strip_progress_lines"]

PROGRESS_MARKER = "##deepexec-progress "
#: A whole progress line (without its line terminator).
PROGRESS_LINE_RE = re.compile(r"##deepexec-progress (\d{1,3})\r?")
_PARTIAL_NUMBER_RE = re.compile(r"\d{0,3}\r?")


def _parse(line: str) -> int | None:
    match = PROGRESS_LINE_RE.fullmatch(line)
    if match is None:
        return None
    return min(100, int(match.group(1)))


def _could_become_marker(partial: str) -> bool:
    """Whether a line start without its newline yet may still turn into a progress line."""
    if len(partial) <= len(PROGRESS_MARKER):
        return PROGRESS_MARKER.startswith(partial)
    if not partial.startswith(PROGRESS_MARKER):
        return False
    return _PARTIAL_NUMBER_RE.fullmatch(partial[len(PROGRESS_MARKER) :]) is not None


class ProgressLineFilter:
    """Incrementally separates progress lines from ordinary output.

    Feed chunks in order with :meth:`feed`; call :meth:`flush` at end of stream. Each
    call returns ``(text_to_emit, progress_values)``.
    """

    def __init__(self) -> None:
        self._held = ""
        self._at_line_start = True

    def feed(self, chunk: str) -> tuple[str, list[int]]:
        """Process one chunk of stdout."""
        out: list[str] = []
        values: list[int] = []
        buf = self._held + chunk
        self._held = ""
        while buf:
            newline = buf.find("\n")
            if not self._at_line_start:
                if newline == -1:
                    out.append(buf)
                    break
                out.append(buf[: newline + 1])
                buf = buf[newline + 1 :]
                self._at_line_start = True
                continue
            if newline == -1:
                if _could_become_marker(buf):
                    self._held = buf
                else:
                    out.append(buf)
                    self._at_line_start = False
                break
            line = buf[:newline]
            value = _parse(line)
            if value is None:
                out.append(buf[: newline + 1])
            else:
                values.append(value)
            buf = buf[newline + 1 :]
        return "".join(out), values

    def flush(self) -> tuple[str, list[int]]:
        """End of stream: release a held partial line (or count it, if it is a marker)."""
        held, self._held = self._held, ""
        self._at_line_start = True
        if not held:
            return "", []
        value = _parse(held)
        if value is not None:
            return "", [value]
        return held, []


def strip_progress_lines(text: str) -> str:
    """Remove progress lines from a complete captured output (e.g. a result's stdout)."""
    line_filter = ProgressLineFilter()
    body, _ = line_filter.feed(text)
    tail, _ = line_filter.flush()
    return body + tail
