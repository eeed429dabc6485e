"""The SDK's logger, ``"deepexec"``, with secret redaction.

* Every record logged on ``"deepexec"`` (and on children obtained through
  :func:`get_logger`) passes a :class:`RedactingFilter` that masks bearer tokens,
  ``sk-...``/``e2b_...`` keys, credentials in URLs and the values of sensitive
  headers/fields (``X-DeepSeek-Key: ...``, ``"api_key": "..."``) in the formatted
  message and traceback. The filter is installed when this module is imported.
* :func:`setup_logging` applies ``DEEPEXEC_LOG`` (``info`` or ``debug``): it sets the
  logger's level and, only if the application has configured no logging at all
  (no handler on the root logger or on ``"deepexec"``), adds one stderr handler.
  Any other value raises :class:`~deepexec_sdk._config.ConfigurationError`, the same
  as every other invalid setting.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Final, TextIO

from ._config import ConfigurationError, mask_secrets, redact, redact_headers

__all__ = [
    "LOGGER_NAME",
    "RedactingFilter",
    "get_logger",
    "log_request",
    "logger",
    "redact_text",
    "setup_logging",
    "watch_secrets",
]

LOGGER_NAME: Final = "deepexec"

logger: Final = logging.getLogger(LOGGER_NAME)
"""The SDK's logger. SDK modules log here (or on a child from :func:`get_logger`)."""

_FORMAT: Final = "[%(asctime)s %(name)s %(levelname)s] %(message)s"

# --------------------------------------------------------------------------- redaction

# A value that is already masked: leave it alone so redaction is idempotent.
_MASKED_RE: Final = re.compile(r"^(?:\*\*\*|(?:sk-|e2b_)?\.\.\.[^\s]{0,4}|<not set>)$")

# "Authorization: Bearer x", "X-DeepSeek-Key: x", "'api_key': 'x'", "deepseek_key=x",
# "access_token=x", "Cookie: a=b". The name must be a sensitive word on its own or
# the last part of a -/_ separated name, so "max_tokens" or "monkey" do not match.
_FIELD_RE: Final = re.compile(
    r"""
    (?P<name>
        \b(?:proxy-)?authorization
      | \b(?:set-)?cookie
      | \b(?:[A-Za-z0-9]+[-_])*(?:api[-_]?)?(?:key|token|secret|password|credentials?)
    )\b
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?P<value>(?:(?:bearer|basic|token)\s+)?[^\s"',;&}\]]+)
    """,
    re.IGNORECASE | re.VERBOSE,
)
_BEARER_RE: Final = re.compile(r"\b(Bearer|Basic)\s+([A-Za-z0-9._~+/=\-]{4,})", re.IGNORECASE)
_KEY_RE: Final = re.compile(r"\b(?:sk-|e2b_)[A-Za-z0-9_\-]{8,}")
_URL_CREDENTIALS_RE: Final = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.\-]*://)[^/\s@:]+:[^/\s@]+@")
_NOT_SECRET_NAMES: Final = ("idempotency-key", "idempotency_key")


def _mask(value: str) -> str:
    if _MASKED_RE.match(value):
        return value
    return redact(value)


def _mask_field(match: re.Match[str]) -> str:
    name, sep, value = match.group("name", "sep", "value")
    if name.lower().endswith(_NOT_SECRET_NAMES):
        return match.group(0)
    scheme, space, token = value.partition(" ")
    if space and scheme.lower() in ("bearer", "basic", "token"):
        return f"{name}{sep}{scheme} {_mask(token.strip())}"
    return f"{name}{sep}{_mask(value)}"


