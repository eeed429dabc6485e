"""call_with_retries / RetryPolicy: counting, backoff, Retry-After, idempotency keys."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from multidict import CIMultiDict

from deepexec_sdk._config import ClientConfig
from deepexec_sdk._retry import (
    RetryPolicy,
    call_with_retries,
    is_retryable_status,
    new_idempotency_key,
    parse_retry_after,
)


class Transient(Exception):
    """Stands for a connection error / 429 / 5xx."""

    def __init__(self, message: str = "transient", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Fatal(Exception):
    """Stands for a 400 / 401 / validation error."""


def is_transient(exc: Exception) -> bool:
    return isinstance(exc, Transient)


class FakeSleep:
    """Records requested delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(float(delay))


def failing(
    errors: list[BaseException], result: str = "ok"
) -> tuple[Callable[[int], Awaitable[str]], list[int]]:
    """fn that raises errors[0], errors[1], ... then returns result; records attempts."""
    attempts: list[int] = []

    async def fn(attempt: int) -> str:
        attempts.append(attempt)
        if len(attempts) <= len(errors):
            raise errors[len(attempts) - 1]
        return result

    return fn, attempts


def no_jitter() -> float:
    return 0.0


# --------------------------------------------------------------------------- counting


async def test_success_first_time_makes_one_call_and_no_sleep() -> None:
    sleep = FakeSleep()
    fn, attempts = failing([])
    assert (
        await call_with_retries(RetryPolicy(3, 0.5), fn, is_retryable=is_transient, sleep=sleep)
        == "ok"
    )
    assert attempts == [0]
    assert sleep.delays == []


async def test_retries_until_success_with_attempt_numbers() -> None:
    sleep = FakeSleep()
    fn, attempts = failing([Transient(), Transient()])
    result = await call_with_retries(
        RetryPolicy(3, 0.5), fn, is_retryable=is_transient, sleep=sleep
    )
    assert result == "ok"
    assert attempts == [0, 1, 2]
    assert len(sleep.delays) == 2


async def test_gives_up_after_max_retries_and_reraises_last_error() -> None:
    sleep = FakeSleep()
    errors: list[BaseException] = [Transient(f"e{i}") for i in range(10)]
    fn, attempts = failing(errors)
    with pytest.raises(Transient) as info:
        await call_with_retries(RetryPolicy(3, 0.5), fn, is_retryable=is_transient, sleep=sleep)
    assert info.value is errors[3]  # the original exception object, not a RetryError
    assert attempts == [0, 1, 2, 3]  # 1 attempt + 3 retries
    assert len(sleep.delays) == 3


async def test_max_retries_zero_means_one_attempt() -> None:
    sleep = FakeSleep()
    fn, attempts = failing([Transient(), Transient()])
    with pytest.raises(Transient):
        await call_with_retries(RetryPolicy(0, 0.5), fn, is_retryable=is_transient, sleep=sleep)
    assert attempts == [0]
    assert sleep.delays == []


async def test_non_retryable_error_is_raised_at_once() -> None:
    sleep = FakeSleep()
    fatal = Fatal("bad request")
    fn, attempts = failing([Transient(), fatal, Transient()])
    with pytest.raises(Fatal) as info:
        await call_with_retries(RetryPolicy(5, 0.5), fn, is_retryable=is_transient, sleep=sleep)
    assert info.value is fatal
    assert attempts == [0, 1]
    assert len(sleep.delays) == 1


async def test_predicate_decides_per_exception() -> None:
    seen: list[Exception] = []

    def predicate(exc: Exception) -> bool:
        seen.append(exc)
        return "again" in str(exc)

    fn, attempts = failing([Fatal("again"), Fatal("stop")])
    with pytest.raises(Fatal, match="stop"):
        await call_with_retries(RetryPolicy(5, 0.5), fn, is_retryable=predicate, sleep=FakeSleep())
    assert [str(e) for e in seen] == ["again", "stop"]
    assert attempts == [0, 1]


@pytest.mark.parametrize("exc_type", [asyncio.CancelledError, KeyboardInterrupt])
async def test_base_exceptions_are_never_retried(exc_type: type[BaseException]) -> None:
    fn, attempts = failing([exc_type()])
    with pytest.raises(exc_type):
        await call_with_retries(
            RetryPolicy(5, 0.5), fn, is_retryable=lambda e: True, sleep=FakeSleep()
        )
    assert attempts == [0]


