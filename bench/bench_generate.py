"""How long `python -m codegen generate` takes (target: under 5 s).

The generator runs on a copy of schema/ and codegen/ in a temporary directory, so it writes
a whole generated/ tree from nothing and the real tree is never touched. Prints the wall
time of each run of the command (a fresh interpreter: imports included) and where the time
of one in-process run goes. Always exits 0 when it could measure (see DESIGN.md).

    .venv/bin/python bench/bench_generate.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 5.0


def _copy(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", ".ruff_cache")
    for part in ("schema", "codegen"):
        shutil.copytree(ROOT / part, into / part, ignore=ignore)
    if (ROOT / "PROTOCOL.md").exists():
        shutil.copy2(ROOT / "PROTOCOL.md", into / "PROTOCOL.md")


def run_command(repo: Path) -> float:
    shutil.rmtree(repo / "generated", ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "codegen", "generate"], cwd=repo, check=True, capture_output=True
    )
    elapsed = time.perf_counter() - started
    files = [p for p in (repo / "generated").rglob("*") if p.is_file()]
    assert len(files) >= 20, "generate wrote too few files"
    return elapsed


def phases(repo: Path) -> dict[str, float]:
    """Time of each phase of one render, in this process (imports already done)."""
    sys.path.insert(0, str(repo))
    from codegen import generate as gen
    from codegen.bundle import bundle
    from codegen.ir import build_ir

    out: dict[str, float] = {}
    t = time.perf_counter()
    b = bundle(gen.SCHEMA_DIR)
    out["bundle the schema"] = time.perf_counter() - t
    t = time.perf_counter()
    build_ir(b)
    out["IR (datamodel-code-generator parse)"] = time.perf_counter() - t
    t = time.perf_counter()
    files = gen.render_files(b)  # builds the IR again, then renders
    out["IR again + render templates"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        t = time.perf_counter()
        gen._format(Path(tmp))
        out["ruff format + fix"] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        _copy(repo)
        times = [run_command(repo) for _ in range(args.runs)]
        split = phases(repo)
    best = min(times)
    print("python -m codegen generate, into an empty temporary tree:")
    print("  runs: " + ", ".join(f"{t:.2f} s" for t in times))
    print(
        f"  best {best:.2f} s, target < {TARGET_S:.0f} s: {'ok' if best < TARGET_S else 'OVER'}"
        f" (ratio to target {best / TARGET_S:.2f})"
    )
    print("one render in process, by phase:")
    for name, seconds in split.items():
        print(f"  {name:38} {seconds:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
