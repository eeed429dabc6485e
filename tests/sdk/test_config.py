"""ClientConfig / resolve_config: priority of sources, validation, redaction."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from deepexec_sdk import _config
from deepexec_sdk._config import (
    DEFAULT_ENDPOINT,
    ClientConfig,
    ConfigurationError,
    default_config_path,
    header_secrets,
    mask_secrets,
    redact,
    redact_headers,
    resolve_config,
)

DS_KEY = "sk-live-0123456789abcdefSECRET"
E2B_KEY = "e2b_0123456789abcdefSECRET"
API_KEY = "tok_0123456789abcdefSECRET"
SECRETS = (DS_KEY, E2B_KEY, API_KEY)


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read the real user's config file: point the default path into tmp."""
    path = tmp_path / "default-dir" / "config.toml"
    monkeypatch.setattr(_config, "default_config_path", lambda: path)
    return path


def write_toml(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret[:-4] not in text  # not even a prefix beyond the last 4 characters


# --------------------------------------------------------------------------- defaults


def test_defaults_when_no_source_is_set() -> None:
    config = resolve_config(env={})
    assert config == ClientConfig()
    assert config.endpoint == DEFAULT_ENDPOINT == "http://127.0.0.1:8787"
    assert config.timeout == 60.0
    assert config.max_retries == 3
    assert config.retry_delay == 0.5
    assert config.deepseek_key is None and config.e2b_key is None and config.api_key is None
    assert config.verify_ssl is True
    assert dict(config.headers) == {}
    assert config.log_level is None


def test_default_config_path_is_under_user_config_dir() -> None:
    import platformdirs

    # The autouse fixture replaced the module attribute; the imported function is real.
    path = default_config_path()
    assert path.name == "config.toml"
    assert path.parent == Path(platformdirs.user_config_dir("deepexec", appauthor=False))


def test_default_config_file_is_read(no_user_config: Path) -> None:
    write_toml(no_user_config, 'endpoint = "https://from-default-file.example"\n')
    assert resolve_config(env={}).endpoint == "https://from-default-file.example"


# --------------------------------------------------------------------------- priority

# field, constructor value, environment text, TOML literal, value from env, value from file
PRIORITY_CASES: list[tuple[str, Any, str, str, Any, Any]] = [
    ("endpoint", "https://ctor.example", "https://env.example", '"https://file.example"',
     "https://env.example", "https://file.example"),
    ("timeout", 1.5, "2.5", "3.5", 2.5, 3.5),
    ("max_retries", 1, "2", "7", 2, 7),
    ("retry_delay", 0.1, "0.2", "0.3", 0.2, 0.3),
    ("verify_ssl", True, "false", "false", False, False),
    ("deepseek_key", "sk-ctor-000000000001", "sk-env-000000000002", '"sk-file-000000000003"',
     "sk-env-000000000002", "sk-file-000000000003"),
    ("e2b_key", "e2b_ctor000000000001", "e2b_env000000000002", '"e2b_file000000000003"',
     "e2b_env000000000002", "e2b_file000000000003"),
    ("api_key", "ctor-token-00000001", "env-token-00000002", '"file-token-00000003"',
     "env-token-00000002", "file-token-00000003"),
    ("log_level", "debug", "info", '"debug"', "info", "debug"),
]  # fmt: skip
DEFAULTS = ClientConfig()


@pytest.mark.parametrize(
    ("field", "ctor", "env_text", "toml", "from_env", "from_file"), PRIORITY_CASES
)
def test_priority_for_each_pair_of_sources(
    tmp_path: Path, field: str, ctor: Any, env_text: str, toml: str, from_env: Any, from_file: Any
) -> None:
    var = _config.ENV_VARS[field]
    cfg = write_toml(tmp_path / "c.toml", f"{field} = {toml}\n")
    with_file = {"DEEPEXEC_CONFIG": str(cfg)}
    # constructor > environment
    assert getattr(resolve_config(**{field: ctor}, env={var: env_text}), field) == ctor
    # constructor > file
    assert getattr(resolve_config(**{field: ctor}, env=with_file), field) == ctor
    # environment > file
    assert getattr(resolve_config(env={var: env_text, **with_file}), field) == from_env
    # file > default
    assert getattr(resolve_config(env=with_file), field) == from_file
    assert from_file != getattr(DEFAULTS, field)  # the case really distinguishes file/default
    # all three: constructor wins
    assert getattr(resolve_config(**{field: ctor}, env={var: env_text, **with_file}), field) == ctor
    # None means "not given", so the next source applies
    assert getattr(resolve_config(**{field: None}, env={var: env_text}), field) == from_env


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPEXEC_TIMEOUT", "12")
    monkeypatch.delenv("DEEPEXEC_CONFIG", raising=False)
    assert resolve_config().timeout == 12.0


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", "timeout = 9\n")
    config = resolve_config(env={"DEEPEXEC_TIMEOUT": "  ", "DEEPEXEC_CONFIG": str(cfg)})
    assert config.timeout == 9.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
     ("false", False), ("False", False), ("0", False), ("no", False), (" off ", False)],
)  # fmt: skip
def test_verify_ssl_env_spellings(text: str, expected: bool) -> None:
    assert resolve_config(env={"DEEPEXEC_VERIFY_SSL": text}).verify_ssl is expected


