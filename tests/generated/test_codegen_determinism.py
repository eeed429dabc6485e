"""Regeneration is deterministic, and `python -m codegen check` catches a stale tree.

Nothing here writes into the real tree: renders go to temporary directories, and the
stale-tree check runs on a copy of the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from protocol_fixtures import ROOT

if str(ROOT) not in sys.path:  # codegen/ is a top-level directory, not an installed package
    sys.path.insert(0, str(ROOT))

from codegen import generate as gen  # noqa: E402


def _run_check(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codegen", "check"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_render_twice_gives_identical_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    extra_first, extra_second = gen.build(first), gen.build(second)
    tree_first, tree_second = gen._tree(first), gen._tree(second)
    assert tree_first == tree_second
    assert extra_first == extra_second
    assert "deepexec_protocol/converter.py" in tree_first
    assert len(tree_first) >= 20
    # and identical to what is committed
    assert tree_first == gen._tree(gen.OUT_DIR)


def test_check_passes_on_the_committed_tree() -> None:
    done = _run_check(ROOT)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".ruff_cache", ".mypy_cache")
    for part in ("schema", "codegen", "generated"):
        shutil.copytree(ROOT / part, copy / part, ignore=ignore)
    for part in ("PROTOCOL.md", "pyproject.toml"):
        if (ROOT / part).exists():
            shutil.copy2(ROOT / part, copy / part)
    return copy


def test_check_fails_after_a_one_byte_change(repo_copy: Path) -> None:
    target = repo_copy / "generated" / "deepexec_protocol" / "models.py"
    data = bytearray(target.read_bytes())
    at = data.index(b"class ") + len(b"class ")
    data[at] = data[at] ^ 0x20  # flip the case of one letter of a class name
    target.write_bytes(bytes(data))
    # a stray file and a missing file are stale too
    (repo_copy / "generated" / "deepexec_protocol" / "stray.py").write_text("x = 1\n")
    (repo_copy / "generated" / "deepexec_protocol" / "py.typed").unlink()
    done = _run_check(repo_copy)
    assert done.returncode == 1
    stale = {line.strip() for line in done.stderr.splitlines()[1:]}
    assert stale == {
        "deepexec_protocol/models.py",
        "deepexec_protocol/stray.py",
        "deepexec_protocol/py.typed",
    }
    # the real tree was not touched
    assert (ROOT / "generated" / "deepexec_protocol" / "py.typed").exists()
    assert not (ROOT / "generated" / "deepexec_protocol" / "stray.py").exists()
