"""Running the documentation's Python examples as tests.

Every ```` ```python ```` block of ``docs/**/*.md`` and ``README.md`` is extracted with
markdown-it (the parser MyST uses) and executed against a real reference server:

* **Blocks of docs/ run alone**, each in a fresh namespace, as a reader who copies one would
  run it. **README.md's blocks run in order in one namespace**, because the README (the
  user's contract, written like a notebook) imports once and builds on earlier blocks.
* **Top-level ``await`` works** (blocks are compiled with ``PyCF_ALLOW_TOP_LEVEL_AWAIT`` and
  awaited on the file's event loop), and **a function that a block defines but never calls
  is called** (awaited if it is ``async def``), so an example written as ``async def
  example(): ...`` runs too. Such a function must take no arguments.
* **Swallowed errors still fail.** Examples often end in ``except Exception: print(...)``;
  a renamed method would then only print. So every exception that passes through a frame
  of example code is recorded (with :func:`sys.settrace`, on every thread), whether the
  example catches it or not, and the block fails on any but those it declares. A block
  declares the exceptions it demonstrates with an HTML comment right before it (invisible
  in the rendered page)::

      <!-- doc-test: expect MCPExecutionError, MCPTimeoutError -->

  Each declared exception must then actually happen, or the block fails too (the example
  would not show what the text says). ``StopIteration``, ``StopAsyncIteration`` and
  ``GeneratorExit`` are control flow, not errors.
* The spec README's placeholder endpoint ``https://api.deepexec.com/v1`` is replaced by the
  test server's URL; everything else runs as written, with ``DEEPEXEC_ENDPOINT`` pointing at
  the test server and ``DEEPEXEC_CONFIG=/dev/null``. ``os.environ`` and the working
  directory are restored after each block; clients a block leaves open are closed.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from markdown_it import MarkdownIt

import deepexec_sdk
import deepexec_sdk.exceptions

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PLACEHOLDER_ENDPOINT = "https://api.deepexec.com/v1"
PYTHON_INFOS = frozenset({"python", "py", "python3"})
CONTROL_FLOW = (StopIteration, StopAsyncIteration, GeneratorExit)
_EXPECT_RE = re.compile(r"<!--\s*doc-test:\s*expect\s+([A-Za-z_][\w, ]*?)\s*-->")


class DocExampleError(AssertionError):
    """A documentation example failed: it raised, or an exception passed through it."""


@dataclass(frozen=True)
class Block:
    """One ```python block of a Markdown file."""

    path: Path
    line: int  #: 1-based line of the block's first line of code
    source: str
    expected: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown.as_posix()}:{self.line}"

    @property
    def filename(self) -> str:
        """The pseudo file name its code is compiled under (what tracebacks show)."""
        return f"<doc {self.name}>"


def doc_files() -> list[Path]:
    """The Markdown pages of the site (docs/, without the build output)."""
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)


def extract_blocks(path: Path) -> list[Block]:
    """The ```python blocks of ``path``, with the exceptions each one declares."""
    text = path.read_text(encoding="utf-8")
    tokens = MarkdownIt("commonmark").parse(text)
    blocks: list[Block] = []
    pending: tuple[str, ...] | None = None
    for token in tokens:
        if token.type == "html_block" and (match := _EXPECT_RE.search(token.content)):
            pending = tuple(n.strip() for n in match.group(1).split(",") if n.strip())
            continue
        if pending is not None and token.type != "fence":
            line = (token.map[0] + 1) if token.map else "?"
            raise ValueError(f"{path}:{line}: a doc-test marker must come right before a block")
        if token.type == "fence":
            info = token.info.strip().split()
            if info and info[0] in PYTHON_INFOS:
                assert token.map is not None
                blocks.append(Block(path, token.map[0] + 2, token.content, pending or ()))
            elif pending is not None:
                raise ValueError(f"{path}: a doc-test marker precedes a non-Python block")
            pending = None
    for block in blocks:
        for name in block.expected:
            if not isinstance(getattr(deepexec_sdk.exceptions, name, None), type):
                raise ValueError(f"{block.name}: doc-test expects unknown exception {name}")
    return blocks


# --------------------------------------------------------------------------- tracing


@dataclass
class _Seen:
    exc_type: type[BaseException]
    exc: BaseException | None
    where: str

    def describe(self) -> str:
        return f"{self.where}: {self.exc_type.__name__}: {self.exc}"


@dataclass
class ExceptionRecorder:
    """Records every exception that passes through a frame of the given pseudo files."""

    filenames: set[str] = field(default_factory=set)
    seen: list[_Seen] = field(default_factory=list)

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in self.filenames:
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "exception":
            exc_type, exc, _tb = arg
            if not issubclass(exc_type, CONTROL_FLOW):
                # "<doc docs/x.md:42>", line 3 of the block -> "docs/x.md:44"
                path, first_line = frame.f_code.co_filename[5:-1].rsplit(":", 1)
                line = int(first_line) + frame.f_lineno - 1
                self.seen.append(_Seen(exc_type, exc, f"{path}:{line}"))
        return self._local

    @contextmanager
    def active(self) -> Iterator[None]:
        previous, previous_threads = sys.gettrace(), threading.gettrace()
        sys.settrace(self._global)
        threading.settrace(self._global)
        try:
            yield
        finally:
            sys.settrace(previous)
            threading.settrace(previous_threads)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- running


def _uncalled_functions(tree: ast.Module, other_sources: list[str]) -> list[str]:
    """Top-level functions of ``tree`` that neither it nor ``other_sources`` refer to."""
    defined = [
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    used: set[str] = set()
    for module in [tree, *(ast.parse(src) for src in other_sources)]:
        for node in ast.walk(module):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
    return [name for name in defined if name not in used]


def _close_clients(namespace: dict[str, Any], runner: asyncio.Runner) -> None:
    for value in list(namespace.values()):
        if isinstance(value, deepexec_sdk.DeepExecClient):
            value.close()
        elif isinstance(value, deepexec_sdk.DeepExecAsyncClient):
            runner.run(value.close())


@contextmanager
def _restored_environment(endpoint: str, workdir: Path) -> Iterator[None]:
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    for name in [n for n in os.environ if n.startswith("DEEPEXEC_")]:
        del os.environ[name]
    os.environ["DEEPEXEC_ENDPOINT"] = endpoint
    os.environ["DEEPEXEC_CONFIG"] = os.devnull
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _run_block(
    block: Block,
    namespace: dict[str, Any],
    runner: asyncio.Runner,
    recorder: ExceptionRecorder,
    endpoint: str,
    later_sources: list[str],
) -> None:
    source = block.source.replace(PLACEHOLDER_ENDPOINT, endpoint)
    tree = ast.parse(source, block.filename)
    code = compile(
        source, block.filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    recorder.filenames.add(block.filename)
    with recorder.active():
        if code.co_flags & inspect.CO_COROUTINE:
            runner.run(eval(code, namespace))  # top-level await
        else:
            exec(code, namespace)
        for name in _uncalled_functions(tree, later_sources):
            function = namespace[name]
            required = [
                p
                for p in inspect.signature(function).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if required:
                raise DocExampleError(
                    f"{block.name}: defines {name}() but never calls it, and it needs "
                    f"arguments ({', '.join(p.name for p in required)}): call it in the example"
                )
            result = function()
            if inspect.isawaitable(result):
                runner.run(_awaited(result))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def run_blocks(blocks: list[Block], endpoint: str, workdir: Path, *, shared: bool) -> None:
    """Run ``blocks`` (one namespace for all when ``shared``, else one each) and raise
    :class:`DocExampleError` for the first that fails."""
    groups = [blocks] if shared else [[b] for b in blocks]
    for group in groups:
        namespace: dict[str, Any] = {"__name__": "__main__"}
        recorder = ExceptionRecorder()
        with _restored_environment(endpoint, workdir), asyncio.Runner() as runner:
            try:
                for index, block in enumerate(group):
                    later = [b.source for b in group[index + 1 :]]
                    before = len(recorder.seen)
                    try:
                        _run_block(block, namespace, runner, recorder, endpoint, later)
                    except DocExampleError:
                        raise
                    except BaseException as exc:
                        raise DocExampleError(
                            f"{block.name}: the example raised {type(exc).__name__}: {exc}"
                        ) from exc
                    _check_seen(block, recorder.seen[before:])
            finally:
                _close_clients(namespace, runner)


def _check_seen(block: Block, seen: list[_Seen]) -> None:
    expected = tuple(getattr(deepexec_sdk.exceptions, name) for name in block.expected)
    unexpected = [s for s in seen if not (expected and issubclass(s.exc_type, expected))]
    if unexpected:
        raise DocExampleError(
            f"{block.name}: exceptions passed through the example (caught or not):\n  "
            + "\n  ".join(s.describe() for s in unexpected)
            + "\n(declare the ones it demonstrates with <!-- doc-test: expect Name -->)"
        )
    missing = [
        name
        for name, cls in zip(block.expected, expected, strict=True)
        if not any(issubclass(s.exc_type, cls) for s in seen)
    ]
    if missing:
        raise DocExampleError(
            f"{block.name}: declares {', '.join(missing)} but the example never raised it"
        )
