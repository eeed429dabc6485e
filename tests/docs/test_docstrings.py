"""Every public method of the SDK documents its parameters, its return value and the errors
it raises, as the API reference renders it.

The blocking client, the sessions and the sync stream views point at the method they wrap
("See :meth:`DeepExecAsyncClient.submit_job`"); the documentation build completes such
docstrings with the sections of the method pointed at (docs/_ext/deepexec_docs.py), and this
test checks the completed docstrings, with the same function.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import deepexec_sdk
from tests.docs.doc_examples import DOCS

sys.path.insert(0, str(DOCS / "_ext"))
from deepexec_docs import complete_docstring, split_sections  # noqa: E402

PUBLIC_CLASSES = [
    deepexec_sdk.DeepExecAsyncClient,
    deepexec_sdk.DeepExecClient,
    deepexec_sdk.AsyncSession,
    deepexec_sdk.Session,
    deepexec_sdk.TextStream,
    deepexec_sdk.ExecutionStream,
    deepexec_sdk.SyncTextStream,
    deepexec_sdk.SyncExecutionStream,
    deepexec_sdk.ClientConfig,
]
#: Methods that can not fail (they release local resources or format values).
CANNOT_FAIL = {
    ("DeepExecAsyncClient", "close"),
    ("DeepExecClient", "close"),
    ("TextStream", "aclose"),
    ("SyncTextStream", "close"),
    ("ClientConfig", "redacted"),
}


def _methods() -> Iterator[tuple[type, str, Callable[..., Any]]]:
    for cls in PUBLIC_CLASSES:
        for name, member in vars(cls).items():
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            yield cls, name, member


METHODS = list(_methods())


def _sections(obj: Any) -> tuple[list[str], dict[str, list[str]]]:
    doc = inspect.getdoc(obj) or ""
    return split_sections(complete_docstring(doc.splitlines()))


def _documented_args(section: list[str]) -> set[str]:
    names = set()
    for line in section[1:]:
        match = re.match(r"^    \*{0,2}([A-Za-z_][A-Za-z0-9_]*)\s*(\(.*\))?:", line)
        if match:
            names.add(match.group(1))
    return names


def _parameters(function: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def test_the_methods_are_found() -> None:
    names = {f"{cls.__name__}.{name}" for cls, name, _ in METHODS}
    assert "DeepExecAsyncClient.execute_code_and_wait" in names
    assert "DeepExecClient.submit_job" in names
    assert len(names) > 40


@pytest.mark.parametrize(
    ("cls", "name", "method"), METHODS, ids=[f"{c.__name__}.{n}" for c, n, _ in METHODS]
)
def test_public_method_documents_parameters_return_and_errors(
    cls: type, name: str, method: Callable[..., Any]
) -> None:
    lead, sections = _sections(method)
    assert "".join(lead).strip(), "no description"
    parameters = _parameters(method)
    if parameters:
        assert "Args" in sections, f"no Args section for {parameters}"
        missing = set(parameters) - _documented_args(sections["Args"])
        assert not missing, f"undocumented parameters: {sorted(missing)}"
    returns = inspect.signature(method).return_annotation
    if returns not in (None, "None", inspect.Signature.empty):
        assert "Returns" in sections or "Yields" in sections, "no Returns section"
    if (cls.__name__, name) not in CANNOT_FAIL:
        assert "Raises" in sections, "no Raises section"


@pytest.mark.parametrize("cls", [deepexec_sdk.DeepExecAsyncClient, deepexec_sdk.DeepExecClient])
def test_client_constructors_document_every_argument(cls: type) -> None:
    _, sections = split_sections((inspect.getdoc(cls) or "").splitlines())
    assert set(_parameters(cls.__init__)) <= _documented_args(sections["Args"])
    assert "Raises" in sections


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_public_properties_are_documented(cls: type) -> None:
    for name, member in vars(cls).items():
        if isinstance(member, property) and not name.startswith("_"):
            assert (inspect.getdoc(member) or "").strip(), f"{cls.__name__}.{name}"