def redact_text(text: str) -> str:
    """Mask secrets in free text (a log message, a traceback, an error string).

    Masks ``Bearer``/``Basic`` credentials, ``sk-...``/``e2b_...`` keys, ``user:pass@``
    in URLs, and the value after a sensitive header or field name (see
    :func:`~deepexec_sdk._config.is_sensitive_header`) followed by ``:`` or ``=``.
    Masked values keep at most their last 4 characters (:func:`redact`).
    Applying it twice gives the same result as applying it once.
    """
    text = _URL_CREDENTIALS_RE.sub(r"\g<scheme>***@", text)
    text = _FIELD_RE.sub(_mask_field, text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {_mask(m.group(2))}", text)
    return _KEY_RE.sub(lambda m: _mask(m.group(0)), text)


#: the objects (clients) whose secrets every record is scrubbed of, while they live (the
#: lock: clients are made, and records logged, in any thread)
_SECRET_HOLDERS: weakref.WeakSet[Any] = weakref.WeakSet()
_SECRET_HOLDERS_LOCK = threading.Lock()


def watch_secrets(holder: Any) -> None:
    """Scrub ``holder._secrets`` (a client's keys and tokens, whatever their form) out of
    every record, for as long as ``holder`` lives: the patterns of :func:`redact_text` only
    know the usual forms of a secret (``Bearer ...``, ``sk-...``, ``X-...-Key: ...``)."""
    if holder._secrets:
        with _SECRET_HOLDERS_LOCK:
            _SECRET_HOLDERS.add(holder)


def _known_secrets() -> list[str]:
    with _SECRET_HOLDERS_LOCK:
        holders = list(_SECRET_HOLDERS)
    return [secret for holder in holders for secret in holder._secrets]


class RedactingFilter(logging.Filter):
    """Redact secrets from a record's message, arguments and traceback text.

    The message is formatted with its arguments first (``record.getMessage()``), then
    redacted, and ``record.args`` is cleared — so a secret inside any argument (a dict
    of headers, an exception, an object's ``repr``) is masked too. Tracebacks are
    formatted once and stored, redacted, in ``record.exc_text``, which standard
    formatters reuse.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return True
        known = _known_secrets()
        record.msg = redact_text(mask_secrets(message, known))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(mask_secrets(record.exc_text, known))
        if record.stack_info:
            record.stack_info = redact_text(mask_secrets(record.stack_info, known))
        return True


def _install_filter(target: logging.Logger | logging.Handler) -> None:
    if not any(isinstance(f, RedactingFilter) for f in target.filters):
        target.addFilter(RedactingFilter())


_install_filter(logger)


def get_logger(name: str | None = None) -> logging.Logger:
    """Return ``"deepexec"`` or its child ``"deepexec.<name>"``, with redaction installed.

    A logger's filters do not apply to records that propagate up from its children,
    so a child logger needs a filter of its own: always get SDK loggers from here.
    """
    if not name:
        return logger
    child = logger.getChild(name)
    _install_filter(child)
    return child


# --------------------------------------------------------------------------- setup


class _StderrHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`setup_logging` adds; a class of its own so it is added once."""


_LEVELS: Final[Mapping[str, int]] = {"info": logging.INFO, "debug": logging.DEBUG}


def _app_configured_logging() -> bool:
    own = [h for h in logger.handlers if not isinstance(h, _StderrHandler)]
    return bool(own or logging.getLogger().handlers)


def setup_logging(level: str | None, *, source: str = "environment variable DEEPEXEC_LOG") -> None:
    """Apply a ``DEEPEXEC_LOG`` setting to the ``"deepexec"`` logger.

    ``None`` or ``""``: change nothing (Python's default: warnings and errors reach
    stderr through logging's last-resort handler). ``"info"`` / ``"debug"``
    (case-insensitive): set the logger's level and, if the application has not
    configured logging (no handler on the root logger nor on ``"deepexec"``), add a
    single stderr handler. Calling it again only changes the level.

    Raises :class:`ConfigurationError` (naming ``source``) for any other value.
    """
    if level is None or level.strip() == "":
        return
    numeric = _LEVELS.get(level.strip().lower())
    if numeric is None:
        shown = repr(level) if len(level) <= 40 else repr(level[:37] + "...")
        raise ConfigurationError(
            f"invalid {source}: expected 'info' or 'debug', got {shown}", source=source
        )
    logger.setLevel(numeric)
    if not _app_configured_logging() and not any(
        isinstance(h, _StderrHandler) for h in logger.handlers
    ):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        _install_filter(handler)
        logger.addHandler(handler)


def log_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    status: int | None,
    elapsed_ms: float,
    request_id: str | None,
) -> None:
    """Log one HTTP exchange at DEBUG, with sensitive headers redacted.

    ``status`` is ``None`` when no response arrived (connection error, timeout).
    Costs nothing when DEBUG is not enabled.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return
    logger.debug(
        "HTTP %s %s -> %s in %.1f ms (request id %s) headers=%s",
        method.upper(),
        redact_text(url),
        "no response" if status is None else status,
        elapsed_ms,
        request_id or "-",
        redact_headers(headers),
    )
