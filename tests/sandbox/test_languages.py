"""Every language end to end: output, stdin, env, exit codes, compile errors, versions."""

from __future__ import annotations

import re
import subprocess

import pytest
from attrs import evolve

from deepexec_server.sandbox import ExecutionRequest, Limits, UnsupportedLanguageError
from deepexec_server.sandbox.local import BASE_ENV, LocalExecutor

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

HELLO = {
    "python": 'print("hello, world")',
    "javascript": 'console.log("hello, world")',
    "bash": 'echo "hello, world"',
    "ruby": 'puts "hello, world"',
    "c": '#include <stdio.h>\nint main(void) { puts("hello, world"); return 0; }',
    "cpp": '#include <iostream>\nint main() { std::cout << "hello, world" << std::endl; }',
}

UPPER_STDIN = {
    "python": "import sys\nsys.stdout.write(sys.stdin.read().upper())",
    "javascript": (
        'let d="";process.stdin.on("data",c=>d+=c);'
        'process.stdin.on("end",()=>process.stdout.write(d.toUpperCase()))'
    ),
    "bash": "tr a-z A-Z",
    "ruby": "print STDIN.read.upcase",
    "c": (
        "#include <stdio.h>\n#include <ctype.h>\n"
        "int main(void){int c;while((c=getchar())!=EOF)putchar(toupper(c));return 0;}"
    ),
    "cpp": (
        "#include <iostream>\n#include <cctype>\n"
        "int main(){char c;while(std::cin.get(c))std::cout<<(char)std::toupper(c);}"
    ),
}

ENV_NAMES = {
    "python": "import os\nprint('\\n'.join(sorted(os.environ)))",
    "javascript": "console.log(Object.keys(process.env).sort().join('\\n'))",
    "bash": "compgen -e | sort",
    "ruby": "puts ENV.keys.sort",
    "c": (
        "#include <stdio.h>\nextern char **environ;\n"
        "int main(void){for(char**e=environ;*e;e++){char*p=*e;while(*p&&*p!='=')"
        "putchar(*p++);putchar('\\n');}return 0;}"
    ),
    "cpp": (
        "#include <cstdio>\nextern char **environ;\n"
        "int main(){for(char**e=environ;*e;e++){char*p=*e;while(*p&&*p!='=')"
        "std::putchar(*p++);std::putchar('\\n');}}"
    ),
}

EXIT_WITH = {
    "python": "import sys\nsys.exit(3)",
    "javascript": "process.exit(3)",
    "bash": "exit 3",
    "ruby": "exit 3",
    "c": "int main(void){return 3;}",
    "cpp": "int main(){return 3;}",
}

LANGS = list(HELLO)


def req(code: str, language: str, limits: Limits, **kw: object) -> ExecutionRequest:
    return ExecutionRequest(code=code, language=language, limits=limits, **kw)  # type: ignore[arg-type]


async def test_languages_are_the_real_runtimes_with_real_versions(
    executor: LocalExecutor,
) -> None:
    langs = {info.id: info for info in executor.languages()}
    assert set(LANGS) <= set(langs)

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    assert langs["python"].version == run(
        "/usr/bin/python3", "-c", "import platform; print(platform.python_version())"
    )
    assert langs["javascript"].version == run("/usr/bin/node", "-p", "process.versions.node")
    assert langs["ruby"].version == run("/usr/bin/ruby", "-e", "print RUBY_VERSION")
    bash = run("/usr/bin/bash", "-c", "echo $BASH_VERSION")
    assert bash.startswith(langs["bash"].version + "(")
    assert langs["c"].version == run("/usr/bin/gcc", "-dumpfullversion")
    assert langs["python"].file_extension == "py" and langs["c"].file_extension == "c"
    for info in langs.values():
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", info.version), info


