"""Retry policy for HTTP calls, built on tenacity.

* Exponential backoff: before retry ``n`` (0-based) wait
  ``min(retry_delay * 2**n, max_delay)`` times a jitter factor in ``(0.75, 1.0]``
  (the scheme openai-python uses): retries spread out, yet never wait longer than
  the nominal delay.
* ``Retry-After``: when the failed attempt's exception has a ``retry_after``
  attribute (seconds, a float; see :func:`parse_retry_after` to compute it from
  response headers), that delay is used instead, capped at ``max_retry_after``.
* Only exceptions for which the caller's ``is_retryable`` predicate returns true are
  retried; anything else (and any ``BaseException`` that is not an ``Exception``, such
  as cancellation) propagates at once. When retries are exhausted the last exception
  propagates unchanged (never a tenacity ``RetryError``).
* Every retry is logged at INFO on the ``"deepexec"`` logger.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import attrs
from deepexec_protocol._http import parse_retry_after
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ._logging import logger

if TYPE_CHECKING:
    from ._config import ClientConfig

__all__ = [
    "MAX_RETRY_AFTER",
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "call_with_retries",
    "is_retryable_status",
    "new_idempotency_key",
    "parse_retry_after",
]

T = TypeVar("T")

MAX_RETRY_AFTER: Final = 60.0
"""Default cap, in seconds, on a server-requested ``Retry-After`` delay."""

RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})
"""HTTP statuses worth retrying besides every 5xx: timeout, conflict, rate limit."""

_MAX_EXPONENT: Final = 62  # 2**62 * any sane delay is far beyond max_delay


def is_retryable_status(status: int) -> bool:
    """True for HTTP 408, 409, 429 and every 5xx status."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


_UUID_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


#: keys are made this many at a time: one read of the OS's random source per batch
_KEY_BATCH: Final = 64
_keys: list[str] = []
# a forked child must not send the keys its parent may send too
os.register_at_fork(after_in_child=_keys.clear)


def _refill_keys() -> None:
    h = os.urandom(16 * _KEY_BATCH).hex()
    variant = _UUID_VARIANT
    _keys.extend(
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{variant[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * _KEY_BATCH, 32)
    )


def new_idempotency_key() -> str:
    """A fresh random ``Idempotency-Key`` value: a UUID4 string (122 random bits, version 4,
    RFC 4122 variant). Made in batches (one on every POST): taking one costs a list pop.
    Never the same in two processes: a forked child drops the batch it inherited."""
    try:
        return _keys.pop()
    except IndexError:
        _refill_keys()
        return _keys.pop()


def _check_non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _check_retries(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be a whole number >= 0, got {value!r}")


@attrs.define(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait in between.

    ``max_retries`` counts retries after the first attempt (0 = a single attempt).
    ``retry_delay`` is the base backoff delay and ``max_delay`` its cap, in seconds;
    ``max_retry_after`` caps a server-requested ``Retry-After``. ``jitter`` returns a
    float in ``[0, 1)`` (default :func:`random.random`); tests may pin it.
    """

    max_retries: int = attrs.field(validator=_check_retries)
    retry_delay: float = attrs.field(validator=_check_non_negative)
    max_delay: float = attrs.field(default=8.0, validator=_check_non_negative)
    max_retry_after: float = attrs.field(
        default=MAX_RETRY_AFTER, kw_only=True, validator=_check_non_negative
    )
    jitter: Callable[[], float] = attrs.field(
        default=random.random, kw_only=True, eq=False, repr=False
    )

    @classmethod
    def from_config(cls, config: ClientConfig) -> RetryPolicy:
        """The policy for a resolved client configuration."""
        return cls(config.max_retries, config.retry_delay)

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0 = the first retry), jitter included.

        ``min(retry_delay * 2**retry, max_delay) * (1 - 0.25 * jitter())``, so it lies
        in ``(0.75 * nominal, nominal]``.
        """
        nominal = min(self.retry_delay * 2.0 ** min(max(retry, 0), _MAX_EXPONENT), self.max_delay)
        return nominal * (1.0 - 0.25 * self.jitter())

    def delay_for(self, retry: int, exc: BaseException | None) -> float:
        """Delay before retry ``retry`` after ``exc``.

        The exception's ``retry_after`` (seconds) when it is a finite number >= 0,
        capped at ``max_retry_after``; otherwise :meth:`backoff`.
        """
        retry_after = getattr(exc, "retry_after", None)
        if (
            isinstance(retry_after, int | float)
            and not isinstance(retry_after, bool)
            and math.isfinite(retry_after)
            and retry_after >= 0
        ):
            return min(float(retry_after), self.max_retry_after)
        return self.backoff(retry)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def call_with_retries(
    policy: RetryPolicy,
    fn: Callable[[int], Awaitable[T]],
    *,
    is_retryable: Callable[[Exception], bool],
    on_retry: Callable[[int, float, Exception], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``fn(attempt)`` until it succeeds, retrying as ``policy`` allows.

    ``fn`` gets the attempt number: 0 for the first call, 1 for the first retry, and
    so on, up to ``policy.max_retries``. A failure is retried when ``is_retryable(exc)``
    is true and attempts remain; otherwise the exception propagates unchanged.
    Before each retry ``on_retry(attempt, delay, exc)`` is called (``attempt`` is the
    number the next call will get) and ``sleep(delay)`` awaited; tests pass a fake
    ``sleep`` so they never wait.

    Idempotency: create ONE key before calling and send the same key in every
    attempt, so the server can recognise a retry of a request it already executed
    (e.g. the connection dropped after the job was created)::

        key = new_idempotency_key()

        async def send(attempt: int) -> Job:
            return await post("/jobs", body, headers={"Idempotency-Key": key})

        job = await call_with_retries(policy, send, is_retryable=is_transient)

    Never create the key inside ``fn``: every retry would then look like a new request.
    """
    attempts = 0

    async def attempt_once() -> T:
        nonlocal attempts
        number = attempts
        attempts += 1
        return await fn(number)

    def retryable(exc: BaseException) -> bool:
        # Cancellation, KeyboardInterrupt, SystemExit: never retried.
        return isinstance(exc, Exception) and is_retryable(exc)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return policy.delay_for(state.attempt_number - 1, exc)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.upcoming_sleep
        logger.info(
            "Retrying in %.2f s (attempt %d of %d) after %s",
            delay,
            state.attempt_number + 1,
            policy.max_retries + 1,
            _describe(exc),
        )
        if on_retry is not None and isinstance(exc, Exception):
            on_retry(state.attempt_number, delay, exc)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=wait,
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    result: T = await retrying(attempt_once)
    return result
