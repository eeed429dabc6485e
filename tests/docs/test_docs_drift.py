"""The hand-written facts of the documentation still match the code: the exception tree, the
client's settings, the server's settings, the sandbox limits, the documentation pins."""

from __future__ import annotations

import re
import tomllib

import attrs
import click
import pytest

import deepexec_sdk
import deepexec_sdk.exceptions as exceptions
from deepexec_sdk._config import ENV_VARS
from deepexec_server.cli import serve_command
from deepexec_server.sandbox.settings import DEFAULT_LIMITS, MAX_LIMITS
from deepexec_server.settings import ENV_PREFIX, ServerSettings
from tests.docs.doc_examples import DOCS, ROOT

ERRORS_PAGE = DOCS / "concepts" / "errors.md"
SERVER_PAGE = DOCS / "guides" / "server.md"
SECURITY_PAGE = DOCS / "concepts" / "security.md"
CONFIG_PAGES = [DOCS / "guides" / "configuration.md", DOCS / "reference" / "configuration.md"]


def _tree_block(text: str) -> list[str]:
    """The lines of the first ```text block that starts with MCPError."""
    for block in re.findall(r"```text\n(.*?)```", text, re.S):
        if block.startswith("MCPError"):
            return block.splitlines()
    raise AssertionError("no exception tree in the page")


def test_the_exception_tree_matches_the_classes() -> None:
    members = [getattr(exceptions, n) for n in exceptions.__all__]
    public = {c for c in members if isinstance(c, type) and issubclass(c, exceptions.MCPError)}
    documented: dict[str, str | None] = {}
    stack: list[str] = []
    for line in _tree_block(ERRORS_PAGE.read_text()):
        match = re.match(r"^((?:│   |    )*)(?:├── |└── )?(MCP\w+)", line)
        assert match, line
        depth = len(match.group(1)) // 4 + (0 if line.startswith("MCP") else 1)
        name = match.group(2)
        del stack[depth:]
        documented[name] = stack[-1] if stack else None
        stack.append(name)
    actual = {
        cls.__name__: (None if cls is exceptions.MCPError else cls.__mro__[1].__name__)
        for cls in public
    }
    assert documented == actual


def test_the_client_settings_tables_list_every_variable_and_default() -> None:
    defaults = {f.name: f.default for f in attrs.fields(deepexec_sdk.ClientConfig)}
    for page in CONFIG_PAGES:
        text = page.read_text()
        for field, variable in ENV_VARS.items():
            row = next((r for r in text.splitlines() if f"`{variable}`" in r), None)
            assert row is not None, f"{page.name}: {variable}"
            default = defaults[field]
            if isinstance(default, bool):
                assert f"`{str(default).lower()}`" in row, row
            elif isinstance(default, int | float | str):
                assert f"`{default}`" in row, row
        assert "DEEPEXEC_CONFIG" in text


def _server_rows() -> dict[str, str]:
    rows = {}
    for row in SERVER_PAGE.read_text().splitlines():
        match = re.search(rf"`({ENV_PREFIX}\w+)`", row)
        if match and row.startswith("|"):
            rows[match.group(1)] = row
    return rows


def test_the_server_settings_table_covers_every_setting_and_option() -> None:
    rows = _server_rows()
    defaults = ServerSettings()
    for field in attrs.fields(ServerSettings):
        variable = ENV_PREFIX + field.name.upper()
        assert variable in rows, variable
        value = getattr(defaults, field.name)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and field.name not in ("concurrency", "max_body_bytes")
        ):
            assert re.search(rf"\b{int(value)}\b", rows[variable]), rows[variable]
    text = SERVER_PAGE.read_text()
    for param in serve_command.params:
        if isinstance(param, click.Option):
            assert f"`{param.opts[0]}" in text, param.opts[0]


def _format(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:g} s"
    for size, name in ((2**30, "GiB"), (2**20, "MiB")):
        if value >= size and value % size == 0:
            return f"{value // size:g} {name}"
    return f"{value:g}"


@pytest.mark.parametrize("page", [SERVER_PAGE, SECURITY_PAGE], ids=lambda p: p.name)
def test_the_sandbox_limits_tables_match_the_defaults_and_maxima(page: object) -> None:
    text = page.read_text()  # type: ignore[attr-defined]
    for field in attrs.fields(type(DEFAULT_LIMITS)):
        row = next(r for r in text.splitlines() if r.startswith(f"| `{field.name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        unit = "s" if field.name in ("timeout", "cpu_time") else "bytes"
        if field.name in ("max_processes", "max_open_files"):
            unit = "count"
        assert cells[1] == _format(getattr(DEFAULT_LIMITS, field.name), unit), row
        assert cells[2] == _format(getattr(MAX_LIMITS, field.name), unit), row


def test_the_documentation_pins_match_the_dev_extra() -> None:
    def pins(lines: list[str]) -> dict[str, str]:
        out = {}
        for line in lines:
            match = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
            if match:
                out[match.group(1).lower()] = match.group(2)
        return out

    docs = pins((DOCS / "requirements-docs.txt").read_text().splitlines())
    assert set(docs) == {"sphinx", "furo", "myst-parser"}
    dev = pins(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
            "dev"
        ]
    )
    assert {name: dev.get(name) for name in docs} == docs


def test_code_blocks_fit_the_page() -> None:
    """Code and diagrams wider than 88 columns scroll sideways on the site."""
    from markdown_it import MarkdownIt

    from tests.docs.doc_examples import doc_files

    too_wide = []
    for page in doc_files():
        for token in MarkdownIt("commonmark").parse(page.read_text()):
            if token.type != "fence" or token.info.startswith("{"):
                continue  # directives ({eval-rst}, {toctree}) are not shown as code
            for offset, line in enumerate(token.content.splitlines()):
                if len(line) > 88:
                    assert token.map is not None
                    too_wide.append(f"{page.relative_to(ROOT)}:{token.map[0] + 2 + offset}")
    assert not too_wide, too_wide
