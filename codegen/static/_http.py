"""Transport shared by every generated operation module: send, decode, map errors.

Nothing here knows a particular operation; the operation modules pass their paths, models and
stream event types. Every failure surfaces as an ``MCPError`` subclass: a malformed,
truncated or wrong-version response never leaks a KeyError, TypeError or JSONDecodeError.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args
from urllib.parse import quote

import aiohttp
import attrs
import orjson

from . import errors
from .constants import PROTOCOL_VERSION
from .converter import StructureError, structure, unstructure
from .models import ErrorObject
from .sse import SSEDecoder

T = TypeVar("T")

JSON_TYPES = ("application/json",)
SSE_TYPE = "text/event-stream"

_log = logging.getLogger("deepexec")


@dataclass(frozen=True, slots=True)
class Response(Generic[T]):
    """A parsed response with its HTTP details (what ``asyncio_detailed`` returns)."""

    status_code: int
    headers: Mapping[str, str]
    request_id: str | None
    parsed: T


def _request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("X-Request-ID")


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait as requested by a response's headers, or ``None``.

    Reads ``retry-after-ms`` (milliseconds) first, then ``Retry-After`` as a number of
    seconds or as an HTTP-date (a date in the past gives 0; proxies send dates). Header
    names are matched case-insensitively. ``now`` (a Unix timestamp) defaults to the
    current time. Negative, non-finite or malformed values give ``None``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates; HTTP-dates are always GMT
            return None
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    if math.isfinite(seconds) and seconds >= 0:
        return seconds
    return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers)  # error answers only: not on the hot path


def _raise_for_error(
    error: Any, http_status: int, request_id: str | None, headers: Mapping[str, str]
) -> None:
    cls = errors.exception_for_code(str(error.code.value))
    details = dict(error.details or {})
    raise cls(
        error.message,
        code=str(error.code.value),
        http_status=http_status,
        request_id=request_id,
        details=details,
        retry_after=_retry_after(headers),
    )


def _raise_for_unknown_error(
    data: dict[str, Any], http_status: int, request_id: str | None, headers: Mapping[str, str]
) -> None:
    """Raise the error of an error envelope that does not fit the model, if it has one.

    An error code this SDK predates (MINOR bumps add codes) structures as it is (ErrorCode is
    response-only); an envelope broken elsewhere still carries a code and message that say
    what happened, and exception_for_code maps an unknown code to MCPError.
    """
    error = data.get("error")
    if data.get("status") != "error" or not isinstance(error, dict):
        return
    code, message, details = error.get("code"), error.get("message"), error.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        return
    raise errors.exception_for_code(code)(
        message,
        code=code,
        http_status=http_status,
        request_id=request_id,
        details=dict(details) if isinstance(details, dict) else {},
        retry_after=_retry_after(headers),
    )


def _excerpt(body: bytes, limit: int = 200) -> str:
    """``": <the start of body, on one line>"`` (what a proxy or the HTTP layer said: such an
    answer is no protocol message), or nothing for an empty body."""
    text = " ".join(body[: limit * 4].decode("utf-8", "replace").split())
    if not text:
        return ""
    return ": " + (text if len(text) <= limit else text[: limit - 3] + "...")


def _unexpected(
    message: str, status: int, request_id: str | None, headers: Mapping[str, str]
) -> errors.MCPError:
    """An answer that is not a protocol message: classify by HTTP status."""
    if status >= 500:
        return errors.MCPServerError(
            message, http_status=status, request_id=request_id, retry_after=_retry_after(headers)
        )
    if status == 429:
        return errors.MCPRateLimitError(
            message, http_status=status, request_id=request_id, retry_after=_retry_after(headers)
        )
    if status == 408:
        return errors.MCPTimeoutError(message, http_status=status, request_id=request_id)
    return errors.MCPProtocolError(message, http_status=status, request_id=request_id)


def check_version(version: object, status: int, request_id: str | None) -> None:
    """Reject a message of another protocol YEAR (MINOR bumps are compatible)."""
    if not isinstance(version, str) or version.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
        raise errors.MCPProtocolVersionError(
            f"server speaks protocol_version {version!r}; this SDK speaks {PROTOCOL_VERSION}",
            code="protocol_version_mismatch",
            http_status=status,
            request_id=request_id,
        )


#: protocol versions found compatible (this SDK's, and the MINOR versions servers answered
#: with), so that check_version parses a version once
_COMPATIBLE: set[str] = {PROTOCOL_VERSION}
_COMPATIBLE_MAX = 16


def decode_envelope(
    body: bytes, status: int, headers: Mapping[str, str], content_type: str, model: type[T]
) -> T:
    """Decode a JSON response envelope into ``model``; raise the error it carries, if any."""
    return _decode(body, status, headers, content_type, model, _request_id(headers))


def _decode(
    body: bytes,
    status: int,
    headers: Mapping[str, str],
    content_type: str,
    model: type[T],
    request_id: str | None,
) -> T:
    if content_type not in JSON_TYPES:
        raise _unexpected(
            f"unexpected content type {content_type or 'none'!r} (HTTP {status})" + _excerpt(body),
            status,
            request_id,
            headers,
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _unexpected(
            f"malformed JSON response (HTTP {status}): {exc}", status, request_id, headers
        ) from None
    if not isinstance(data, dict):
        raise errors.MCPProtocolError(
            f"response is a JSON {type(data).__name__}, not an object",
            http_status=status,
            request_id=request_id,
        )
    version = data.get("protocol_version")
    # a version seen compatible before needs no parsing (hot path)
    if version.__class__ is not str or version not in _COMPATIBLE:
        check_version(version, status, request_id)
        if isinstance(version, str) and len(_COMPATIBLE) < _COMPATIBLE_MAX:
            _COMPATIBLE.add(version)
    try:
        envelope: Any = structure(data, model)
    except StructureError as exc:
        _raise_for_unknown_error(data, status, request_id, headers)
        raise errors.MCPProtocolError(
            f"malformed {model.__name__}: {exc}",
            http_status=status,
            request_id=request_id,
            details={"path": exc.path},
        ) from None
    if envelope.status == "error":  # a StrEnum member: compared as its value
        if envelope.error is None:
            raise errors.MCPProtocolError(
                "error response without an error object", http_status=status, request_id=request_id
            )
        _raise_for_error(envelope.error, status, request_id, headers)
    elif envelope.status != "success":
        # ResponseStatus keeps a value it does not know, but only these two say how to read
        # the envelope: another one is no answer this SDK can use
        raise errors.MCPProtocolError(
            f"unknown response status {str(envelope.status)!r:.40}",
            http_status=status,
            request_id=request_id,
            details={"path": "status"},
        )
    elif envelope.output is None:
        raise errors.MCPProtocolError(
            "success response without an output", http_status=status, request_id=request_id
        )
    return envelope  # type: ignore[no-any-return]


def raise_error_answer(
    body: bytes, status: int, headers: Mapping[str, str], content_type: str
) -> None:
    """Raise the error an envelope carries; return when the body is no error envelope."""
    if content_type not in JSON_TYPES:
        return
    request_id = _request_id(headers)
    try:
        data = orjson.loads(body)
        check_version(data.get("protocol_version"), status, request_id)
        if data.get("status") != "error":
            return
        error = structure(data["error"], ErrorObject)
    except StructureError:
        _raise_for_unknown_error(data, status, request_id, headers)
        return
    except (orjson.JSONDecodeError, AttributeError, KeyError):
        return
    _raise_for_error(error, status, request_id, headers)


def _url(base_url: str, path: str, path_params: Mapping[str, str] | None) -> str:
    if path_params:
        for key, value in path_params.items():
            path = path.replace("{" + key + "}", quote(value, safe=""))
    return base_url.rstrip("/") + path


def _body(body: Any) -> bytes | None:
    return None if body is None else _encode(unstructure(body))


def _encode(data: Any) -> bytes:
    """``data`` as JSON; a string that is not valid Unicode (a lone surrogate, which JSON
    text can not carry as UTF-8) raises MCPValidationError naming its field."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        path = _unencodable_path(data, "")
        where = f"{path}: " if path else ""
        raise errors.MCPValidationError(
            f"invalid request: {where}not valid Unicode ({exc})",
            code="validation_error",
            details={"path": path} if path else {},
        ) from None


