"""Per-token request limits: token fingerprints, a token-bucket rate limiter and a
concurrency counter.

Access tokens are never stored anywhere by the server: everything that must remember
"who" (the job store, sessions, limiters) keys on :func:`token_fingerprint`, a
truncated SHA-256 of the token. Requests made without a token (a server started
without tokens) share the anonymous key ``None``.

* :class:`RateLimiter` — one token bucket per key: ``rate`` requests per second
  sustained, ``burst`` requests at once. :meth:`RateLimiter.acquire` never waits: it
  either admits the request or says how many seconds to wait (``retry_after``), which
  the HTTP layer turns into a ``429 rate_limit_exceeded`` with a ``Retry-After``
  header (rounded up to whole seconds).
* :class:`ConcurrencyLimiter` — a counter of in-flight work per key (direct code
  executions, direct generations, streams). The job manager bounds *unfinished jobs*
  per owner itself, durably, in the job store (see ``JobStore.insert``), so the
  limit holds across a restart.

Both are plain in-memory structures meant to be used from one event loop thread.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from attrs import define

__all__ = [
    "FINGERPRINT_HEX_CHARS",
    "ConcurrencyLimitExceeded",
    "ConcurrencyLimiter",
    "RateDecision",
    "RateLimiter",
    "token_fingerprint",
]

#: Length of a token fingerprint: 32 hex characters = the first 128 bits of SHA-256.
FINGERPRINT_HEX_CHARS = 32
# Tolerance for float rounding in refills (10 x 0.1 tokens must make one token).
_EPSILON = 1e-9


def token_fingerprint(token: str) -> str:
    """Return the stable, non-reversible fingerprint of an access token.

    The fingerprint (the first 32 hex characters of the token's SHA-256) is what the
    server stores as a job's or a session's owner; the token itself is never kept.

    >>> token_fingerprint("secret-token")
    '930bbdc51b6aed5c2a5678fd6e28dee7'
    """
    if not token:
        raise ValueError("cannot fingerprint an empty token")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_CHARS]


@define(frozen=True, kw_only=True)
class RateDecision:
    """The outcome of one :meth:`RateLimiter.acquire` call.

    ``retry_after`` is ``0.0`` when ``allowed``; otherwise the number of seconds after
    which the same request would be admitted. ``remaining`` is the number of whole
    requests still admissible right now (after this one, when allowed); ``limit`` is
    the burst size.
    """

    allowed: bool
    retry_after: float
    remaining: int
    limit: int


@define(kw_only=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token-bucket rate limiter keyed by token fingerprint.

    Each key owns a bucket holding up to ``burst`` tokens, refilled at ``rate`` tokens
    per second; each request takes ``cost`` tokens (1 by default). A key seen for the
    first time starts with a full bucket. Memory stays bounded: when more than
    ``max_keys`` buckets exist, buckets that have refilled completely (and so are
    indistinguishable from new ones) are dropped.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._rate = float(rate)
        self._burst = int(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str | None, _Bucket] = {}

    @property
    def rate(self) -> float:
        """Sustained requests per second per key."""
        return self._rate

    @property
    def burst(self) -> int:
        """Largest number of requests admitted at once per key."""
        return self._burst

    def acquire(self, key: str | None, cost: float = 1.0) -> RateDecision:
        """Try to take ``cost`` tokens from ``key``'s bucket, without waiting."""
        if cost <= 0:
            raise ValueError("cost must be positive")
        if cost > self._burst:
            raise ValueError(f"cost {cost} exceeds the burst size {self._burst}")
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now)
            bucket = _Bucket(tokens=float(self._burst), updated=now)
            self._buckets[key] = bucket
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self._burst), bucket.tokens + elapsed * self._rate)
            bucket.updated = now
        if bucket.tokens + _EPSILON >= cost:
            bucket.tokens = max(0.0, bucket.tokens - cost)
            return RateDecision(
                allowed=True, retry_after=0.0, remaining=int(bucket.tokens), limit=self._burst
            )
        retry_after = (cost - bucket.tokens) / self._rate
        return RateDecision(allowed=False, retry_after=retry_after, remaining=0, limit=self._burst)

    def check(self, key: str | None, cost: float = 1.0) -> RateDecision:
        """Same as :meth:`acquire` (admits and counts the request when allowed)."""
        return self.acquire(key, cost)

    def _prune(self, now: float) -> None:
        """Drop buckets that are full again (they carry no information)."""
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + max(0.0, now - bucket.updated) * self._rate >= self._burst
        ]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        """Number of buckets currently tracked."""
        return len(self._buckets)


class ConcurrencyLimitExceeded(Exception):
    """Raised by :meth:`ConcurrencyLimiter.slot` when a key already uses all its slots."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many concurrent requests for this token (limit {limit})")
        self.limit = limit


class ConcurrencyLimiter:
    """Counts in-flight work per key and refuses work beyond ``limit`` per key."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        self._limit = limit
        self._active: dict[str | None, int] = {}

    @property
    def limit(self) -> int:
        """Maximum concurrent slots per key."""
        return self._limit

    def try_acquire(self, key: str | None) -> bool:
        """Take a slot for ``key`` if one is free; return whether it was taken."""
        current = self._active.get(key, 0)
        if current >= self._limit:
            return False
        self._active[key] = current + 1
        return True

    def release(self, key: str | None) -> None:
        """Give back a slot taken by :meth:`try_acquire`."""
        current = self._active.get(key, 0)
        if current <= 0:
            raise RuntimeError("release() without a matching acquire")
        if current == 1:
            del self._active[key]
        else:
            self._active[key] = current - 1

    def active(self, key: str | None) -> int:
        """Number of slots ``key`` holds now."""
        return self._active.get(key, 0)

    @contextmanager
    def slot(self, key: str | None) -> Iterator[None]:
        """Hold a slot for the duration of a ``with`` block.

        Raises :class:`ConcurrencyLimitExceeded` when no slot is free.
        """
        if not self.try_acquire(key):
            raise ConcurrencyLimitExceeded(self._limit)
        try:
            yield
        finally:
            self.release(key)
