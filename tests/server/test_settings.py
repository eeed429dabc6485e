"""Server settings: flags > DEEPEXEC_SERVER_* > defaults, clear errors, token files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deepexec_server.settings import ServerSettings, SettingsError, load_settings


def test_flags_win_over_the_environment_which_wins_over_defaults() -> None:
    env = {"DEEPEXEC_SERVER_PORT": "9000", "DEEPEXEC_SERVER_MAX_RUNNING_PER_TOKEN": "5"}
    assert load_settings({}, env).port == 9000
    assert load_settings({"port": 9100}, env).port == 9100
    assert load_settings({}, env).max_running_per_token == 5
    assert load_settings({}, {}).max_running_per_token == ServerSettings().max_running_per_token


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEEPEXEC_SERVER_PORT": "abc"}, "DEEPEXEC_SERVER_PORT: invalid value 'abc'"),
        ({"DEEPEXEC_SERVER_MAX_RUNNING_PER_TOKEN": "-1"}, "max_running_per_token must not"),
        ({"DEEPEXEC_SERVER_TOKENS_FILE": "/nonexistent/tokens"}, "cannot read it"),
    ],
)
def test_bad_values_name_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({}, env)


def test_a_tokens_file_adds_its_tokens_and_never_shows_them(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# team tokens\nsecret-one\n\n  secret-two  \n")
    settings = load_settings(
        {}, {"DEEPEXEC_SERVER_TOKENS": "secret-env"} | {"DEEPEXEC_SERVER_TOKENS_FILE": str(path)}
    )
    assert settings.tokens == {"secret-one", "secret-two", "secret-env"}
    assert "secret" not in repr(settings)
    assert load_settings({"tokens_file": path}, {}).tokens == {"secret-one", "secret-two"}
    path.write_text("# only a comment\n")
    with pytest.raises(SettingsError, match="holds no token") as err:
        load_settings({"tokens_file": path}, {})
    assert "secret" not in str(err.value)
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_settings({"tokens_file": path}, {})


def test_the_cli_reads_a_tokens_file_and_refuses_a_missing_one(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    r = subprocess.run(
        [sys.executable, "-m", "deepexec_server", "serve", "--tokens-file", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert r.returncode == 2 and "cannot read it" in r.stderr