def test_headers_merge_per_name_constructor_wins(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", '[headers]\nX-Team = "file"\nX-Only-File = "f"\n')
    config = resolve_config(
        headers={"x-team": "ctor", "X-Only-Ctor": "c"}, env={"DEEPEXEC_CONFIG": str(cfg)}
    )
    assert dict(config.headers) == {"X-Only-File": "f", "x-team": "ctor", "X-Only-Ctor": "c"}


def test_dev_null_disables_config_files(no_user_config: Path) -> None:
    write_toml(no_user_config, "timeout = 5\n")
    assert resolve_config(env={"DEEPEXEC_CONFIG": os.devnull}).timeout == 60.0


def test_config_path_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_toml(tmp_path / "dx.toml", "max_retries = 9\n")
    assert resolve_config(env={"DEEPEXEC_CONFIG": "~/dx.toml"}).max_retries == 9


def test_values_are_normalised() -> None:
    config = resolve_config(
        endpoint=" https://api.example.com/v1/ ",
        timeout=5,
        env={"DEEPEXEC_DEEPSEEK_KEY": f"  {DS_KEY}\n", "DEEPEXEC_LOG": "DEBUG"},
    )
    assert config.endpoint == "https://api.example.com/v1"
    assert config.timeout == 5.0 and isinstance(config.timeout, float)
    assert config.deepseek_key == DS_KEY
    assert config.log_level == "debug"


# --------------------------------------------------------------------------- invalid values

ENV_INVALID = [
    ("DEEPEXEC_TIMEOUT", "abc"),
    ("DEEPEXEC_TIMEOUT", "-1"),
    ("DEEPEXEC_TIMEOUT", "0"),
    ("DEEPEXEC_TIMEOUT", "nan"),
    ("DEEPEXEC_TIMEOUT", "inf"),
    ("DEEPEXEC_MAX_RETRIES", "-1"),
    ("DEEPEXEC_MAX_RETRIES", "1.5"),
    ("DEEPEXEC_MAX_RETRIES", "three"),
    ("DEEPEXEC_RETRY_DELAY", "-0.5"),
    ("DEEPEXEC_RETRY_DELAY", "soon"),
    ("DEEPEXEC_VERIFY_SSL", "maybe"),
    ("DEEPEXEC_ENDPOINT", "ftp://example.com"),
    ("DEEPEXEC_ENDPOINT", "localhost:8787"),
    ("DEEPEXEC_ENDPOINT", "http://"),
    ("DEEPEXEC_ENDPOINT", "https://example.com/v1?x=1"),
    ("DEEPEXEC_ENDPOINT", "http://example.com:99999"),
    ("DEEPEXEC_LOG", "verbose"),
]


@pytest.mark.parametrize(("var", "text"), ENV_INVALID)
def test_invalid_environment_value_names_the_variable(var: str, text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_config(env={var: text})
    assert info.value.source == f"environment variable {var}"
    assert f"environment variable {var}" in str(info.value)
    assert isinstance(info.value, ValueError)


CTOR_INVALID: list[tuple[str, Any]] = [
    ("timeout", -1),
    ("timeout", 0),
    ("timeout", "30"),
    ("timeout", True),
    ("max_retries", -1),
    ("max_retries", 2.0),
    ("max_retries", False),
    ("retry_delay", -0.1),
    ("retry_delay", float("inf")),
    ("endpoint", "example.com"),
    ("endpoint", "ws://example.com"),
    ("endpoint", 42),
    ("verify_ssl", "yes"),
    ("headers", {"Bad Name": "x"}),
    ("headers", {"X-Ok": 1}),
    ("headers", ["X-Ok", "1"]),
    ("log_level", "trace"),
    ("deepseek_key", ""),
]


@pytest.mark.parametrize(("field", "value"), CTOR_INVALID)
def test_invalid_constructor_argument_names_the_argument(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_config(**{field: value}, env={})
    assert info.value.source == f"constructor argument {field}"
    assert f"constructor argument {field}" in str(info.value)


FILE_INVALID = [
    ("timeout", '"abc"'),
    ("timeout", "-3"),
    ("max_retries", "-1"),
    ("max_retries", "2.5"),
    ("retry_delay", "true"),
    ("verify_ssl", '"maybe"'),
    ("endpoint", '"not a url"'),
    ("log_level", '"loud"'),
    ("headers", '"X-Team: a"'),
]


@pytest.mark.parametrize(("key", "toml"), FILE_INVALID)
def test_invalid_file_value_names_file_and_key(tmp_path: Path, key: str, toml: str) -> None:
    cfg = write_toml(tmp_path / "bad.toml", f"{key} = {toml}\n")
    with pytest.raises(ConfigurationError) as info:
        resolve_config(env={"DEEPEXEC_CONFIG": str(cfg)})
    assert info.value.source == f"config file {cfg} key {key}"
    assert f"config file {cfg} key {key}" in str(info.value)


def test_unknown_key_in_file_is_rejected_with_suggestion(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", "timout = 3\n")
    with pytest.raises(ConfigurationError) as info:
        resolve_config(env={"DEEPEXEC_CONFIG": str(cfg)})
    assert info.value.source == f"config file {cfg} key timout"
    assert "unknown key 'timout'" in str(info.value)
    assert "did you mean 'timeout'" in str(info.value)


def test_deepexec_table_is_rejected_with_hint(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", "[deepexec]\ntimeout = 3\n")
    with pytest.raises(ConfigurationError, match="top level") as info:
        resolve_config(env={"DEEPEXEC_CONFIG": str(cfg)})
    assert info.value.source == f"config file {cfg} key deepexec"


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigurationError) as info:
        resolve_config(env={"DEEPEXEC_CONFIG": str(missing)})
    assert info.value.source == f"config file {missing}"
    assert "DEEPEXEC_CONFIG" in str(info.value)


def test_missing_default_config_file_is_ignored(no_user_config: Path) -> None:
    assert not no_user_config.exists()
    assert resolve_config(env={}) == ClientConfig()


def test_directory_as_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        resolve_config(env={"DEEPEXEC_CONFIG": str(tmp_path)})


@pytest.mark.parametrize("explicit", [True, False])
def test_invalid_toml_is_an_error(tmp_path: Path, no_user_config: Path, explicit: bool) -> None:
    path = tmp_path / "c.toml" if explicit else no_user_config
    write_toml(path, f'deepseek_key = "{DS_KEY}\n')  # unterminated string
    env = {"DEEPEXEC_CONFIG": str(path)} if explicit else {}
    with pytest.raises(ConfigurationError, match="not valid TOML") as info:
        resolve_config(env=env)
    assert info.value.source == f"config file {path}"
    assert_no_secret(str(info.value))


def test_overridden_invalid_source_is_still_reported() -> None:
    # Documented: every present source is validated, even when overridden.
    with pytest.raises(ConfigurationError) as info:
        resolve_config(timeout=5, env={"DEEPEXEC_TIMEOUT": "abc"})
    assert info.value.source == "environment variable DEEPEXEC_TIMEOUT"


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigurationError) as info:
        ClientConfig(timeout=-1)
    assert info.value.source == "ClientConfig field timeout"


def test_constructor_signature_of_error() -> None:
    err = ConfigurationError("bad thing", source="somewhere")
    assert str(err) == "bad thing" and err.source == "somewhere" and err.message == "bad thing"
    with pytest.raises(TypeError):
        ConfigurationError("bad thing", "somewhere")  # type: ignore[call-arg]


# --------------------------------------------------------------------------- secrets


def test_secrets_absent_from_repr_and_str() -> None:
    config = resolve_config(
        deepseek_key=DS_KEY,
        e2b_key=E2B_KEY,
        api_key=API_KEY,
        headers={"Authorization": f"Bearer {API_KEY}", "X-Team": "research"},
        env={},
    )
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert_no_secret(text)
        assert "X-Team" in text and "research" in text  # non-secrets still shown
    assert config.deepseek_key == DS_KEY  # but the value is there
    shown = config.redacted()
    assert shown["deepseek_key"] == "sk-...CRET"
    assert shown["e2b_key"] == "e2b_...CRET"
    assert shown["api_key"] == "...CRET"
    assert shown["headers"] == {"Authorization": "Bearer ...CRET", "X-Team": "research"}
    assert_no_secret(repr(shown))


@pytest.mark.parametrize("field", ["deepseek_key", "e2b_key", "api_key"])
def test_invalid_secret_error_never_shows_the_value(field: str, tmp_path: Path) -> None:
    bad = "sk-abc def-0123456789SECRET"  # contains a space
    var = _config.ENV_VARS[field]
    cfg = write_toml(tmp_path / "c.toml", f'{field} = "{bad}"\n')
    attempts: list[dict[str, Any]] = [
        {field: bad, "env": {}},
        {"env": {var: bad}},
        {"env": {"DEEPEXEC_CONFIG": str(cfg)}},
    ]
    for kwargs in attempts:
        with pytest.raises(ConfigurationError) as info:
            resolve_config(**kwargs)
        assert field in info.value.source or var in info.value.source
        assert "abc" not in str(info.value) and "SECRET" not in str(info.value)


def test_header_with_newline_error_never_shows_the_value() -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_config(headers={"X-Secret-Thing": f"{DS_KEY}\r\nInjected: 1"}, env={})
    assert "X-Secret-Thing" in str(info.value)
    assert_no_secret(str(info.value))


def test_endpoint_with_credentials_rejected_without_echo() -> None:
    with pytest.raises(ConfigurationError, match="credentials") as info:
        resolve_config(env={"DEEPEXEC_ENDPOINT": "https://user:hunter2secret@api.example.com"})
    assert "hunter2secret" not in str(info.value)


def test_world_readable_file_with_secret_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = write_toml(tmp_path / "c.toml", f'deepseek_key = "{DS_KEY}"\n', mode=0o644)
    with caplog.at_level(logging.WARNING, logger="deepexec"):
        assert resolve_config(env={"DEEPEXEC_CONFIG": str(cfg)}).deepseek_key == DS_KEY
    assert "chmod 600" in caplog.text
    assert_no_secret(caplog.text)
    caplog.clear()
    cfg.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="deepexec"):
        resolve_config(env={"DEEPEXEC_CONFIG": str(cfg)})
    assert "chmod" not in caplog.text


def test_config_is_frozen_and_headers_read_only() -> None:
    config = ClientConfig(headers={"X-A": "1"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.headers["X-B"] = "2"  # type: ignore[index]
    assert hash(config) == hash(ClientConfig(headers={"X-A": "other"}))  # hashable
    assert config != ClientConfig(headers={"X-A": "other"})


# --------------------------------------------------------------------------- redact helpers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "<not set>"),
        ("", "***"),
        ("short", "***"),
        ("elevenchars", "***"),
        ("sk-0123456789abcd", "sk-...abcd"),
        ("e2b_0123456789abcd", "e2b_...abcd"),
        ("plain-token-0123456789wxyz", "...wxyz"),
    ],
)
def test_redact(value: str | None, expected: str) -> None:
    assert redact(value) == expected


@given(st.text(min_size=5))
def test_redact_never_reveals_more_than_last_four_chars(secret: str) -> None:
    shown = redact(secret)
    assert secret not in shown
    assert len(shown.replace("sk-", "").replace("e2b_", "").replace("...", "")) <= 4


def test_redact_headers() -> None:
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "X-DeepSeek-Key": DS_KEY,
        "x-e2b-key": E2B_KEY,
        "Cookie": "session=0123456789abcdefSECRET",
        "X-Custom-Token": "0123456789abcdefSECRET",
        "X-Client-Secret": "0123456789abcdefSECRET",
        "Idempotency-Key": "b6b1a1a0-6f4e-4c53-9d57-1e7f0f1c2a3b",
        "X-Request-ID": "req-123",
        "Content-Type": "application/json",
    }
    out = redact_headers(headers)
    assert_no_secret(repr(out))
    assert "SECRET" not in repr(out)
    assert out["Authorization"] == "Bearer ...CRET"
    assert out["X-DeepSeek-Key"] == "sk-...CRET"
    assert out["Idempotency-Key"] == headers["Idempotency-Key"]  # not a credential
    assert out["X-Request-ID"] == "req-123"
    assert out["Content-Type"] == "application/json"
    assert headers["X-DeepSeek-Key"] == DS_KEY  # input untouched


def test_redact_headers_accepts_multidict() -> None:
    headers = CIMultiDict([("authorization", f"Bearer {API_KEY}"), ("Accept", "text/plain")])
    out = redact_headers(headers)
    assert out == {"authorization": "Bearer ...CRET", "Accept": "text/plain"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {DS_KEY} end", f"key {redact(DS_KEY)} end"),  # whole: as redact shows it
        (f"b'{API_KEY[:12]}'", "b'***'"),  # a quoted prefix
        (f"<{API_KEY[5:20]}>", "<***>"),  # a piece from the middle
        (f"a{E2B_KEY[3:11]}z and {DS_KEY[:7]}", f"a***z and {DS_KEY[:7]}"),  # 8 chars, not 7
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_mask_secrets_masks_a_secret_and_any_run_of_eight_of_its_characters(
    text: str, expected: str
) -> None:
    assert mask_secrets(text, SECRETS) == expected
    assert mask_secrets(expected, SECRETS) == expected  # nothing left to mask


def test_header_secrets_are_the_values_of_sensitive_headers() -> None:
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "X-Team-Token": "t0k3n-value",
        "Idempotency-Key": "not-a-secret",
        "User-Agent": "app/1",
    }
    assert header_secrets(headers) == [API_KEY, "t0k3n-value"]