@pytest.mark.parametrize("language", LANGS)
async def test_hello_world(executor: LocalExecutor, limits: Limits, language: str) -> None:
    out = await executor.execute(req(HELLO[language], language, limits))
    assert out.stdout == "hello, world\n"
    assert out.stderr == ""
    assert out.exit_code == 0 and out.signal is None
    assert not out.timed_out and not out.stdout_truncated and not out.stderr_truncated
    assert 0 < out.execution_time_ms < 5000
    # Peak RSS of the program itself, not of the server that started it.
    assert 500_000 < out.memory_usage < 150 * 2**20
    if language in ("c", "cpp"):
        assert out.compile_output == ""
    else:
        assert out.compile_output is None


@pytest.mark.parametrize("language", LANGS)
async def test_stdin(executor: LocalExecutor, limits: Limits, language: str) -> None:
    out = await executor.execute(req(UPPER_STDIN[language], language, limits, stdin="abc\nxyz\n"))
    assert out.exit_code == 0, out
    assert out.stdout == "ABC\nXYZ\n"


async def test_utf8_round_trip_and_invalid_bytes(executor: LocalExecutor, limits: Limits) -> None:
    code = (
        "import sys\nsys.stdout.write(sys.stdin.read())\n"
        "sys.stdout.flush()\nsys.stdout.buffer.write(b'[\\xff]')"
    )
    out = await executor.execute(req(code, "python", limits, stdin="héllo ✓ 😀\n"))
    assert out.stdout == "héllo ✓ 😀\n[\ufffd]"


async def test_large_stdin_is_streamed_not_deadlocked(
    executor: LocalExecutor, limits: Limits
) -> None:
    data = "x" * (3 * 2**20) + "\n"  # far more than a pipe buffer
    code = "import sys\nprint(len(sys.stdin.read()))"
    out = await executor.execute(req(code, "python", limits, stdin=data))
    assert out.stdout == f"{len(data)}\n"


