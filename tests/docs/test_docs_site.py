"""The documentation site builds without a warning, its internal links resolve, and a reader
finds every public name of the spec README in its API reference.

The site is built once for this module, as ``make docs`` builds it (``-E -W --keep-going``),
into a temporary directory; the checks read its ``objects.inv`` (the inventory of every
documented Python object) and its HTML.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

from tests.docs.doc_examples import DOCS, README, ROOT, doc_files, extract_blocks

pytestmark = pytest.mark.timeout(300)


def _sphinx(
    builder: str, out: Path, doctrees: Path, *fresh: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            *fresh,
            "-W",
            "--keep-going",
            "-b",
            builder,
            "-d",
            str(doctrees),
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built fresh with warnings as errors."""
    base = tmp_path_factory.mktemp("docs-site")
    done = _sphinx("html", base / "html", base / "doctrees", "-E")
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stdout[-3000:]}\n{done.stderr}"
    assert "WARNING" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    return base


@pytest.fixture(scope="module")
def inventory(site: Path) -> set[str]:
    """Every documented Python object's full name."""
    data = (site / "html" / "objects.inv").read_bytes()
    inv = InventoryFile.loads(data, uri="")
    names: set[str] = set()
    data_by_role = inv.data if hasattr(inv, "data") else inv  # Sphinx >= 8.2: an _Inventory
    for role, entries in data_by_role.items():
        if role.startswith("py:"):
            names.update(entries)
    return names


def _has(inventory: set[str], dotted: str) -> bool:
    """Whether some documented object's name ends with ``dotted`` (``Class.attr``)."""
    return any(name == dotted or name.endswith("." + dotted) for name in inventory)


def test_the_site_builds_without_warnings(site: Path) -> None:
    for page in doc_files():
        html = site / "html" / page.relative_to(DOCS).with_suffix(".html")
        assert html.is_file(), f"{page} was not built"


def test_internal_links_resolve(site: Path) -> None:
    """``make docs-linkcheck``: the linkcheck builder (external links ignored)."""
    done = _sphinx("linkcheck", site / "linkcheck", site / "doctrees")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr}"
    assert "broken" not in (site / "linkcheck" / "output.txt").read_text()


# The public names of the spec README (the user's contract), where a reader looks them up.
SPEC_CLIENT_METHODS = [
    "execute_code_and_wait",
    "generate_text_and_wait",
    "submit_job",
    "get_job_status",
    "cancel_job",
    "execute_code_job",
    "get_code_execution_result",
    "generate_text_job",
    "get_text_generation_result",
]
SPEC_NAMES = [
    "deepexec_sdk.DeepExecAsyncClient",
    "deepexec_sdk.DeepExecClient",
    *(
        f"deepexec_sdk.{cls}.{m}"
        for cls in ("DeepExecAsyncClient", "DeepExecClient")
        for m in SPEC_CLIENT_METHODS
    ),
    "deepexec_sdk.exceptions.MCPError",
    "deepexec_sdk.exceptions.MCPExecutionError",
    "deepexec_sdk.exceptions.MCPExecutionError.exit_code",
    "deepexec_sdk.exceptions.MCPExecutionError.output",
    "deepexec_sdk.exceptions.MCPTimeoutError",
    "deepexec_sdk.exceptions.MCPTimeoutError.timeout",
    "deepexec_sdk.exceptions.MCPConnectionError",
    "deepexec_sdk.exceptions.MCPAuthError",
    "deepexec_sdk.exceptions.MCPProtocolError",
    "CodeExecutionResult.output",
    "CodeExecutionResult.exit_code",
    "CodeExecutionResult.execution_time",
    "CodeExecutionResult.memory_usage",
    "TextGenerationResult.text",
    "TextGenerationResult.model",
    "TextGenerationResult.generation_time",
    "TextGenerationResult.usage",
    "JobSubmitted.job_id",
    "JobStatus.status",
    "JobStatus.progress",
    "JobStatus.result",
    "JobStatus.error",
    "JobCanceled.canceled_at",
    *(
        f"deepexec_sdk.ClientConfig.{field}"
        for field in (
            "endpoint",
            "timeout",
            "max_retries",
            "retry_delay",
            "deepseek_key",
            "e2b_key",
            "verify_ssl",
        )
    ),
]


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_names_are_in_the_reference(inventory: set[str], name: str) -> None:
    assert _has(inventory, name), f"{name} is not documented in the API reference"


def _readme_calls() -> set[str]:
    """The methods the README's examples call on a client or a session."""
    calls: set[str] = set()
    for block in extract_blocks(README):
        for node in ast.walk(ast.parse(block.source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("client", "session")
            ):
                calls.add(node.func.attr)
    return calls


def test_every_method_the_readme_calls_is_documented(inventory: set[str]) -> None:
    calls = _readme_calls()
    assert set(SPEC_CLIENT_METHODS) - {"cancel_job"} <= calls  # (cancel_job: in a comment)
    for method in sorted(calls):
        for cls in ("DeepExecAsyncClient", "DeepExecClient"):
            assert _has(inventory, f"deepexec_sdk.{cls}.{method}"), f"{cls}.{method}"


def test_every_public_sdk_name_is_documented(inventory: set[str]) -> None:
    import deepexec_sdk
    import deepexec_sdk.exceptions

    for name in deepexec_sdk.exceptions.__all__:
        assert _has(inventory, f"deepexec_sdk.exceptions.{name}"), name
    for name in deepexec_sdk.__all__:
        if name in ("__version__", "exceptions", "PROTOCOL_VERSION"):
            continue
        assert _has(inventory, name), name
    assert _has(inventory, "deepexec_protocol.PROTOCOL_VERSION")


def test_constructor_arguments_and_environment_variables_are_documented(site: Path) -> None:
    clients = (site / "html" / "reference" / "clients.html").read_text()
    for argument in (
        "endpoint",
        "timeout",
        "max_retries",
        "retry_delay",
        "deepseek_key",
        "e2b_key",
        "verify_ssl",
        "api_key",
        "headers",
    ):
        assert re.search(rf"\b{argument}\b", clients), argument
    configuration = (site / "html" / "guides" / "configuration.html").read_text()
    for variable in (
        "DEEPEXEC_ENDPOINT",
        "DEEPEXEC_TIMEOUT",
        "DEEPEXEC_MAX_RETRIES",
        "DEEPEXEC_RETRY_DELAY",
        "DEEPEXEC_DEEPSEEK_KEY",
        "DEEPEXEC_E2B_KEY",
        "DEEPEXEC_VERIFY_SSL",
        "DEEPEXEC_API_KEY",
        "DEEPEXEC_CONFIG",
        "DEEPEXEC_LOG",
    ):
        assert variable in configuration, variable


def test_the_pages_the_readme_links_exist() -> None:
    readme = README.read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
    protocol = (ROOT / "PROTOCOL.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)", protocol):
        assert (ROOT / link).is_file(), link
