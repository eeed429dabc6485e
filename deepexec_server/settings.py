"""Server settings: command-line flags over DEEPEXEC_SERVER_* environment over defaults.

| setting | environment variable | default | meaning |
|---|---|---|---|
| host | DEEPEXEC_SERVER_HOST | 127.0.0.1 | bind address (loopback by default) |
| port | DEEPEXEC_SERVER_PORT | 8787 | TCP port (0 = any free port) |
| state_dir | DEEPEXEC_SERVER_STATE_DIR | ./.deepexec-state | job database, session dirs |
| tokens | DEEPEXEC_SERVER_TOKENS | (none) | comma-separated API tokens; none = open server |
| tokens_file | DEEPEXEC_SERVER_TOKENS_FILE | (none) | file of more tokens, one per line |
| concurrency | DEEPEXEC_SERVER_CONCURRENCY | number of cores | jobs run at once |
| max_body_bytes | DEEPEXEC_SERVER_MAX_BODY_BYTES | 2 MiB | largest request body |
| max_code_length | DEEPEXEC_SERVER_MAX_CODE_LENGTH | 100000 | longest code (<= schema maximum) |
| max_jobs_per_token | DEEPEXEC_SERVER_MAX_JOBS_PER_TOKEN | 100 | unfinished jobs per token |
| max_running_per_token | DEEPEXEC_SERVER_MAX_RUNNING_PER_TOKEN | 32 | direct runs per token |
| rate_limit | DEEPEXEC_SERVER_RATE_LIMIT | 500 | requests per second per token (0 = off) |
| rate_burst | DEEPEXEC_SERVER_RATE_BURST | 1000 | burst of the rate limit |
| session_ttl | DEEPEXEC_SERVER_SESSION_TTL | 900 | idle seconds before a session closes |
| retention | DEEPEXEC_SERVER_RETENTION | 604800 | seconds finished jobs are kept |
| shutdown_grace | DEEPEXEC_SERVER_SHUTDOWN_GRACE | 10 | seconds running jobs get on SIGTERM |
| sandbox | DEEPEXEC_SERVER_SANDBOX | local | execution backend: local, e2b |
| allow_insecure | DEEPEXEC_SERVER_ALLOW_INSECURE | false | run unsandboxed without bubblewrap |
| warm_pool | DEEPEXEC_SERVER_WARM_POOL | sandbox default | warm sandboxes per language |

Text providers are read by :func:`deepexec_server.providers.providers_from_env`:
DEEPEXEC_SERVER_DEEPSEEK_KEY, DEEPEXEC_SERVER_OPENAI_BASE_URL,
DEEPEXEC_SERVER_OPENAI_API_KEY, DEEPEXEC_SERVER_OPENAI_MODEL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

ENV_PREFIX = "DEEPEXEC_SERVER_"


class SettingsError(ValueError):
    """An invalid setting; the message names its source and never a token."""


def _tokens_repr(tokens: frozenset[str]) -> str:
    return f"<{len(tokens)} token(s)>"


@attrs.define(frozen=True, kw_only=True)
class ServerSettings:
    """Everything the server is configured with."""

    host: str = "127.0.0.1"
    port: int = 8787
    state_dir: Path = Path(".deepexec-state")
    tokens: frozenset[str] = attrs.field(factory=frozenset, repr=_tokens_repr)
    #: a file of more tokens, one per line (blank lines and ``#`` comments ignored): keeps
    #: them off the command line, where any user of the machine can read them (``ps``)
    tokens_file: Path | None = None
    concurrency: int = attrs.field(factory=lambda: os.cpu_count() or 1)
    max_body_bytes: int = 2 * 1024 * 1024
    max_code_length: int = 100_000
    max_jobs_per_token: int = 100
    max_running_per_token: int = 32
    rate_limit: float = 500.0
    rate_burst: int = 1000
    session_ttl: float = 900.0
    retention: float = 7 * 24 * 3600.0
    shutdown_grace: float = 10.0
    sandbox: str = "local"
    allow_insecure: bool = False
    warm_pool: int | None = None


_CASTS: dict[str, Any] = {
    "host": str,
    "port": int,
    "state_dir": Path,
    "tokens": lambda v: frozenset(t.strip() for t in str(v).split(",") if t.strip()),
    "tokens_file": Path,
    "concurrency": int,
    "max_body_bytes": int,
    "max_code_length": int,
    "max_jobs_per_token": int,
    "max_running_per_token": int,
    "rate_limit": float,
    "rate_burst": int,
    "session_ttl": float,
    "retention": float,
    "shutdown_grace": float,
    "sandbox": str,
    "allow_insecure": lambda v: (
        v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")
    ),
    "warm_pool": int,
}


def _read_tokens_file(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise SettingsError(f"tokens_file {str(path)!r}: cannot read it ({reason})") from None
    lines = (line.strip() for line in text.splitlines())
    tokens = frozenset(line for line in lines if line and not line.startswith("#"))
    if not tokens:
        raise SettingsError(f"tokens_file {str(path)!r} holds no token")
    return tokens


def load_settings(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> ServerSettings:
    """Settings from ``overrides`` (flags; None values ignored) > environment > defaults."""
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, cast in _CASTS.items():
        raw: Any = None
        source = ""
        if overrides and overrides.get(name) is not None:
            raw, source = overrides[name], f"option --{name.replace('_', '-')}"
        elif environ.get(ENV_PREFIX + name.upper(), "").strip():
            raw, source = environ[ENV_PREFIX + name.upper()], f"{ENV_PREFIX}{name.upper()}"
        if raw is None:
            continue
        try:
            values[name] = cast(raw)
        except (TypeError, ValueError):
            shown = "<hidden>" if name == "tokens" else repr(str(raw)[:60])
            raise SettingsError(f"{source}: invalid value {shown}") from None
    settings = ServerSettings(**values)
    if settings.tokens_file is not None:
        settings = attrs.evolve(
            settings, tokens=settings.tokens | _read_tokens_file(settings.tokens_file)
        )
    for name in (
        "port",
        "max_body_bytes",
        "max_code_length",
        "max_jobs_per_token",
        "max_running_per_token",
        "rate_burst",
    ):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{name} must not be negative")
    if not 0 <= settings.port <= 65535:
        raise SettingsError("port must be between 0 and 65535")
    if settings.concurrency < 1:
        raise SettingsError("concurrency must be at least 1")
    if settings.sandbox not in ("local", "e2b"):
        raise SettingsError(f"sandbox must be 'local' or 'e2b', not {settings.sandbox!r}")
    return settings
