"""Client configuration: one frozen :class:`ClientConfig`, resolved from four sources.

Priority (highest first), applied field by field:

1. **Constructor argument** — any argument that is not ``None``.
2. **Environment variable** — ``DEEPEXEC_ENDPOINT``, ``DEEPEXEC_TIMEOUT``,
   ``DEEPEXEC_MAX_RETRIES``, ``DEEPEXEC_RETRY_DELAY``, ``DEEPEXEC_DEEPSEEK_KEY``,
   ``DEEPEXEC_E2B_KEY``, ``DEEPEXEC_API_KEY``, ``DEEPEXEC_VERIFY_SSL``,
   ``DEEPEXEC_LOG``. A variable set to the empty string counts as unset.
3. **TOML config file** — the path in ``DEEPEXEC_CONFIG`` if set (``~`` is expanded),
   else ``config.toml`` in ``platformdirs.user_config_dir("deepexec")``
   (e.g. ``~/.config/deepexec/config.toml`` on Linux). Keys are the field names of
   :class:`ClientConfig`, at the **top level** of the file (no ``[deepexec]`` table)::

       endpoint = "https://deepexec.example.com/v1"
       timeout = 30.0
       max_retries = 5
       retry_delay = 1.0
       verify_ssl = true
       log_level = "info"
       deepseek_key = "sk-..."     # keep the file private (chmod 600)

       [headers]                   # extra headers sent with every request
       X-Team = "research"

   A missing default file is ignored; a missing/unreadable file named by
   ``DEEPEXEC_CONFIG`` is an error, and so is invalid TOML or an unknown key in any
   file that is read. Set ``DEEPEXEC_CONFIG=/dev/null`` to ignore config files.
4. **Defaults** — the ones on :class:`ClientConfig`.

``headers`` is the one field that merges instead of replacing: headers from the
file and from the constructor are combined, and for a header name present in both
(compared case-insensitively) the constructor wins — the same priority, per header.

Every source that is present is validated, even when a higher-priority source
overrides it: a broken setting is reported, not silently shadowed. Errors are
:class:`ConfigurationError`; the message names the source (e.g. ``environment
variable DEEPEXEC_TIMEOUT``) and never contains a secret value.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

import attrs
import platformdirs
from deepexec_protocol.errors import MCPConfigurationError

__all__ = [
    "ClientConfig",
    "ConfigurationError",
    "DEFAULT_ENDPOINT",
    "ENV_VARS",
    "LogLevel",
    "default_config_path",
    "is_sensitive_header",
    "redact",
    "redact_headers",
    "resolve_config",
]

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:8787"
"""The reference server's default bind address."""

LogLevel = Literal["info", "debug"]

ENV_VARS: Final[Mapping[str, str]] = types.MappingProxyType(
    {
        "endpoint": "DEEPEXEC_ENDPOINT",
        "timeout": "DEEPEXEC_TIMEOUT",
        "max_retries": "DEEPEXEC_MAX_RETRIES",
        "retry_delay": "DEEPEXEC_RETRY_DELAY",
        "deepseek_key": "DEEPEXEC_DEEPSEEK_KEY",
        "e2b_key": "DEEPEXEC_E2B_KEY",
        "api_key": "DEEPEXEC_API_KEY",
        "verify_ssl": "DEEPEXEC_VERIFY_SSL",
        "log_level": "DEEPEXEC_LOG",
    }
)
"""Field name -> environment variable. ``headers`` has no environment variable."""

CONFIG_PATH_ENV: Final = "DEEPEXEC_CONFIG"

_SECRET_FIELDS: Final = frozenset({"deepseek_key", "e2b_key", "api_key"})
_FIELDS: Final = (*ENV_VARS, "headers")

_log = logging.getLogger("deepexec")