@pytest.mark.parametrize("language", LANGS)
async def test_env_holds_only_the_callers_variables(
    executor: LocalExecutor, limits: Limits, language: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVER_ONLY_SECRET", "nope")
    env = {"GREETING": "hi there", "EMPTY": "", "MULTI": "a\nb"}
    out = await executor.execute(req(ENV_NAMES[language], language, limits, env=env))
    assert out.exit_code == 0, out
    names = set(out.stdout.split())
    expected = set(env) | set(BASE_ENV) | {"PWD"}  # PWD: set by bubblewrap's --chdir
    shell_own = {"SHLVL", "_", "OLDPWD"} if language == "bash" else set()
    assert expected <= names <= expected | shell_own, names
    assert "SERVER_ONLY_SECRET" not in names


@pytest.mark.parametrize("language", ["python", "javascript", "ruby", "bash", "c"])
async def test_env_values_arrive_intact(
    executor: LocalExecutor, limits: Limits, language: str
) -> None:
    code = {
        "python": "import os\nprint(repr(os.environ['V']))",
        "javascript": "console.log(JSON.stringify(process.env.V))",
        "ruby": "p ENV['V']",
        "bash": 'printf "%s" "$V" | od -c | head -2',
        "c": '#include <stdio.h>\n#include <stdlib.h>\nint main(){printf("[%s]\\n",getenv("V"));}',
    }[language]
    value = "a b=c 'q' \"dq\" é"
    out = await executor.execute(req(code, language, limits, env={"V": value}))
    assert out.exit_code == 0, out
    if language == "python":
        assert out.stdout.strip() == repr(value)
    elif language == "c":
        assert out.stdout.strip() == f"[{value}]"
    elif language == "bash":
        assert "=" in out.stdout and "q" in out.stdout
    else:
        assert value.replace('"', '\\"') in out.stdout


@pytest.mark.parametrize("language", LANGS)
async def test_exit_codes(executor: LocalExecutor, limits: Limits, language: str) -> None:
    out = await executor.execute(req(EXIT_WITH[language], language, limits))
    assert out.exit_code == 3 and out.signal is None and not out.timed_out


async def test_uncaught_exception_looks_like_a_plain_interpreter_run(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = "def f():\n    raise ValueError('boom')\nf()\n"
    out = await executor.execute(req(code, "python", limits))
    assert out.exit_code == 1
    assert out.stderr.startswith("Traceback (most recent call last):\n")
    assert 'File "/sandbox/main.py", line 3, in <module>' in out.stderr
    assert "<string>" not in out.stderr and "_deepexec" not in out.stderr
    assert out.stderr.rstrip().endswith("ValueError: boom")
    syntax = await executor.execute(req("print(", "python", limits))
    assert syntax.exit_code == 1 and "SyntaxError" in syntax.stderr
    assert "Traceback" not in syntax.stderr


async def test_python_program_namespace_and_work_dir_imports(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = (
        "import sys, os\n"
        "open('helper_mod.py', 'w').write('X = 41')\n"
        "import helper_mod\n"
        "print(__name__, sys.argv, os.getcwd(), helper_mod.X + 1)\n"
        "print(sorted(k for k in globals() if not k.startswith('__')))\n"
    )
    out = await executor.execute(req(code, "python", limits))
    assert out.stdout.splitlines() == [
        "__main__ ['/sandbox/main.py'] /work 42",
        "['helper_mod', 'os', 'sys']",
    ], out


@pytest.mark.parametrize("language", ["c", "cpp"])
async def test_compile_error(executor: LocalExecutor, limits: Limits, language: str) -> None:
    code = "int main(void) { return undefined_thing; }"
    out = await executor.execute(req(code, language, limits))
    assert out.exit_code is not None and out.exit_code != 0
    assert out.compile_output is not None and "undefined_thing" in out.compile_output
    assert "error" in out.compile_output
    assert out.stderr == out.compile_output
    assert out.stdout == ""
    ok = await executor.execute(req(HELLO[language], language, limits))
    assert ok.stdout == "hello, world\n"


async def test_c_warnings_land_in_compile_output_only(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = '#include <stdio.h>\nint main(void){int unused; puts("ok"); return 0;}'
    out = await executor.execute(req(code, "c", limits))
    assert out.stdout == "ok\n" and out.stderr == "" and out.exit_code == 0


async def test_crash_reports_the_signal(executor: LocalExecutor, limits: Limits) -> None:
    out = await executor.execute(req("int main(void){ *(volatile int*)0 = 1; }", "c", limits))
    assert out.exit_code is None and out.signal == 11


async def test_aliases_and_unknown_language(executor: LocalExecutor, limits: Limits) -> None:
    out = await executor.execute(req("print(1)", "Py", limits))
    assert out.stdout == "1\n"
    with pytest.raises(UnsupportedLanguageError) as info:
        await executor.execute(req("x", "cobol", limits))
    assert info.value.language == "cobol"


async def test_invalid_env_name_is_rejected(executor: LocalExecutor, limits: Limits) -> None:
    for bad in ({"A-B": "x"}, {"": "x"}, {"1A": "x"}, {"A": "nul\0byte"}):
        with pytest.raises(ValueError):
            await executor.execute(req("print(1)", "python", limits, env=bad))
    assert (await executor.execute(req("print(1)", "python", limits))).stdout == "1\n"


async def test_memory_usage_tracks_the_program(executor: LocalExecutor, limits: Limits) -> None:
    small = await executor.execute(req("print(1)", "python", limits))
    big_code = (
        "b = bytearray(120 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint(len(b))"
    )
    big = await executor.execute(req(big_code, "python", evolve(limits, memory=512 * 2**20)))
    assert big.exit_code == 0, big
    assert 120 * 2**20 < big.memory_usage < 200 * 2**20
    assert small.memory_usage < 40 * 2**20
    assert big.memory_usage > small.memory_usage + 100 * 2**20
