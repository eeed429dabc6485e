"""Every Python example of the documentation (docs/**/*.md) and of README.md runs, as
written, against a real reference server started for this module.

The server is ``python -m deepexec_server serve --port 0`` on a temporary state directory,
with the fake OpenAI-compatible provider (tests/fakes/fake_openai_provider.py, a TEST
DOUBLE) as both its OpenAI-compatible server and its DeepSeek endpoint, so the generation
examples really generate (the spec README's ``deepseek_key="sk-..."`` included). How blocks
are run, and why an exception an example swallows still fails it, is explained in
tests/docs/doc_examples.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import deepexec_sdk
from tests.docs.doc_examples import (
    README,
    ROOT,
    Block,
    DocExampleError,
    doc_files,
    extract_blocks,
    run_blocks,
)

pytestmark = pytest.mark.timeout(120)

DOC_BLOCKS = [block for path in doc_files() for block in extract_blocks(path)]
README_BLOCKS = extract_blocks(README)


def _start(
    command: list[str], marker: str, env: dict[str, str]
) -> tuple[subprocess.Popen[str], str]:
    """Start ``command``; return it and the URL on the first stdout line containing
    ``marker``."""
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if marker in line:
            return proc, line.rsplit(marker, 1)[1].split()[0]
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise RuntimeError(f"{' '.join(command)} did not start:\n{err}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reference server whose text providers are the fake OpenAI-compatible server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEXEC_")}
    fake, fake_url = _start(
        [
            sys.executable,
            "-m",
            "tests.fakes.fake_openai_provider",
            "--port",
            "0",
            "--chunk-delay",
            "0.005",
        ],
        " at ",
        env,
    )
    try:
        server_env = dict(
            env,
            DEEPEXEC_SERVER_OPENAI_BASE_URL=fake_url,
            DEEPEXEC_SERVER_OPENAI_MODEL="fake-model",
            DEEPEXEC_SERVER_DEEPSEEK_BASE_URL=fake_url,
        )
        state = tmp_path_factory.mktemp("docs-server-state")
        server, url = _start(
            [
                sys.executable,
                "-m",
                "deepexec_server",
                "serve",
                "--port",
                "0",
                "--state-dir",
                str(state),
                "--log-level",
                "warning",
            ],
            "listening on ",
            server_env,
        )
        try:
            yield url
        finally:
            _stop(server)
    finally:
        _stop(fake)


def test_the_examples_are_found() -> None:
    """The extraction sees the README's eight examples and every page's."""
    assert len(README_BLOCKS) >= 8
    pages = {block.path.relative_to(ROOT).as_posix() for block in DOC_BLOCKS}
    for page in (
        "docs/guides/quickstart.md",
        "docs/guides/jobs.md",
        "docs/guides/streaming.md",
        "docs/guides/sessions.md",
        "docs/guides/configuration.md",
        "docs/guides/server.md",
        "docs/concepts/errors.md",
    ):
        assert page in pages


@pytest.mark.parametrize("block", DOC_BLOCKS, ids=[block.name for block in DOC_BLOCKS])
def test_doc_example_runs(block: Block, endpoint: str, tmp_path: Path) -> None:
    run_blocks([block], endpoint, tmp_path, shared=False)


def test_readme_examples_run_in_order(endpoint: str, tmp_path: Path) -> None:
    run_blocks(README_BLOCKS, endpoint, tmp_path, shared=True)


def _readme_block(*needles: str) -> Block:
    matches = [b for b in README_BLOCKS if all(n in b.source for n in needles)]
    assert len(matches) == 1, needles
    return matches[0]


def _without_max_tokens(original: Any) -> Any:
    async def generate_text_and_wait(self: Any, prompt: str, model: str = "deepseek-v3") -> Any:
        return await original(self, prompt, model)

    return generate_text_and_wait


@pytest.mark.parametrize(
    ("mutation", "error"),
    [
        ("rename execute_code_and_wait", "AttributeError"),
        ("drop the max_tokens parameter", "TypeError"),
    ],
)
def test_a_changed_api_fails_an_example_that_swallows_errors(
    mutation: str, error: str, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's quick start wraps each call in ``except Exception: print(...)``; an
    API change must still fail it."""
    cls = deepexec_sdk.DeepExecAsyncClient
    if mutation.startswith("rename"):
        monkeypatch.setattr(cls, "run_code_and_wait", cls.execute_code_and_wait, raising=False)
        monkeypatch.delattr(cls, "execute_code_and_wait")
    else:
        monkeypatch.setattr(
            cls, "generate_text_and_wait", _without_max_tokens(cls.generate_text_and_wait)
        )
    block = _readme_block("DeepExecAsyncClient(", "asyncio.run(main())")
    with pytest.raises(DocExampleError, match=error):
        run_blocks([block], endpoint, tmp_path, shared=True)
