"""Sphinx extension of the DeepExec documentation: docstring fix-ups done at build time.

Nothing here changes the code; it only changes how docstrings are rendered.

* **Delegating docstrings are completed.** The blocking client, the sessions and the
  sync stream views document themselves by pointing at the method they wrap ("See
  :meth:`DeepExecAsyncClient.submit_job`", ":meth:`DeepExecClient.execute_code_and_wait`
  inside this session"). :func:`complete_docstring` appends the sections (``Args:``,
  ``Returns:``, ``Raises:``...) of the method pointed at that the docstring does not have
  itself, so every method's page lists its parameters, return value and errors.
  ``tests/docs/test_docstrings.py`` checks the result with the same function.
* **Generated docstrings are made reStructuredText-safe.** The generated models' docstrings
  come from the schema's descriptions, which are plain text: a quoted ``'job_'`` would be
  read as a hyperlink reference. Such words are rendered as literals.
* **PROTOCOL.md's links to repository folders become plain text** when it is included in
  the site (``reference/protocol.md``): a folder has no page here. A bare request line
  in an ``http`` block (no ``HTTP/1.1``) is shown as text, which the highlighter accepts.
* **The ``type`` discriminator attributes are not indexed.** Every message model has a
  ``type`` attribute; indexed, they would make the name ``type`` (as in ``type[MCPError]``)
  an ambiguous cross-reference target.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

#: Sections napoleon understands, as they start a line of a Google-style docstring.
SECTION_RE = re.compile(
    r"^(Args|Arguments|Parameters|Keyword Args|Returns|Return|Yields|Raises|Attributes|"
    r"Example|Examples|Note|Notes|Warning|See Also):\s*$"
)
_DELEGATE_RE = re.compile(
    r"^(?:See )?:meth:`~?(?P<cls>[A-Za-z_][A-Za-z0-9_]*)\.(?P<meth>[a-z_][a-z0-9_]*)`"
    r"(?P<rest>.*)"
)
#: Classes the delegating docstrings name, by their short name.
_CLASSES = {
    "DeepExecAsyncClient": "deepexec_sdk:DeepExecAsyncClient",
    "DeepExecClient": "deepexec_sdk:DeepExecClient",
    "AsyncSession": "deepexec_sdk:AsyncSession",
    "Session": "deepexec_sdk:Session",
    "TextStream": "deepexec_sdk:TextStream",
    "ExecutionStream": "deepexec_sdk:ExecutionStream",
}
_TRAILING_UNDERSCORE_RE = re.compile(r"'([A-Za-z][A-Za-z0-9]*_)'")


def _resolve(class_name: str, method: str) -> Any:
    target = _CLASSES.get(class_name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return getattr(cls, method, None)


def split_sections(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split a docstring (as lines, dedented) into its lead text and its sections.

    Returns the lines before the first section, and ``{section name: its lines}`` where
    each section's lines include its header.
    """
    lead: list[str] = []
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        match = SECTION_RE.match(line)
        if match is not None:
            name = _canonical(match.group(1))
            current = sections.setdefault(name, [])
            current.append(line)
        elif current is not None:
            current.append(line)
        else:
            lead.append(line)
    return lead, sections


def _canonical(section: str) -> str:
    return {"Arguments": "Args", "Parameters": "Args", "Return": "Returns"}.get(
        section, section
    )


def _drop_arg(section: list[str], name: str) -> list[str]:
    """Remove the entry of argument ``name`` (and its continuation lines) from an Args
    section."""
    out: list[str] = []
    skipping = False
    entry_re = re.compile(r"^    (\*{0,2}[A-Za-z_][A-Za-z0-9_]*)\s*(\(.*\))?:")
    for line in section:
        match = entry_re.match(line)
        if match is not None:
            skipping = match.group(1) == name
        elif not line.startswith("     ") and line.strip():
            skipping = False
        if not skipping:
            out.append(line)
    return out


def complete_docstring(
    lines: list[str], _seen: frozenset[str] = frozenset()
) -> list[str]:
    """The docstring ``lines`` with the sections it lacks copied from the method its
    first line delegates to (see the module docstring); other docstrings unchanged."""
    if not lines:
        return lines
    match = _DELEGATE_RE.match(lines[0].strip())
    if match is None:
        return lines
    key = f"{match['cls']}.{match['meth']}"
    target = _resolve(match["cls"], match["meth"])
    if target is None or key in _seen:
        return lines
    target_doc = inspect.getdoc(target) or ""
    target_lines = complete_docstring(target_doc.splitlines(), _seen | {key})
    _, own = split_sections(lines)
    _, theirs = split_sections(target_lines)
    in_session = "inside this session" in match["rest"]
    out = list(lines)
    for name, section in theirs.items():
        if name in own:
            continue
        if name == "Args" and in_session:
            section = _drop_arg(section, "session_id")
        if out and out[-1].strip():
            out.append("")
        out.extend(section)
    return out


def _process_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Before napoleon: complete delegating docstrings, escape generated text."""
    if name.startswith(("deepexec_sdk.", "deepexec_protocol.")) and what in (
        "method",
        "function",
        "property",
    ):
        lines[:] = complete_docstring(lines)
    if name.startswith("deepexec_protocol."):
        lines[:] = [_TRAILING_UNDERSCORE_RE.sub(r"``'\1'``", line) for line in lines]


def _unindex_discriminators(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """After napoleon: keep the ``type`` attributes of models out of the index."""
    if not name.startswith("deepexec_protocol.models.") or what != "class":
        return
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.strip() == ".. attribute:: type":
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}   :no-index:")
    lines[:] = out


_VERSIONLESS_HTTP_RE = re.compile(
    r"```http\n((?:GET|POST|PUT|PATCH|DELETE) [^ \n]+\n)```"
)
_FOLDER_LINK_RE = re.compile(r"\[([^\]]+)\]\((?!https?:|#)[^)]*/\)")


def _include_read(
    app: Any, relative_path: Any, parent_docname: str, content: list[str]
) -> None:
    """PROTOCOL.md, included: links to folders of the repository become their text, and
    a request line without an HTTP version (which the ``http`` highlighter rejects) is
    shown as plain text."""
    if str(relative_path).endswith("PROTOCOL.md"):
        text = _FOLDER_LINK_RE.sub(r"\1", content[0])
        content[0] = _VERSIONLESS_HTTP_RE.sub(r"```text\n\1```", text)


def setup(app: Any) -> dict[str, Any]:
    app.connect("include-read", _include_read)
    # napoleon converts Google sections at the default priority (500)
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    app.connect("autodoc-process-docstring", _unindex_discriminators, priority=600)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