def _unencodable_path(value: Any, path: str) -> str | None:
    """The path (``input.code``, ``input.tags[1]``) of the first string in ``value`` that is
    not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _unencodable_path(key, path) is not None:
                return f"{path}.{key}" if path else key
            found = _unencodable_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _unencodable_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


_ACCEPT_JSON = {"Accept": "application/json"}
_ACCEPT_JSON_WITH_BODY = {"Accept": "application/json", "Content-Type": "application/json"}
_ACCEPT_SSE = {"Accept": SSE_TYPE}
_ACCEPT_SSE_WITH_BODY = {"Accept": SSE_TYPE, "Content-Type": "application/json"}


def _headers(
    headers: Mapping[str, str] | None, has_body: bool, accept_sse: bool = False
) -> dict[str, str]:
    """The request's own headers (the session's default headers are added by aiohttp)."""
    if accept_sse:
        base = _ACCEPT_SSE_WITH_BODY if has_body else _ACCEPT_SSE
    else:
        base = _ACCEPT_JSON_WITH_BODY if has_body else _ACCEPT_JSON
    return {**base, **headers} if headers else base.copy()


def _query(query: Any) -> dict[str, str] | None:
    if query is None:
        return None
    raw = unstructure(query)
    return {k: str(v) for k, v in raw.items() if v is not None}


#: ClientTimeout objects by their total (immutable, so shared by every request)
_TIMEOUTS: dict[float, aiohttp.ClientTimeout] = {}
_TIMEOUTS_MAX = 64


def _client_timeout(timeout: float | None) -> aiohttp.ClientTimeout | None:
    """``ClientTimeout(total=timeout)``, made once per distinct value; None stays None (no
    limit at all, as aiohttp takes ``timeout=None``)."""
    if timeout is None:
        return None
    found = _TIMEOUTS.get(timeout)
    if found is None:
        if len(_TIMEOUTS) >= _TIMEOUTS_MAX:
            _TIMEOUTS.clear()
        found = _TIMEOUTS[timeout] = aiohttp.ClientTimeout(total=timeout)
    return found


#: Content-Type values whose media type is exactly application/json, as aiohttp's
#: ``content_type`` would parse them; any other value goes through that parser
_PLAIN_JSON_TYPES = frozenset(
    ("application/json", "application/json; charset=utf-8", "application/json;charset=utf-8")
)


async def exchange(
    session: aiohttp.ClientSession,
    base_url: str,
    method: str,
    path: str,
    model: type[T],
    body: Any,
    query: Any,
    path_params: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    timeout: float | None,
) -> tuple[T, int, Mapping[str, str], str | None]:
    """Send one request and decode its response envelope: (envelope, HTTP status, response
    headers, request id). What every operation's ``asyncio`` awaits: positional arguments and
    no result object, since it runs on every call."""
    # _url, _headers, _client_timeout and _content_type inlined: this runs on every call
    if body is None:
        payload = None
        base_headers = _ACCEPT_JSON
    else:
        data = unstructure(body)
        try:
            payload = orjson.dumps(data)
        except orjson.JSONEncodeError:
            payload = _encode(data)  # raises MCPValidationError naming the field
        base_headers = _ACCEPT_JSON_WITH_BODY
    if timeout is None:
        client_timeout = None
    else:  # a ClientTimeout is always true
        client_timeout = _TIMEOUTS.get(timeout) or _client_timeout(timeout)
    try:
        # awaited, not entered with ``async with``: one coroutine less per call. read()
        # returns once the body is in and the connection released; release() is what the
        # context manager's exit would do (and cancels the body's writer after a failure).
        resp = await session.request(
            method,
            _url(base_url, path, path_params) if path_params else base_url.rstrip("/") + path,
            data=payload,
            params=None if query is None else _query(query),
            headers={**base_headers, **headers} if headers else base_headers.copy(),
            timeout=client_timeout,
        )
        try:
            raw = await resp.read()
        finally:
            resp.release()
        status, resp_headers = resp.status, resp.headers
        ctype = resp_headers.get("Content-Type")
        ctype = "application/json" if ctype in _PLAIN_JSON_TYPES else resp.content_type
    except TimeoutError as exc:
        raise errors.MCPTimeoutError(f"no response within {timeout} s", timeout=timeout) from exc
    except aiohttp.ClientError as exc:
        raise errors.MCPConnectionError(f"{type(exc).__name__}: {exc}") from exc
    request_id = resp_headers.get("X-Request-ID")
    envelope = _decode(raw, status, resp_headers, ctype, model, request_id)
    return envelope, status, resp_headers, request_id


async def send(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    method: str,
    path: str,
    model: type[T],
    body: Any = None,
    query: Any = None,
    path_params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Response[T]:
    """Send one request and decode its response envelope."""
    parsed, status, resp_headers, request_id = await exchange(
        session, base_url, method, path, model, body, query, path_params, headers, timeout
    )
    return Response(status, resp_headers, request_id, parsed)


_DRAIN_SECONDS = 0.05


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a finished stream to its end, so its connection goes back to the pool.

    The server ends the response right after the terminal event; a server that does not
    within a moment gets the connection closed instead (the cost: one new connection).
    """
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while await resp.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass


def event_types(event_type: Any) -> frozenset[str]:
    """The ``type`` of every event model of ``event_type`` (a union of models, or one)."""
    members = get_args(event_type) or (event_type,)
    return frozenset(str(attrs.fields_dict(cls)["type"].default) for cls in members)


async def stream(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    method: str,
    path: str,
    event_type: Any,
    terminal: frozenset[str],
    known: frozenset[str] | None = None,
    body: Any = None,
    path_params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> AsyncIterator[Any]:
    """Open an SSE stream and yield typed events until a terminal one.

    A stream_error event raises its typed exception; a stream that ends before a terminal
    event raises MCPConnectionError. ``timeout`` bounds the wait for the response head and
    for each chunk, not the whole stream.

    An event whose ``type`` is a string naming none of ``known`` (the event types of
    ``event_type``, by default) is skipped, as SSE clients skip event types they do not
    know: a server of a later MINOR version may add some. An event of a known type that does
    not fit its model, data that is not JSON, or a missing or non-string ``type`` raises
    MCPProtocolError.
    """
    if known is None:
        known = event_types(event_type)
    payload = _body(body)
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    try:
        async with session.request(
            method,
            _url(base_url, path, path_params),
            data=payload,
            headers=_headers(headers, payload is not None, accept_sse=True),
            timeout=client_timeout,
        ) as resp:
            request_id = _request_id(resp.headers)
            if resp.content_type != SSE_TYPE:
                raw = await resp.read()
                # an error before the stream started comes as a JSON envelope
                raise_error_answer(raw, resp.status, resp.headers, resp.content_type)
                raise _unexpected(
                    f"expected {SSE_TYPE}, got {resp.content_type!r}" + _excerpt(raw),
                    resp.status,
                    request_id,
                    resp.headers,
                )
            decoder = SSEDecoder()
            async for chunk in resp.content.iter_any():
                for sse in decoder.feed(chunk):
                    try:
                        data = orjson.loads(sse.data)
                        tag = data.get("type") if data.__class__ is dict else None
                        if tag.__class__ is str and tag not in known:
                            _log.debug("skipped a stream event of unknown type %.64r", tag)
                            continue
                        event = structure(data, event_type)
                    except (orjson.JSONDecodeError, StructureError) as exc:
                        raise errors.MCPProtocolError(
                            f"malformed stream event {sse.event!r}: {exc}",
                            http_status=resp.status,
                            request_id=request_id,
                        ) from None
                    kind = event.type
                    if kind == "stream_error":
                        _raise_for_error(event.error, resp.status, request_id, resp.headers)
                    if kind in terminal:
                        try:
                            yield event
                        finally:
                            # also when the consumer stops at the final event (aclose):
                            # read the stream's end, so the connection is reused
                            await _drain(resp)
                        return
                    yield event
    except TimeoutError as exc:
        raise errors.MCPTimeoutError(f"stream idle for {timeout} s", timeout=timeout) from exc
    except aiohttp.ClientError as exc:
        raise errors.MCPConnectionError(f"stream broken: {type(exc).__name__}: {exc}") from exc
    raise errors.MCPConnectionError("stream ended before its final event")
