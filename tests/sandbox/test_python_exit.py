"""How a python program ends in the sandbox: the bootstrap does what the interpreter's
shutdown does that a program can observe, then exits at once (languages.py). Every case
runs cold and from the warm pool, and is compared with a bare /usr/bin/python3 run of
the same program."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from deepexec_server.sandbox import ExecutionRequest, Limits, SandboxSettings
from deepexec_server.sandbox.local import LocalExecutor

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

CASES = {
    "plain": "print('hi')",
    "no newline": "import sys\nsys.stdout.write('partial')",
    "exit code": "import sys\nprint('before')\nsys.exit(3)",
    "exit none": "import sys\nsys.exit()",
    "exit message": "import sys\nsys.exit('bye now')",
    "exit big": "import sys\nsys.exit(256 + 7)",
    "exception": "def f():\n    raise ValueError('boom')\nf()",
    "atexit": (
        "import atexit\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "atexit.register(lambda: print('first', flush=True))\n"
        "print('main')"
    ),
    "atexit raises": (
        "import atexit\n"
        "def bad():\n    raise RuntimeError('in atexit')\n"
        "atexit.register(bad)\nprint('main')"
    ),
    "atexit exits": "import atexit, sys\natexit.register(lambda: sys.exit(5))\nprint('main')",
    "thread joined": (
        "import threading, time\n"
        "def late():\n    time.sleep(0.2)\n    print('thread done')\n"
        "threading.Thread(target=late).start()\nprint('main done')"
    ),
    "daemon thread": (
        "import threading, time\n"
        "def forever():\n    time.sleep(30)\n    print('never')\n"
        "threading.Thread(target=forever, daemon=True).start()\nprint('main done')"
    ),
    "__del__ of a global": (
        "class Noisy:\n    def __del__(self):\n        print('deleted')\nn = Noisy()\nprint('main')"
    ),
    # made after the start-up's objects were frozen (gc.freeze): the last collection
    # still finds the program's own garbage cycles
    "garbage cycle with __del__": (
        "class Node:\n"
        "    def __init__(self):\n        self.me = self\n"
        "    def __del__(self):\n        print('collected')\n"
        "Node()\nprint('main')"
    ),
    "pools left running": (
        "import multiprocessing as mp, concurrent.futures as cf\n"
        "def sq(x):\n    return x * x\n"
        "if __name__ == '__main__':\n"
        "    with mp.Pool(2) as p:\n        print(p.map(sq, range(5)))\n"
        "    ex = cf.ProcessPoolExecutor(2)\n"
        "    print(list(ex.map(sq, [1, 2, 3])))\n"
        "    t = cf.ThreadPoolExecutor(1)\n"
        "    t.submit(lambda: print('from the pool', flush=True))\n"
    ),
    "logging flushed": (
        "import logging\nlogging.basicConfig(level=logging.INFO)\nlogging.info('logged')"
    ),
    # the interpreter starts without the site module (-I -S); the bootstrap does what
    # site does that a program sees: its builtins and the search path
    "exit builtin": "print('x')\nexit(4)",
    "quit builtin": "quit('by quit')",
    "site's builtins and search path": (
        "import builtins, sys\n"
        "print(sys.path[1:])\n"
        "for name in ('exit', 'quit', 'copyright', 'credits', 'license', 'help'):\n"
        "    print(name, repr(getattr(builtins, name)))"
    ),
}

#: files left open, written only by their buffers' flush at the end
UNCLOSED = (
    "f = open('out.txt', 'w')\n"
    "f.write('buffered data')\n"
    "import io\n"
    "g = io.TextIOWrapper(open('raw.bin', 'wb'), encoding='utf-8')\n"
    "g.write('wrapped')\n"
)


def bare(code: str, cwd: str | None = None) -> tuple[str, str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "main.py"
        program.write_text(code)
        r = subprocess.run(
            ["/usr/bin/python3", str(program)],
            capture_output=True,
            text=True,
            cwd=cwd or tmp,
            env={},
        )
    return r.stdout, r.stderr, r.returncode


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def executors(
    make_settings: Callable[..., SandboxSettings],
) -> AsyncIterator[dict[str, LocalExecutor]]:
    cold = LocalExecutor(make_settings(languages=("python",)))
    warm = LocalExecutor(make_settings(languages=("python",), warm_pool_size=1))
    await cold.start()
    await warm.start()
    try:
        yield {"cold": cold, "warm": warm}
    finally:
        await cold.close()
        await warm.close()


def _normalise(stderr: str) -> str:
    # the sandbox names the program /sandbox/main.py, bare python its temp path; object
    # addresses differ from run to run
    lines = [ln for ln in stderr.splitlines() if not ln.lstrip().startswith('File "')]
    return re.sub(r"0x[0-9a-f]+", "0x?", "\n".join(lines))


def _files_of_bare_run(code: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        assert bare(code, cwd=tmp)[2] == 0
        return {p.name: p.read_text() for p in Path(tmp).iterdir()}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_a_program_ends_as_under_the_bare_interpreter(
    executors: dict[str, LocalExecutor], limits: Limits, name: str, mode: str
) -> None:
    code = CASES[name]
    ex = executors[mode]
    if mode == "warm":
        await ex.wait_warm()
    out = await ex.execute(ExecutionRequest(code=code, language="python", limits=limits))
    stdout, stderr, status = bare(code)
    assert out.stdout == stdout, (out, stdout)
    assert out.exit_code == status, (out, status)
    assert _normalise(out.stderr) == _normalise(stderr), (out.stderr, stderr)


@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_files_left_open_are_flushed_as_under_the_bare_interpreter(
    executors: dict[str, LocalExecutor], limits: Limits, session_dir: Path, mode: str
) -> None:
    expected = _files_of_bare_run(UNCLOSED)
    assert expected == {"out.txt": "buffered data", "raw.bin": "wrapped"}
    ex = executors[mode]
    out = await ex.execute(
        ExecutionRequest(code=UNCLOSED, language="python", limits=limits, workdir=session_dir)
    )
    assert out.exit_code == 0, out
    seen = {p.name: p.read_text() for p in session_dir.iterdir()}  # noqa: ASYNC240 (test)
    assert seen == expected, out
    await ex.release_workdir(session_dir)


#: compares the code the program runs as with what compile() makes of its file
SELF_CHECK = """
import inspect, sys, warnings

