"""The "deepexec" logger: redaction of secrets, DEEPEXEC_LOG levels, log_request."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepexec_sdk import _logging
from deepexec_sdk._config import ConfigurationError, resolve_config
from deepexec_sdk._logging import (
    LOGGER_NAME,
    RedactingFilter,
    get_logger,
    log_request,
    logger,
    redact_text,
    setup_logging,
)

DS_KEY = "sk-0123456789abcdefghijSECRET"
E2B_KEY = "e2b_0123456789abcdefghSECRET"
TOKEN = "opaque0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    level, handlers, propagate = logger.level, list(logger.handlers), logger.propagate
    # the secrets of clients other tests left alive are masked too (as pieces: "***"); the
    # tests here are about the patterns, which show a masked value as redact() does
    holders = list(_logging._SECRET_HOLDERS)
    _logging._SECRET_HOLDERS.clear()
    yield
    _logging._SECRET_HOLDERS.update(holders)
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logger.propagate = propagate


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Formatted output of the "deepexec" logger, as a user's handler would write it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)


def assert_clean(text: str) -> None:
    assert "SECRET" not in text, text


def test_filter_is_installed_on_the_deepexec_logger() -> None:
    assert logging.getLogger(LOGGER_NAME) is logger
    assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1


def test_secrets_in_message_are_redacted(captured: io.StringIO) -> None:
    logger.info("sending Authorization: Bearer %s", TOKEN)
    logger.info(f"key {DS_KEY} and {E2B_KEY}")
    logger.warning("X-DeepSeek-Key: %s X-E2B-Key=%s", DS_KEY, E2B_KEY)
    out = captured.getvalue()
    assert_clean(out)
    assert "Bearer ...CRET" in out
    assert "sk-...CRET" in out and "e2b_...CRET" in out


def test_secrets_in_args_of_any_type_are_redacted(captured: io.StringIO) -> None:
    class Thing:
        def __repr__(self) -> str:
            return f"Thing(api_key={TOKEN!r})"

    headers = {"X-DeepSeek-Key": DS_KEY, "Authorization": f"Bearer {TOKEN}", "X-Request-ID": "r1"}
    logger.debug("headers=%s thing=%r", headers, Thing())
    logger.debug("mapping arg %(h)s", {"h": headers})
    out = captured.getvalue()
    assert_clean(out)
    assert "r1" in out  # non-secrets survive


def test_exception_traceback_is_redacted(captured: io.StringIO) -> None:
    try:
        raise RuntimeError(f"upstream rejected key {DS_KEY}")
    except RuntimeError:
        logger.exception("call failed with token=%s", TOKEN)
    out = captured.getvalue()
    assert "Traceback" in out and "RuntimeError" in out
    assert_clean(out)


def test_redaction_reaches_root_handlers_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        logger.info("X-E2B-Key: %s", E2B_KEY)
    assert caplog.records and "e2b_...CRET" in caplog.text
    assert_clean(caplog.text)
    assert_clean(caplog.records[0].getMessage())


def test_child_logger_from_get_logger_is_redacted(captured: io.StringIO) -> None:
    child = get_logger("retry")
    assert child.name == "deepexec.retry"
    assert get_logger() is logger
    child.info("api_key=%s", TOKEN)
    assert "deepexec.retry" in captured.getvalue()
    assert_clean(captured.getvalue())


def test_non_secrets_are_preserved() -> None:
    text = (
        "Idempotency-Key: 7d9e1b1c-aaaa-bbbb-cccc-0123456789ab max_tokens=500 "
        "monkey: banana X-Request-ID: req-42 https://api.example.com/v1/jobs?limit=10"
    )
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer ...CRET"),
        (f"{{'X-DeepSeek-Key': '{DS_KEY}'}}", "{'X-DeepSeek-Key': 'sk-...CRET'}"),
        (f'{{"api_key": "{TOKEN}"}}', '{"api_key": "...CRET"}'),
        (f"deepseek_key={DS_KEY}", "deepseek_key=sk-...CRET"),
        (f"https://me:{TOKEN}@host/x", "https://***@host/x"),
        (f"/v1/x?access_token={TOKEN}&page=2", "/v1/x?access_token=...CRET&page=2"),
        (f"plain {E2B_KEY} words", "plain e2b_...CRET words"),
        ("X-Auth-Token: abc", "X-Auth-Token: ***"),
    ],
)
def test_redact_text_cases(text: str, expected: str) -> None:
    assert redact_text(text) == expected


token_chars = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                      min_size=16, max_size=48)  # fmt: skip


@given(
    token=token_chars,
    template=st.sampled_from(
        [
            "Authorization: Bearer {t}",
            "X-DeepSeek-Key: sk-{t}",
            "'X-E2B-Key': 'e2b_{t}'",
            "api_key={t}",
            "saw sk-{t} in output",
            "e2b_{t}",
            '"secret": "{t}"',
        ]
    ),
    before=st.sampled_from(["", "x ", "{'a': 1, ", "line\n"]),
)
def test_redact_text_hides_generated_secrets(token: str, template: str, before: str) -> None:
    text = before + template.format(t=token)
    once = redact_text(text)
    assert token[:-4] not in once
    assert redact_text(once) == once  # idempotent


# --------------------------------------------------------------------------- DEEPEXEC_LOG


@pytest.mark.parametrize(
    ("value", "level"),
    [("info", logging.INFO), ("debug", logging.DEBUG), (" DEBUG ", logging.DEBUG)],
)
def test_setup_logging_sets_level(value: str, level: int) -> None:
    logger.setLevel(logging.NOTSET)
    setup_logging(value)
    assert logger.level == level


@pytest.mark.parametrize("value", [None, "", "  "])
def test_setup_logging_unset_changes_nothing(value: str | None) -> None:
    logger.setLevel(logging.NOTSET)
    before = list(logger.handlers)
    setup_logging(value)
    assert logger.level == logging.NOTSET
    assert logger.handlers == before


@pytest.mark.parametrize("value", ["verbose", "warning", "1", "trace"])
def test_setup_logging_rejects_other_values(value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        setup_logging(value)
    assert info.value.source == "environment variable DEEPEXEC_LOG"
    assert "DEEPEXEC_LOG" in str(info.value)


def test_invalid_deepexec_log_rejected_by_resolve_config_too() -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_config(env={"DEEPEXEC_LOG": "loud", "DEEPEXEC_CONFIG": "/dev/null"})
    assert info.value.source == "environment variable DEEPEXEC_LOG"


def test_stderr_handler_added_when_logging_unconfigured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # an app that configured nothing
    logger.handlers[:] = []
    setup_logging("info")
    setup_logging("debug")  # a second call only changes the level
    assert len(logger.handlers) == 1
    logger.debug("hello with X-DeepSeek-Key: %s", DS_KEY)
    logger.debug("plain %s", DS_KEY)
    # A child made with plain logging.getLogger bypasses the logger's filter (logger
    # filters do not see propagated records); the handler's own filter still redacts.
    logging.getLogger("deepexec.raw").warning("raw child %s", E2B_KEY)
    err = capsys.readouterr().err
    assert "raw child e2b_...CRET" in err
    assert "hello with X-DeepSeek-Key: sk-...CRET" in err
    assert "DEBUG" in err and "deepexec" in err
    assert_clean(err)


def test_no_handler_added_when_app_configured_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    logger.handlers[:] = []
    setup_logging("debug")
    assert logger.handlers == []
    assert logger.level == logging.DEBUG


# --------------------------------------------------------------------------- log_request


def test_log_request_at_debug_redacts(captured: io.StringIO) -> None:
    log_request(
        "post",
        f"https://user:{TOKEN}@api.example.com/v1/jobs",
        {
            "Authorization": f"Bearer {TOKEN}",
            "X-DeepSeek-Key": DS_KEY,
            "X-E2B-Key": E2B_KEY,
            "Idempotency-Key": "idem-1",
        },
        201,
        12.345,
        "req-9",
    )
    out = captured.getvalue()
    assert out.startswith("DEBUG deepexec HTTP POST https://***@api.example.com/v1/jobs -> 201")
    assert "12.3 ms" in out and "req-9" in out and "idem-1" in out
    assert_clean(out)


def test_log_request_without_response(captured: io.StringIO) -> None:
    log_request("GET", "http://127.0.0.1:8787/health", {}, None, 5.0, None)
    assert "-> no response" in captured.getvalue()
    assert "(request id -)" in captured.getvalue()


def test_log_request_silent_unless_debug(caplog: pytest.LogCaptureFixture) -> None:
    logger.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log_request("GET", "http://x/", {}, 200, 1.0, "r")
    assert caplog.records == []


def test_a_live_clients_secrets_are_masked_in_any_record_whatever_their_form(
    captured: io.StringIO,
) -> None:
    """No pattern knows an opaque token without its header name, nor a piece of one: the
    secrets of every live client are masked as such."""
    from deepexec_sdk import DeepExecAsyncClient

    opaque = "Zq81mPq7rT2vW9yK4nB6cD3fG5hJ0x"
    client = DeepExecAsyncClient(endpoint="http://127.0.0.1:9", api_key=opaque)
    logger.info("upstream said: %s", opaque)
    logger.info("quoted: b'%s...'", opaque[:12])
    out = captured.getvalue()
    assert opaque[:8] not in out and opaque[-8:] not in out, out
    assert "quoted: b'***...'" in out
    del client
