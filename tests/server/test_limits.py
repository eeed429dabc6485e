"""Token fingerprints, the token-bucket rate limiter and the concurrency counter."""

from __future__ import annotations

import re

import pytest

from deepexec_server.limits import (
    ConcurrencyLimiter,
    ConcurrencyLimitExceeded,
    RateLimiter,
    token_fingerprint,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fingerprint_is_stable_short_hex_and_hides_the_token() -> None:
    token = "dx_live_0123456789abcdef"
    fp = token_fingerprint(token)
    assert re.fullmatch(r"[0-9a-f]{32}", fp)
    assert fp == token_fingerprint(token)
    assert fp != token_fingerprint(token + "x")
    assert token not in fp
    with pytest.raises(ValueError):
        token_fingerprint("")


def test_rate_limiter_admits_a_burst_then_says_when_to_retry() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    decisions = [limiter.acquire("a") for _ in range(3)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [2, 1, 0]
    refused = limiter.acquire("a")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)
    # Another token has its own bucket.
    assert limiter.acquire("b").allowed
    # Refills at `rate` per second: after 0.25 s still refused, with the rest to wait.
    clock.now += 0.25
    again = limiter.acquire("a")
    assert not again.allowed and again.retry_after == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.check("a").allowed
    # Never refills past the burst.
    clock.now += 100
    assert [limiter.acquire("a").allowed for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_sustained_rate_matches_configuration() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=1, clock=clock)
    admitted = 0
    for _ in range(1000):  # 10 s of attempts every 10 ms
        admitted += limiter.acquire(None).allowed
        clock.now += 0.01
    assert 99 <= admitted <= 101


def test_rate_limiter_memory_is_bounded_by_pruning_full_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock, max_keys=10)
    for i in range(10):
        limiter.acquire(f"k{i}")
    clock.now += 5  # every bucket is full again
    limiter.acquire("new")
    assert len(limiter) == 1


def test_rate_limiter_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)


def test_concurrency_limiter_counts_per_key() -> None:
    limiter = ConcurrencyLimiter(2)
    assert limiter.try_acquire("a") and limiter.try_acquire("a")
    assert not limiter.try_acquire("a")
    assert limiter.try_acquire("b")
    assert limiter.active("a") == 2
    limiter.release("a")
    assert limiter.active("a") == 1
    with limiter.slot("a"):
        assert limiter.active("a") == 2
        with pytest.raises(ConcurrencyLimitExceeded), limiter.slot("a"):
            pass
    assert limiter.active("a") == 1
    limiter.release("a")
    with pytest.raises(RuntimeError):
        limiter.release("a")