class ConfigurationError(MCPConfigurationError, ValueError):
    """A configuration value is invalid (an MCPConfigurationError, and a ValueError).

    ``source`` names where the value came from, e.g. ``"environment variable
    DEEPEXEC_TIMEOUT"``, ``"constructor argument timeout"`` or ``"config file
    /x/y.toml key timeout"``. The message names the source too, and never contains
    a secret value.
    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message, details={"source": source})
        self.source = source


# --------------------------------------------------------------------------- redaction

_SECRET_PREFIXES: Final = ("sk-", "e2b_")
_MIN_PARTIAL_LEN: Final = 12
_SENSITIVE_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-deepseek-key",
        "x-e2b-key",
    }
)
_SENSITIVE_WORDS: Final = ("key", "token", "secret", "password", "credential")
_NOT_SENSITIVE_HEADERS: Final = frozenset({"idempotency-key"})
_AUTH_SCHEMES: Final = ("bearer", "basic", "token")


def redact(value: str | None) -> str:
    """Return a display-safe form of a secret.

    ``None`` -> ``"<not set>"``; shorter than 12 characters -> ``"***"``; otherwise a
    well-known non-secret prefix (``sk-``, ``e2b_``) if present, ``...`` and at most the
    last 4 characters: ``redact("sk-0123456789abcd") == "sk-...abcd"``.
    """
    if value is None:
        return "<not set>"
    if len(value) < _MIN_PARTIAL_LEN:
        return "***"
    prefix = next((p for p in _SECRET_PREFIXES if value.startswith(p)), "")
    return f"{prefix}...{value[-4:]}"


def is_sensitive_header(name: str) -> bool:
    """Whether a header's value must never be shown.

    True for ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``,
    ``X-DeepSeek-Key``, ``X-E2B-Key`` and any name containing ``key``, ``token``,
    ``secret``, ``password`` or ``credential`` (case-insensitive) — except
    ``Idempotency-Key``, which is a client-generated request id, not a credential.
    """
    lowered = name.strip().lower()
    if lowered in _NOT_SENSITIVE_HEADERS:
        return False
    return lowered in _SENSITIVE_HEADERS or any(w in lowered for w in _SENSITIVE_WORDS)


def _redact_header_value(value: str) -> str:
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() in _AUTH_SCHEMES:
        return f"{scheme} {redact(rest.strip())}"
    return redact(value)


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The secret values among ``headers`` (those :func:`is_sensitive_header` names; of an
    ``Authorization: Bearer <token>``, the token)."""
    out = []
    for name, value in headers.items():
        if is_sensitive_header(name):
            scheme, sep, rest = value.partition(" ")
            out.append(rest.strip() if sep and scheme.lower() in _AUTH_SCHEMES else value)
    return [v for v in out if v]