def helper():
    return [x for x in range(2)]

class K:
    def m(self):
        return lambda: 1

def files(code):
    out = [code.co_filename]
    for c in code.co_consts:
        if isinstance(c, type(code)):
            out += files(c)
    return out

running = sys._getframe().f_code
expected = compile(open(__file__, "rb").read(), __file__, "exec")
print(running == expected, set(files(running)) == {"/sandbox/main.py"}, len(files(running)))
print(inspect.getsource(helper).splitlines()[0])
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    warnings.warn("w")
print(seen[0].filename, seen[0].lineno)
def fail():
    raise KeyError("k")
fail()
"""


@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_the_program_runs_as_compile_makes_it_under_its_own_name(
    executors: dict[str, LocalExecutor], limits: Limits, mode: str
) -> None:
    ex = executors[mode]
    if mode == "warm":
        await ex.wait_warm()
    out = await ex.execute(ExecutionRequest(code=SELF_CHECK, language="python", limits=limits))
    source = SELF_CHECK.splitlines()
    warn_line = source.index('    warnings.warn("w")') + 1
    raise_line = source.index('    raise KeyError("k")') + 1
    lines = out.stdout.splitlines()
    assert lines[0] == "True True 8", out  # module, helper, listcomp, K, m, lambda, ...
    assert lines[1] == "def helper():"
    assert lines[2] == f"/sandbox/main.py {warn_line}"
    assert out.stderr.startswith("Traceback (most recent call last):\n"), out.stderr
    first = out.stderr.splitlines()[1]
    assert first == f'  File "/sandbox/main.py", line {raise_line + 1}, in <module>'
    assert f'File "/sandbox/main.py", line {raise_line}, in fail' in out.stderr
    assert "KeyError: 'k'" in out.stderr and out.exit_code == 1


@pytest.mark.parametrize(
    "code, message",
    [
        ("x = 1\nif x\n    pass\n", "SyntaxError: expected ':'"),
        ("def f(:\n    pass\n", "SyntaxError"),
        ("# coding: latin-1\nprint('\xe9')\n", None),
    ],
)
@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_bad_sources_fail_as_under_the_bare_interpreter(
    executors: dict[str, LocalExecutor], limits: Limits, mode: str, code: str, message: str | None
) -> None:
    ex = executors[mode]
    if mode == "warm":
        await ex.wait_warm()
    out = await ex.execute(ExecutionRequest(code=code, language="python", limits=limits))
    stdout, stderr, status = bare(code)
    assert (out.stdout, out.exit_code) == (stdout, status), (out, stderr)
    if message is not None:
        assert message in out.stderr and message in stderr, (out.stderr, stderr)
        # no frame of the bootstrap: the error names the program's file, as bare python
        assert out.stderr.startswith('  File "/sandbox/main.py", line '), out.stderr
        assert _normalise(out.stderr) == _normalise(stderr)


#: a program that prints its search path (work dir first: left out) and whether the
#: import line of a .pth file of the user's site-packages ran
USER_SITE_PROBE = (
    "import sys, mine\nprint(mine.X, getattr(sys, 'from_pth', None))\nprint(sys.path[1:])\n"
)


@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_the_users_site_packages_is_used_as_under_the_bare_interpreter(
    executors: dict[str, LocalExecutor], limits: Limits, session_dir: Path, mode: str
) -> None:
    """~/.local/lib/pythonX.Y/site-packages of the session (HOME is the work dir), with
    its .pth files (a path, relative to it, and an import line: the user's own), goes
    where site puts it:
    after the standard library, before the system's site-packages."""
    ex = executors[mode]
    setup = (
        "import os, sys\n"
        "d = os.path.expanduser('~/.local/lib/python%d.%d/site-packages' % sys.version_info[:2])\n"
        "os.makedirs(d + '/extra')\n"
        "open(d + '/mine.py', 'w').write('X = 5\\n')\n"
        "open(d + '/a.pth', 'w').write('extra\\nimport sys; sys.from_pth = 1\\n')\n"
    )
    out = await ex.execute(
        ExecutionRequest(code=setup, language="python", limits=limits, workdir=session_dir)
    )
    assert out.exit_code == 0, out
    if mode == "warm":
        await ex.wait_warm()
    out = await ex.execute(
        ExecutionRequest(
            code=USER_SITE_PROBE, language="python", limits=limits, workdir=session_dir
        )
    )
    assert out.exit_code == 0, out
    lines = out.stdout.splitlines()
    assert lines[0] == "5 1", out
    # the same files under a bare interpreter whose HOME is the session dir
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "main.py").write_text(USER_SITE_PROBE)
        r = subprocess.run(  # noqa: ASYNC221 (a test: the loop has nothing else to do)
            ["/usr/bin/python3", f"{tmp}/main.py"],
            capture_output=True,
            text=True,
            env={"HOME": str(session_dir)},
            check=True,
        )
    assert lines[1] == r.stdout.splitlines()[1].replace(str(session_dir), "/work"), (out, r)
    assert "/work/.local/lib/python" in lines[1] and "site-packages/extra'" in lines[1]
    await ex.release_workdir(session_dir)


SPAWNED = """
import multiprocessing as mp, sys
def path(_):
    return sys.path
if __name__ == '__main__':
    with mp.get_context('spawn').Pool(1) as pool:
        print(pool.map(path, [0])[0] == sys.path, 'dist-packages' in repr(sys.path))
"""


@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_spawned_interpreters_get_the_programs_search_path(
    executors: dict[str, LocalExecutor], limits: Limits, mode: str
) -> None:
    """multiprocessing's spawn starts interpreters with the flags of this one (-I -S):
    they get its search path all the same (the system's site-packages included)."""
    ex = executors[mode]
    if mode == "warm":
        await ex.wait_warm()
    out = await ex.execute(ExecutionRequest(code=SPAWNED, language="python", limits=limits))
    assert (out.stdout, out.exit_code) == ("True True\n", 0), out
