"""The documentation example runner (tests/docs/doc_examples.py) fails what it must fail.

These examples need no server: they fail, or are refused, before any request (the endpoint
is a port nothing listens on).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs.doc_examples import DocExampleError, extract_blocks, run_blocks

NOWHERE = "http://127.0.0.1:1"


def _page(tmp_path: Path, body: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(f"# A page\n\nSome text.\n\n{body}\n", encoding="utf-8")
    return page


def _run(tmp_path: Path, body: str, *, shared: bool = False) -> None:
    run_blocks(extract_blocks(_page(tmp_path, body)), NOWHERE, tmp_path, shared=shared)


def test_an_exception_the_example_swallows_fails_it(tmp_path: Path) -> None:
    body = '```python\ntry:\n    {}["missing"]\nexcept Exception as error:\n    print(error)\n```'
    with pytest.raises(DocExampleError, match=r"page.md:\d+: KeyError"):
        _run(tmp_path, body)


def test_a_declared_exception_passes_and_is_located(tmp_path: Path) -> None:
    body = (
        "<!-- doc-test: expect MCPValidationError -->\n"
        "```python\n"
        "from deepexec_sdk import DeepExecClient\n"
        "from deepexec_sdk.exceptions import MCPValidationError\n\n"
        "with DeepExecClient() as client:\n"
        "    try:\n"
        "        client.execute_code_and_wait('print(1)', 'Py thon')\n"
        "    except MCPValidationError as error:\n"
        "        print(error.path)\n"
        "```"
    )
    _run(tmp_path, body)
    [block] = extract_blocks(_page(tmp_path, body))
    assert block.expected == ("MCPValidationError",)
    assert block.line == 7  # the line of `from deepexec_sdk import DeepExecClient`


def test_a_declared_exception_that_never_happens_fails(tmp_path: Path) -> None:
    body = "<!-- doc-test: expect MCPTimeoutError -->\n```python\nprint('fine')\n```"
    with pytest.raises(DocExampleError, match="never raised"):
        _run(tmp_path, body)


def test_an_async_function_the_example_only_defines_is_run(tmp_path: Path) -> None:
    body = "```python\nasync def example():\n    raise RuntimeError('ran')\n```"
    with pytest.raises(DocExampleError, match="RuntimeError: ran"):
        _run(tmp_path, body)


def test_an_uncalled_function_with_parameters_fails(tmp_path: Path) -> None:
    body = "```python\nasync def example(client):\n    pass\n```"
    with pytest.raises(DocExampleError, match="needs arguments"):
        _run(tmp_path, body)


def test_top_level_await_and_a_shared_namespace(tmp_path: Path) -> None:
    body = (
        "```python\nimport asyncio\nawait asyncio.sleep(0)\nvalue = 41\n```\n\n"
        "```python\nassert value + 1 == 42\n```"
    )
    _run(tmp_path, body, shared=True)
    with pytest.raises(DocExampleError, match="NameError"):
        _run(tmp_path, body, shared=False)


def test_the_environment_is_restored(tmp_path: Path) -> None:
    before = dict(os.environ)
    _run(tmp_path, "```python\nimport os\nos.environ['DEEPEXEC_TIMEOUT'] = 'soon'\n```")
    assert dict(os.environ) == before


def test_a_misplaced_marker_is_an_error(tmp_path: Path) -> None:
    body = "<!-- doc-test: expect MCPTimeoutError -->\n\nA paragraph.\n\n```python\npass\n```"
    with pytest.raises(ValueError, match="right before"):
        extract_blocks(_page(tmp_path, body))
    with pytest.raises(ValueError, match="unknown exception"):
        extract_blocks(_page(tmp_path, "<!-- doc-test: expect Nope -->\n```python\npass\n```"))
