"""A WHATWG-conformant server-sent events decoder.

Implements the event-stream interpretation of the HTML standard: lines end in CR LF, LF or
CR (even when a CR LF pair is split across chunks); a leading BOM is dropped; lines starting
with ':' are comments; a field without ':' has an empty value; one space after the colon is
removed; data lines join with LF; an ``id`` containing NUL is ignored; ``retry`` is taken only
when all digits; an event is dispatched on a blank line, and not at all when its data is
empty; an unterminated event at end of stream is discarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event."""

    event: str
    data: str
    id: str
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder: feed it bytes as they arrive, get events as they complete."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending_cr = False
        self._started = False
        self._decoder_tail = b""
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None

    def _decode(self, chunk: bytes) -> str:
        raw = self._decoder_tail + chunk
        # keep an incomplete UTF-8 sequence for the next chunk
        cut = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            byte = raw[-back]
            if byte & 0xC0 == 0x80:
                continue
            if byte >= 0xC0:
                need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                if need > back:
                    cut = len(raw) - back
            break
        self._decoder_tail = raw[cut:]
        return raw[:cut].decode("utf-8", errors="replace")

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk; return the events it completed."""
        text = self._decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._pending_cr and text:
            if text.startswith("\n"):
                text = text[1:]
            self._pending_cr = False
        self._buffer += text
        events: list[ServerSentEvent] = []
        while True:
            idx_cr = self._buffer.find("\r")
            idx_lf = self._buffer.find("\n")
            if idx_cr == -1 and idx_lf == -1:
                break
            if idx_cr == -1 or (idx_lf != -1 and idx_lf < idx_cr):
                line, self._buffer = self._buffer[:idx_lf], self._buffer[idx_lf + 1 :]
            else:
                line = self._buffer[:idx_cr]
                rest = self._buffer[idx_cr + 1 :]
                if rest.startswith("\n"):
                    rest = rest[1:]
                elif rest == "":
                    self._pending_cr = True
                self._buffer = rest
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._last_id,
            retry=self._retry,
        )
        self._event = ""
        self._data = []
        return event


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Decode an async stream of byte chunks into events."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