#: a run of this many characters of a secret is masked wherever it shows (a server or proxy
#: that quotes a request may cut a key short, or wrap it)
_FRAGMENT = 8


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret, and every run of at least 8 characters taken from one (a
    quoted prefix, say), replaced: a whole secret as :func:`redact` shows it, anything else
    by ``***``."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if len(secret) < _FRAGMENT:
            at = text.find(secret) if secret else -1
            while at != -1:
                spans.append((at, at + len(secret)))
                at = text.find(secret, at + 1)
            continue
        pieces = {secret[i : i + _FRAGMENT] for i in range(len(secret) - _FRAGMENT + 1)}
        i = 0
        while i <= len(text) - _FRAGMENT:
            if text[i : i + _FRAGMENT] in pieces:
                end = i + _FRAGMENT
                while end < len(text) and text[i : end + 1] in secret:
                    end += 1
                spans.append((i, end))
                i = end
            else:
                i += 1
    if not spans:
        return text
    known = set(secrets)
    out: list[str] = []
    done = 0
    for start, end in _merged(spans):
        out.append(text[done:start])
        found = text[start:end]
        out.append(redact(found) if found in known else "***")
        done = end
    out.append(text[done:])
    return "".join(out)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Copy ``headers`` with the value of every sensitive header redacted.

    See :func:`is_sensitive_header`. An ``Authorization: Bearer <token>`` keeps its
    scheme (``"Bearer sk-...abcd"``). Works on plain dicts and on aiohttp's
    (multi)dicts; for a repeated header the last value is kept.
    """
    return {
        name: _redact_header_value(value) if is_sensitive_header(name) else value
        for name, value in headers.items()
    }


# --------------------------------------------------------------------------- validation


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(source: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"invalid {source}: {problem}", source=source)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_endpoint(value: object, source: str) -> str:
    if not isinstance(value, str):
        raise _fail(source, f"expected a URL string, got {type(value).__name__}")
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(source, "not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        # Never echo the value: it contains credentials.
        raise _fail(source, "must not contain credentials (user:password@); use api_key")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _fail(source, f"expected an http:// or https:// URL with a host, got {_show(text)}")
    if parts.query or parts.fragment:
        raise _fail(source, f"must not have a query or fragment, got {_show(text)}")
    return text.rstrip("/")


def _check_timeout(value: object, source: str) -> float:
    if not _is_number(value):
        raise _fail(source, f"expected a number of seconds, got {_show(value)}")
    number = float(cast(float, value))
    if not math.isfinite(number) or number <= 0:
        raise _fail(source, f"expected a finite number of seconds > 0, got {_show(value)}")
    return number


def _check_retry_delay(value: object, source: str) -> float:
    if not _is_number(value):
        raise _fail(source, f"expected a number of seconds, got {_show(value)}")
    number = float(cast(float, value))
    if not math.isfinite(number) or number < 0:
        raise _fail(source, f"expected a finite number of seconds >= 0, got {_show(value)}")
    return number


def _check_max_retries(value: object, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(source, f"expected a whole number >= 0, got {_show(value)}")
    if value < 0:
        raise _fail(source, f"expected a whole number >= 0, got {_show(value)}")
    return value


def _check_secret(value: object, source: str) -> str:
    # Never include the value (or a part of it) in these messages.
    if not isinstance(value, str):
        raise _fail(source, f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise _fail(source, "must not be empty")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise _fail(source, "must not contain whitespace or control characters")
    if not text.isascii():
        raise _fail(source, "must contain only ASCII characters")
    return text


def _check_verify_ssl(value: object, source: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, f"expected true or false, got {_show(value)}")
    return value


def _check_log_level(value: object, source: str) -> LogLevel | None:
    if not isinstance(value, str):
        raise _fail(source, f"expected 'info' or 'debug', got {_show(value)}")
    text = value.strip().lower()
    if text == "":
        return None
    if text == "info":
        return "info"
    if text == "debug":
        return "debug"
    raise _fail(source, f"expected 'info' or 'debug', got {_show(value)}")


_TOKEN_RE: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _check_headers(value: object, source: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(source, f"expected a mapping of header names to strings, got {_show(value)}")
    result: dict[str, str] = {}
    for name, header_value in value.items():
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            raise _fail(source, f"invalid header name {_show(name)}")
        if not isinstance(header_value, str):
            raise _fail(source, f"header {name}: expected a string value")
        if any(ch in header_value for ch in "\r\n\0"):
            # The value may be a credential: do not show it.
            raise _fail(source, f"header {name}: value must not contain CR, LF or NUL")
        result[name] = header_value
    return result


_CHECKS: Final[Mapping[str, Callable[[object, str], Any]]] = types.MappingProxyType(
    {
        "endpoint": _check_endpoint,
        "timeout": _check_timeout,
        "max_retries": _check_max_retries,
        "retry_delay": _check_retry_delay,
        "deepseek_key": _check_secret,
        "e2b_key": _check_secret,
        "api_key": _check_secret,
        "verify_ssl": _check_verify_ssl,
        "log_level": _check_log_level,
        "headers": _check_headers,
    }
)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _parse_env(name: str, text: str, source: str) -> object:
    """Turn an environment variable's text into the field's Python type."""
    stripped = text.strip()
    if name in ("timeout", "retry_delay"):
        try:
            return float(stripped)
        except ValueError:
            raise _fail(source, f"expected a number of seconds, got {_show(text)}") from None
    if name == "max_retries":
        try:
            return int(stripped)
        except ValueError:
            raise _fail(source, f"expected a whole number >= 0, got {_show(text)}") from None
    if name == "verify_ssl":
        lowered = stripped.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise _fail(source, f"expected true/false (also 1/0, yes/no, on/off), got {_show(text)}")
    return text


# --------------------------------------------------------------------------- ClientConfig


def _conv_endpoint(value: str) -> str:
    return _check_endpoint(value, "ClientConfig field endpoint")


def _conv_timeout(value: float) -> float:
    return _check_timeout(value, "ClientConfig field timeout")


def _conv_max_retries(value: int) -> int:
    return _check_max_retries(value, "ClientConfig field max_retries")


def _conv_retry_delay(value: float) -> float:
    return _check_retry_delay(value, "ClientConfig field retry_delay")


def _conv_deepseek_key(value: str | None) -> str | None:
    return None if value is None else _check_secret(value, "ClientConfig field deepseek_key")


def _conv_e2b_key(value: str | None) -> str | None:
    return None if value is None else _check_secret(value, "ClientConfig field e2b_key")


def _conv_api_key(value: str | None) -> str | None:
    return None if value is None else _check_secret(value, "ClientConfig field api_key")


def _conv_verify_ssl(value: bool) -> bool:
    return _check_verify_ssl(value, "ClientConfig field verify_ssl")


def _conv_log_level(value: str | None) -> LogLevel | None:
    return None if value is None else _check_log_level(value, "ClientConfig field log_level")


def _conv_headers(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(_check_headers(value, "ClientConfig field headers"))


def _headers_repr(value: Mapping[str, str]) -> str:
    return repr(redact_headers(value))


@attrs.define(frozen=True, kw_only=True)
class ClientConfig:
    """Validated, immutable client settings. Build it with :func:`resolve_config`.

    Constructing it directly validates every field (errors name ``ClientConfig field
    <name>`` as the source) but reads no environment variable or file. The secrets
    (``deepseek_key``, ``e2b_key``, ``api_key``) are left out of ``repr``/``str``;
    sensitive ``headers`` are shown redacted.
    """

    endpoint: str = attrs.field(default=DEFAULT_ENDPOINT, converter=_conv_endpoint)
    """Base URL of the DeepExec server, without a trailing slash."""
    timeout: float = attrs.field(default=60.0, converter=_conv_timeout)
    """Timeout of one HTTP request, in seconds (> 0)."""
    max_retries: int = attrs.field(default=3, converter=_conv_max_retries)
    """Retries after the first attempt of a retryable request (0 = try once)."""
    retry_delay: float = attrs.field(default=0.5, converter=_conv_retry_delay)
    """Base delay of the exponential backoff between retries, in seconds."""
    deepseek_key: str | None = attrs.field(default=None, converter=_conv_deepseek_key, repr=False)
    """DeepSeek API key, sent as ``X-DeepSeek-Key``."""
    e2b_key: str | None = attrs.field(default=None, converter=_conv_e2b_key, repr=False)
    """E2B API key, sent as ``X-E2B-Key``."""
    api_key: str | None = attrs.field(default=None, converter=_conv_api_key, repr=False)
    """Server access token, sent as ``Authorization: Bearer <api_key>``."""
    verify_ssl: bool = attrs.field(default=True, converter=_conv_verify_ssl)
    """Verify the server's TLS certificate."""
    headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_conv_headers, repr=_headers_repr, hash=False
    )
    """Extra headers sent with every request (read-only mapping)."""
    log_level: LogLevel | None = attrs.field(default=None, converter=_conv_log_level)
    """SDK log level: ``None`` (warnings only), ``"info"`` or ``"debug"``."""

    def redacted(self) -> dict[str, object]:
        """All fields as a dict that is safe to print or log: secrets are redacted.

        Returns:
            dict[str, object]: field name to value; ``deepseek_key``, ``e2b_key`` and
            ``api_key`` shown as :func:`redact` shows them (``sk-...abcd``), sensitive
            headers masked.
        """
        result: dict[str, object] = {}
        for field in attrs.fields(ClientConfig):
            value = getattr(self, field.name)
            if field.name in _SECRET_FIELDS:
                value = None if value is None else redact(value)
            elif field.name == "headers":
                value = redact_headers(value)
            result[field.name] = value
        return result


