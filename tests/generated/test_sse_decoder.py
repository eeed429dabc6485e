"""SSEDecoder against the event-stream interpretation rules of the HTML standard (WHATWG)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from deepexec_protocol.sse import ServerSentEvent, SSEDecoder, aiter_sse
from hypothesis import given, settings
from hypothesis import strategies as st


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def data(*chunks: bytes) -> list[str]:
    return [e.data for e in decode(*chunks)]


def test_simple_event_defaults() -> None:
    assert decode(b"data: hello\n\n") == [ServerSentEvent(event="message", data="hello", id="")]


def test_event_type_id_and_retry() -> None:
    (event,) = decode(b"event: chunk\nid: 7\nretry: 1500\ndata: x\n\n")
    assert (event.event, event.data, event.id, event.retry) == ("chunk", "x", "7", 1500)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    stream = b"event: a" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + eol
    assert [(e.event, e.data) for e in decode(stream)] == [("a", "1"), ("message", "2")]


def test_mixed_line_endings() -> None:
    assert data(b"data: a\r\ndata: b\rdata: c\n\r\n") == ["a\nb\nc"]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # a CR at the end of a chunk and the LF at the start of the next: one line end, not two
    assert data(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ["a\nb"]
    # a CR alone at the end of a chunk is a line end by itself
    assert data(b"data: a\r", b"\r") == ["a"]


def test_cr_then_cr_is_an_empty_line() -> None:
    assert data(b"data: a\r\rdata: b\r\r") == ["a", "b"]


def test_bom_stripped_once_at_start_only() -> None:
    bom = "\ufeff".encode()
    assert data(bom + b"data: x\n\n") == ["x"]
    # a BOM split across chunks
    assert data(bom[:2], bom[2:] + b"data: x\n\n") == ["x"]
    # only one: a second BOM starts a field name that is not "data"
    assert data(bom + bom + b"data: x\n\ndata: y\n\n") == ["y"]
    # a BOM later in the stream is content
    assert data(b"data: \xef\xbb\xbfx\n\n") == ["\ufeffx"]


def test_comments_are_ignored() -> None:
    assert data(b": keep-alive\n:\ndata: x\n: in the middle\n\n") == ["x"]
    assert decode(b": only a comment\n\n") == []


def test_field_without_colon_has_empty_value() -> None:
    assert data(b"data\n\n") == [""]
    assert data(b"data\ndata\n\n") == ["\n"]
    (event,) = decode(b"event\ndata: x\n\n")
    assert event.event == "message"  # empty event type means "message"


def test_only_one_leading_space_is_stripped() -> None:
    assert data(b"data:  two spaces\n\n") == [" two spaces"]
    assert data(b"data:no space\n\n") == ["no space"]
    assert data(b"data:\tx\n\n") == ["\tx"]
    assert data(b"data: x \n\n") == ["x "]


def test_value_may_contain_colons() -> None:
    assert data(b'data: {"a": "b:c"}\n\n') == ['{"a": "b:c"}']


def test_unknown_fields_are_ignored() -> None:
    assert data(b"foo: bar\ndata: x\nDATA: y\nData: z\n\n") == ["x"]


def test_id_with_nul_is_ignored_and_last_id_persists() -> None:
    events = decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1"), ("c", "1"), ("d", "")]


@pytest.mark.parametrize("value", [b"abc", b"1.5", b"-1", b" 10", b"10a", b"\xd9\xa3"])
def test_retry_must_be_ascii_digits(value: bytes) -> None:
    (event,) = decode(b"retry: " + value + b"\ndata: x\n\n")
    assert event.retry is None


def test_retry_kept_until_changed() -> None:
    events = decode(b"retry: 10\ndata: a\n\ndata: b\n\nretry: x\ndata: c\n\n")
    assert [e.retry for e in events] == [10, 10, 10]


def test_empty_data_buffer_is_not_dispatched() -> None:
    assert decode(b"event: ping\n\n") == []
    assert decode(b"id: 3\n\n\n\n") == []
    # the event type does not leak into the next event
    (event,) = decode(b"event: ping\n\ndata: x\n\n")
    assert (event.event, event.id) == ("message", "")


def test_id_from_undispatched_block_is_kept() -> None:
    (event,) = decode(b"id: 3\n\ndata: x\n\n")
    assert event.id == "3"


def test_data_lines_join_with_lf_and_trailing_lf_removed() -> None:
    assert data(b"data: a\ndata: b\ndata: c\n\n") == ["a\nb\nc"]
    assert data(b"data: a\ndata:\n\n") == ["a\n"]


def test_unterminated_event_at_eof_is_discarded() -> None:
    assert data(b"data: a\n\ndata: b\n") == ["a"]
    assert data(b"data: a\n\ndata: b") == ["a"]


def test_utf8_split_anywhere() -> None:
    text = "données 日本語 🎉"
    raw = b"data: " + text.encode() + b"\n\n"
    for cut in range(len(raw)):
        assert data(raw[:cut], raw[cut:]) == [text], cut


def test_invalid_utf8_is_replaced() -> None:
    assert data(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_events_complete_only_on_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"data: y\n") == []
    assert [e.data for e in decoder.feed(b"\n")] == ["x\ny"]


# any way of cutting a stream into chunks gives the same events
STREAM = (
    "\ufeff: hello\r\nevent: a\rdata: é1\r\ndata:  x\n\nid: 5\nretry: 30\r\r"
    "data\n\n: c\ndata: 日本\r\n\r\nevent: z\ndata: 🎉\r\r"
).encode()


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_chunking_does_not_change_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert decode(*chunks) == decode(STREAM)
    assert [(e.event, e.data, e.id, e.retry) for e in decode(STREAM)] == [
        ("a", "é1\n x", "", None),
        ("message", "", "5", 30),
        ("message", "日本", "5", 30),
        ("z", "🎉", "5", 30),
    ]


async def test_aiter_sse() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"data: 1\n", b"\ndata", b": 2\n\n"):
            yield part

    assert [e.data async for e in aiter_sse(chunks())] == ["1", "2"]