async def test_default_sleep_really_waits() -> None:
    fn, attempts = failing([Transient(), Transient()])
    start = time.monotonic()
    assert await call_with_retries(RetryPolicy(2, 0.02), fn, is_retryable=is_transient) == "ok"
    # nominal 0.02 + 0.04, at least 75% of it with jitter
    assert time.monotonic() - start >= 0.75 * 0.06 - 0.005
    assert attempts == [0, 1, 2]


# --------------------------------------------------------------------------- backoff


async def test_backoff_sequence_without_jitter_doubles_and_caps() -> None:
    sleep = FakeSleep()
    fn, _ = failing([Transient() for _ in range(7)])
    policy = RetryPolicy(6, 0.5, jitter=no_jitter)
    with pytest.raises(Transient):
        await call_with_retries(policy, fn, is_retryable=is_transient, sleep=sleep)
    assert sleep.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # capped at max_delay=8.0


async def test_custom_cap() -> None:
    sleep = FakeSleep()
    fn, _ = failing([Transient() for _ in range(5)])
    with pytest.raises(Transient):
        await call_with_retries(
            RetryPolicy(4, 1.0, 3.0, jitter=no_jitter), fn, is_retryable=is_transient, sleep=sleep
        )
    assert sleep.delays == [1.0, 2.0, 3.0, 3.0]


async def test_backoff_with_real_jitter_stays_within_bounds_and_varies() -> None:
    all_runs: list[list[float]] = []
    for _ in range(20):
        sleep = FakeSleep()
        fn, _ = failing([Transient() for _ in range(7)])
        with pytest.raises(Transient):
            await call_with_retries(RetryPolicy(6, 0.5), fn, is_retryable=is_transient, sleep=sleep)
        nominal = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
        for delay, cap in zip(sleep.delays, nominal, strict=True):
            assert 0.75 * cap <= delay <= cap
        all_runs.append(sleep.delays)
    assert len({tuple(run) for run in all_runs}) > 1  # jitter really applies


def test_backoff_extremes_of_jitter() -> None:
    policy = RetryPolicy(3, 1.0, 8.0, jitter=lambda: 0.999999)
    assert policy.backoff(0) == pytest.approx(0.75, abs=1e-5)
    assert policy.backoff(2) == pytest.approx(3.0, abs=1e-5)
    assert RetryPolicy(3, 1.0, jitter=no_jitter).backoff(10_000) == 8.0  # no overflow


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(-1, 0.5)
    with pytest.raises(ValueError):
        RetryPolicy(1, -0.5)
    with pytest.raises(ValueError):
        RetryPolicy(1, 0.5, float("nan"))
    with pytest.raises(TypeError):
        RetryPolicy(1, "0.5")  # type: ignore[arg-type]


def test_policy_from_config() -> None:
    policy = RetryPolicy.from_config(ClientConfig(max_retries=7, retry_delay=0.25))
    assert (policy.max_retries, policy.retry_delay, policy.max_delay) == (7, 0.25, 8.0)


# --------------------------------------------------------------------------- Retry-After


async def test_retry_after_on_exception_is_honoured_exactly() -> None:
    sleep = FakeSleep()
    fn, _ = failing([Transient(retry_after=7.0), Transient(retry_after=0.0), Transient()])
    policy = RetryPolicy(3, 0.5, jitter=no_jitter)
    await call_with_retries(policy, fn, is_retryable=is_transient, sleep=sleep)
    assert sleep.delays == [7.0, 0.0, 2.0]  # third falls back to backoff(2)


async def test_retry_after_is_capped() -> None:
    sleep = FakeSleep()
    fn, _ = failing([Transient(retry_after=3600.0), Transient(retry_after=3600.0)])
    await call_with_retries(
        RetryPolicy(3, 0.5, max_retry_after=30.0), fn, is_retryable=is_transient, sleep=sleep
    )
    assert sleep.delays == [30.0, 30.0]
    assert RetryPolicy(1, 0.5).delay_for(0, Transient(retry_after=1e9)) == 60.0  # default cap


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_retry_after_falls_back_to_backoff(bad: float) -> None:
    policy = RetryPolicy(3, 0.5, jitter=no_jitter)
    assert policy.delay_for(1, Transient(retry_after=bad)) == 1.0


def test_parse_retry_after_seconds_and_ms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": " 1.5 "}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After-Ms": "250", "Retry-After": "9"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "junk", "Retry-After": "9"}) == 9.0
    assert parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-5"}) is None
    assert parse_retry_after(CIMultiDict({"RETRY-AFTER": "4"})) == 4.0


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)  # "Tue, 14 Nov 2023 22:13:50 GMT"
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": future}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0