# --------------------------------------------------------------------------- resolution


def default_config_path() -> Path:
    """The config file read when ``DEEPEXEC_CONFIG`` is not set."""
    return Path(platformdirs.user_config_dir("deepexec", appauthor=False)) / "config.toml"


def _suggest(key: str) -> str:
    import difflib

    if key == "deepexec":
        return "; keys go at the top level of the file, not under a [deepexec] table"
    close = difflib.get_close_matches(key, _FIELDS, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known keys: {', '.join(_FIELDS)}"


def _read_config_file(env: Mapping[str, str]) -> dict[str, object]:
    explicit = env.get(CONFIG_PATH_ENV, "").strip()
    path = Path(explicit).expanduser() if explicit else default_config_path()
    where = f"config file {path}"
    if not explicit and not path.exists():
        return {}  # the default file is optional; one named by DEEPEXEC_CONFIG is not
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        how = exc.strerror or type(exc).__name__
        origin = f" (from {CONFIG_PATH_ENV})" if explicit else ""
        raise ConfigurationError(f"cannot read {where}{origin}: {how}", source=where) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The decode error names a line and column, never the file's content.
        raise ConfigurationError(f"{where} is not valid TOML: {exc}", source=where) from None

    values: dict[str, object] = {}
    for key, value in data.items():
        source = f"{where} key {key}"
        if key not in _CHECKS:
            raise ConfigurationError(
                f"unknown key {key!r} in {where}{_suggest(key)}", source=source
            )
        values[key] = _CHECKS[key](value, source)
    _warn_if_exposed(path, values)
    return values


def _warn_if_exposed(path: Path, values: Mapping[str, object]) -> None:
    if os.name != "posix" or not _SECRET_FIELDS.intersection(values):
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning(
            "config file %s holds API keys but is readable by other users; run: chmod 600 %s",
            path,
            path,
        )


def _merge_headers(low: Mapping[str, str], high: Mapping[str, str]) -> dict[str, str]:
    merged = dict(low)
    for name, value in high.items():
        for existing in [k for k in merged if k.lower() == name.lower()]:
            del merged[existing]
        merged[name] = value
    return merged


def resolve_config(
    *,
    endpoint: str | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    retry_delay: float | None = None,
    deepseek_key: str | None = None,
    e2b_key: str | None = None,
    api_key: str | None = None,
    verify_ssl: bool | None = None,
    headers: Mapping[str, str] | None = None,
    log_level: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Build a :class:`ClientConfig` from constructor arguments, environment and file.

    Priority, per field: constructor argument (not ``None``) > environment variable >
    config file > default; see the module docstring for the variables, the file's
    location and format. ``env`` defaults to :data:`os.environ` (pass a dict in tests).

    Raises :class:`ConfigurationError` naming the offending source for any invalid
    value in any source that is present, for an unknown key in the config file, and
    for an unreadable or invalid config file.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    given: dict[str, object] = {
        "endpoint": endpoint,
        "timeout": timeout,
        "max_retries": max_retries,
        "retry_delay": retry_delay,
        "deepseek_key": deepseek_key,
        "e2b_key": e2b_key,
        "api_key": api_key,
        "verify_ssl": verify_ssl,
        "headers": headers,
        "log_level": log_level,
    }

    from_ctor: dict[str, object] = {}
    for name, value in given.items():
        if value is not None:
            from_ctor[name] = _CHECKS[name](value, f"constructor argument {name}")

    from_env: dict[str, object] = {}
    for name, var in ENV_VARS.items():
        text = environ.get(var)
        if text is None or text.strip() == "":
            continue
        source = f"environment variable {var}"
        from_env[name] = _CHECKS[name](_parse_env(name, text, source), source)

    from_file = _read_config_file(environ)

    resolved: dict[str, Any] = {}
    for name in _FIELDS:
        for layer in (from_ctor, from_env, from_file):
            if name in layer:
                resolved[name] = layer[name]
                break
    resolved["headers"] = _merge_headers(
        cast(Mapping[str, str], from_file.get("headers", {})),
        cast(Mapping[str, str], from_ctor.get("headers", {})),
    )
    # Remove unset values so ClientConfig's defaults apply (log_level "" -> None too).
    return ClientConfig(**{k: v for k, v in resolved.items() if v is not None})