async def test_http_date_retry_after_drives_the_delay() -> None:
    date = email.utils.formatdate(time.time() + 20, usegmt=True)
    delay = parse_retry_after({"Retry-After": date})
    assert delay is not None and 18.0 <= delay <= 20.0
    sleep = FakeSleep()
    fn, _ = failing([Transient("429", retry_after=delay)])
    await call_with_retries(RetryPolicy(1, 0.5), fn, is_retryable=is_transient, sleep=sleep)
    assert sleep.delays == [delay]


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (404, False), (408, True), (409, True), (422, False),
     (429, True), (500, True), (502, True), (503, True), (599, True), (200, False)],
)  # fmt: skip
def test_is_retryable_status(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


# --------------------------------------------------------------------------- idempotency


async def test_one_idempotency_key_reused_across_attempts() -> None:
    """The documented pattern: create the key once, outside fn."""
    sent: list[tuple[int, str]] = []

    async def create_job(body: dict[str, str]) -> str:
        key = new_idempotency_key()  # once per logical request

        async def send(attempt: int) -> str:
            headers = {"Idempotency-Key": key}
            sent.append((attempt, headers["Idempotency-Key"]))
            if attempt < 2:
                raise Transient("connection reset")
            return f"job-for-{headers['Idempotency-Key']}"

        return await call_with_retries(
            RetryPolicy(3, 0.5), send, is_retryable=is_transient, sleep=FakeSleep()
        )

    first = await create_job({"code": "print(1)"})
    keys_first = [key for _, key in sent]
    assert [attempt for attempt, _ in sent] == [0, 1, 2]
    assert len(set(keys_first)) == 1  # every attempt sent the same key
    assert first == f"job-for-{keys_first[0]}"

    sent.clear()
    await create_job({"code": "print(2)"})
    assert {key for _, key in sent}.isdisjoint(keys_first)  # a new request, a new key


def test_new_idempotency_key_is_unique_uuid() -> None:
    import uuid

    keys = {new_idempotency_key() for _ in range(1000)}  # several batches
    assert len(keys) == 1000
    for k in keys:
        parsed = uuid.UUID(k)
        assert str(parsed) == k and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_never_sends_its_parents_next_keys() -> None:
    import os

    new_idempotency_key()  # a batch is made, and most of it is left for later
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next keys
        try:
            os.write(write_end, ",".join(new_idempotency_key() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_keys = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent_keys = {new_idempotency_key() for _ in range(3)}
    assert len(child_keys) == 3 and child_keys.isdisjoint(parent_keys)


# --------------------------------------------------------------------------- hooks & logs


async def test_on_retry_gets_next_attempt_delay_and_error() -> None:
    events: list[tuple[int, float, Exception]] = []
    errors: list[BaseException] = [Transient("a"), Transient("b", retry_after=3.0)]
    fn, _ = failing(errors)
    await call_with_retries(
        RetryPolicy(3, 0.5, jitter=no_jitter),
        fn,
        is_retryable=is_transient,
        on_retry=lambda attempt, delay, exc: events.append((attempt, delay, exc)),
        sleep=FakeSleep(),
    )
    assert events == [(1, 0.5, errors[0]), (2, 3.0, errors[1])]


async def test_each_retry_logged_at_info_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-0123456789abcdefSECRET"
    fn, _ = failing([Transient(f"503 from upstream with X-DeepSeek-Key: {key}"), Transient("x")])
    with caplog.at_level(logging.INFO, logger="deepexec"):
        await call_with_retries(
            RetryPolicy(3, 0.5, jitter=no_jitter), fn, is_retryable=is_transient, sleep=FakeSleep()
        )
    records = [r for r in caplog.records if r.name == "deepexec"]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    first, second = (r.getMessage() for r in records)
    assert "0.50 s" in first and "attempt 2 of 4" in first and "Transient: 503" in first
    assert "1.00 s" in second and "attempt 3 of 4" in second
    assert "SECRET" not in caplog.text


async def test_no_log_when_first_attempt_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    fn, _ = failing([])
    with caplog.at_level(logging.DEBUG, logger="deepexec"):
        await call_with_retries(RetryPolicy(3, 0.5), fn, is_retryable=is_transient)
    assert caplog.records == []


async def test_cancellation_during_backoff_sleep_propagates() -> None:
    attempts: list[int] = []
    sleeping = asyncio.Event()

    async def fn(attempt: int) -> str:
        attempts.append(attempt)
        raise Transient()

    async def real_sleep(delay: float) -> None:
        sleeping.set()
        await asyncio.sleep(delay)

    task = asyncio.create_task(
        call_with_retries(RetryPolicy(3, 30.0), fn, is_retryable=is_transient, sleep=real_sleep)
    )
    await asyncio.wait_for(sleeping.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == [0]
