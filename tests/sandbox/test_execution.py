"""Timeouts, output caps, streaming, cancellation, concurrency, sessions, warm pool."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from attrs import evolve

from deepexec_server.sandbox import ExecutionRequest, Limits, SandboxError, SandboxSettings
from deepexec_server.sandbox.hostfs import is_mountpoint, mounts_under
from deepexec_server.sandbox.local import LocalExecutor
from deepexec_server.sandbox.uids import processes_of_uid

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


def req(code: str, limits: Limits, language: str = "python", **kw: object) -> ExecutionRequest:
    return ExecutionRequest(code=code, language=language, limits=limits, **kw)  # type: ignore[arg-type]


async def test_wall_clock_timeout_kills(executor: LocalExecutor, limits: Limits) -> None:
    t = time.monotonic()
    out = await executor.execute(
        req("import time\nprint('start', flush=True)\ntime.sleep(60)", evolve(limits, timeout=1.0))
    )
    elapsed = time.monotonic() - t
    assert out.timed_out and out.exit_code is None and out.signal == 9
    assert out.stdout == "start\n"
    assert 1.0 <= elapsed < 5.0
    assert 950 <= out.execution_time_ms < 5000


async def test_cpu_time_limit(executor: LocalExecutor, limits: Limits) -> None:
    out = await executor.execute(req("while True: pass", evolve(limits, timeout=10, cpu_time=1)))
    assert not out.timed_out
    assert out.signal in (24, 9)  # SIGXCPU at the soft limit, SIGKILL at the hard one
    assert out.execution_time_ms < 4000


async def test_output_cap_truncates_and_flags_each_stream(
    executor: LocalExecutor, limits: Limits
) -> None:
    small = evolve(limits, max_output=1000)
    out = await executor.execute(req("print('x' * 999)", small))
    assert out.stdout == "x" * 999 + "\n" and not out.stdout_truncated  # exactly the cap
    out = await executor.execute(req("import sys\nsys.stderr.write('e' * 5000)", small))
    assert out.stderr_truncated and not out.stdout_truncated
    assert out.stderr == "e" * 1000 and out.stdout == ""


async def test_runaway_output_is_cut_off_quickly(executor: LocalExecutor, limits: Limits) -> None:
    t = time.monotonic()
    out = await executor.execute(
        req("while True: print('y' * 1000)", evolve(limits, max_output=100_000))
    )
    assert out.stdout_truncated and len(out.stdout.encode()) == 100_000
    assert out.signal == 9 and not out.timed_out
    assert time.monotonic() - t < 5


async def test_streaming_delivers_chunks_while_running(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = (
        "import sys, time\n"
        "print('first')\n"
        "sys.stderr.write('err-1\\n')\n"
        "time.sleep(0.6)\n"
        "print('second')\n"
    )
    seen: list[tuple[float, str, str]] = []

    async def on_output(stream: str, text: str) -> None:
        seen.append((time.monotonic(), stream, text))

    out = await executor.execute(req(code, limits), on_output)
    done = time.monotonic()
    assert out.stdout == "first\nsecond\n" and out.stderr == "err-1\n"
    stdout_chunks = [(t, text) for t, s, text in seen if s == "stdout"]
    assert "".join(text for _, text in stdout_chunks) == out.stdout
    assert "".join(text for _, s, text in seen if s == "stderr") == out.stderr
    first_time = next(t for t, text in stdout_chunks if "first" in text)
    assert done - first_time > 0.4  # arrived long before the process ended
    assert stdout_chunks[0][1].startswith("first")


async def test_streaming_with_a_sync_callback_in_every_language(
    executor: LocalExecutor, limits: Limits
) -> None:
    programs = {
        "javascript": "console.log('a'); setTimeout(() => console.log('b'), 500)",
        "ruby": "puts 'a'\nsleep 0.5\nputs 'b'",
        "bash": "echo a; sleep 0.5; echo b",
        "c": (
            "#include <stdio.h>\n#include <unistd.h>\n"
            'int main(){puts("a");usleep(500000);puts("b");}'
        ),
    }
    for language, code in programs.items():
        seen: list[tuple[float, str]] = []

        def on_output(stream: str, text: str, seen: list[tuple[float, str]] = seen) -> None:
            seen.append((time.monotonic(), text))

        out = await executor.execute(req(code, limits, language), on_output)
        end = time.monotonic()
        assert out.stdout == "a\nb\n", (language, out)
        assert seen and seen[0][1].startswith("a"), language
        assert end - seen[0][0] > 0.3, language


async def test_callback_error_stops_the_program(executor: LocalExecutor, limits: Limits) -> None:
    def broken(stream: str, text: str) -> None:
        raise RuntimeError("client went away")

    t = time.monotonic()
    with pytest.raises(RuntimeError, match="client went away"):
        await executor.execute(
            req("import time\nprint('x', flush=True)\ntime.sleep(30)", limits), broken
        )
    assert time.monotonic() - t < 5
    assert (await executor.execute(req("print(2)", limits))).stdout == "2\n"


async def test_cancellation_kills_the_whole_sandbox(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = (
        "import os, subprocess, time\n"
        "subprocess.Popen(['sleep', '300'])\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(300)\n"
        "print(os.getuid(), flush=True)\n"
        "time.sleep(300)\n"
    )
    uid_seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_output(stream: str, text: str) -> None:
        if stream == "stdout" and not uid_seen.done():
            uid_seen.set_result(int(text.split()[0]))

    task = asyncio.create_task(executor.execute(req(code, limits), on_output))
    uid = await asyncio.wait_for(uid_seen, 10)
    await asyncio.sleep(0.2)
    assert len(processes_of_uid(uid)) >= 5  # launcher's child bwrap, init, python, 3 more
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_of_uid(uid) == []  # gone by the time the cancellation completes
    assert (await executor.execute(req("print(3)", limits))).stdout == "3\n"


async def test_concurrent_executions_get_distinct_uids(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = "import os, time\ntime.sleep(0.3)\nprint(os.getuid())"
    outs = await asyncio.gather(*(executor.execute(req(code, limits)) for _ in range(6)))
    uids = [int(o.stdout) for o in outs]
    assert all(o.exit_code == 0 for o in outs)
    assert all(u >= executor.settings.uid_base for u in uids)
    running_together = uids[: executor.settings.max_concurrency]
    assert len(set(running_together)) == len(running_together)


async def test_session_files_persist_within_the_session_only(
    executor: LocalExecutor, limits: Limits, session_dir: Path
) -> None:
    w1 = await executor.execute(
        req(
            "import os\nopen('note.txt','w').write('kept')\nprint(os.getuid())",
            limits,
            workdir=session_dir,
        )
    )
    assert w1.exit_code == 0, w1
    # A later execution of the same session (another uid) reads and rewrites it.
    w2 = await executor.execute(
        req(
            "import os\nprint(open('note.txt').read(), os.getuid())\n"
            "open('note.txt','a').write('+more')\nos.mkdir('sub')",
            limits,
            workdir=session_dir,
        )
    )
    text, uid2 = w2.stdout.split()
    assert text == "kept" and w2.exit_code == 0
    assert (session_dir / "note.txt").read_text() == "kept+more"  # the server sees it too
    fresh = await executor.execute(req("import os\nprint(os.listdir('.'))", limits))
    assert fresh.stdout == "[]\n"
    await executor.release_workdir(session_dir)
    assert not is_mountpoint(session_dir) and list(session_dir.iterdir()) == []  # noqa: ASYNC240 (test)


async def test_session_disk_quota(
    executor: LocalExecutor, limits: Limits, session_dir: Path
) -> None:
    small = evolve(limits, max_disk=4 * 2**20)
    code = (
        "try:\n"
        "    with open('big', 'wb') as f:\n"
        "        for _ in range(64): f.write(b'x' * 2**20); f.flush()\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno)\n"
    )
    out = await executor.execute(req(code, small, workdir=session_dir))
    assert out.stdout.startswith("stopped 28"), out  # ENOSPC
    assert os.path.getsize(session_dir / "big") <= 4 * 2**20  # noqa: ASYNC240 (test)
    await executor.release_workdir(session_dir)


async def test_session_with_existing_content_keeps_it(
    executor: LocalExecutor, limits: Limits, session_dir: Path
) -> None:
    session_dir.mkdir(parents=True)  # noqa: ASYNC240 (test)
    (session_dir / "upload.csv").write_text("a,b\n1,2\n")
    out = await executor.execute(
        req("print(open('upload.csv').read())", limits, workdir=session_dir)
    )
    assert out.stdout == "a,b\n1,2\n\n"
    assert is_mountpoint(session_dir, "tmpfs")
    await executor.release_workdir(session_dir)


async def test_executions_of_one_session_are_serialized(
    executor: LocalExecutor, limits: Limits, session_dir: Path
) -> None:
    code = (
        "import os, time\n"
        "fd = os.open('lock', os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
        "time.sleep(0.2)\nos.remove('lock')\nprint('ok')\n"
    )
    outs = await asyncio.gather(
        *(executor.execute(req(code, limits, workdir=session_dir)) for _ in range(3))
    )
    assert [o.stdout for o in outs] == ["ok\n"] * 3
    await executor.release_workdir(session_dir)


async def test_execute_after_close_raises(
    make_settings: Callable[..., SandboxSettings], limits: Limits
) -> None:
    ex = LocalExecutor(make_settings())
    await ex.start()
    await ex.close()
    with pytest.raises(SandboxError):
        await ex.execute(req("print(1)", limits))


async def test_warm_pool_only_for_warm_languages(
    make_settings: Callable[..., SandboxSettings],
) -> None:
    ex = LocalExecutor(
        make_settings(warm_pool_size=1, languages=("python", "ruby"), warm_languages=("python",))
    )
    await ex.start()
    try:
        await ex.wait_warm()
        assert set(ex._pool) == {"python"}  # noqa: SLF001 - the pool is what is tested
        assert len(ex._pool["python"]) == 1  # noqa: SLF001
    finally:
        await ex.close()


async def test_warm_pool_serves_prestarted_sandboxes_once(
    make_settings: Callable[..., SandboxSettings],
) -> None:
    ex = LocalExecutor(
        make_settings(warm_pool_size=1, languages=("python", "ruby"), warm_languages=None)
    )
    await ex.start()
    instance = ex._instance_dir  # noqa: SLF001 - its clean-up is tested
    assert instance is not None
    try:
        # How long the interpreter has been running when the program starts.
        age = (
            "import os, time\n"
            "ticks = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19])\n"
            "up = float(open('/proc/uptime').read().split()[0])\n"
            "print(round(up - ticks / os.sysconf('SC_CLK_TCK'), 2), os.getuid(), os.getpid())\n"
        )
        default = ex.settings.defaults
        uids = set()
        for _ in range(3):
            await ex.wait_warm()
            await asyncio.sleep(0.6)  # so that "started before the request" is measurable
            out = await ex.execute(req(age, evolve(default, timeout=10), env={"A": "1"}))
            seconds, uid, _pid = out.stdout.split()
            assert float(seconds) >= 0.5, out  # pre-started well before the request
            uids.add(uid)
        assert len(uids) == 3  # a sandbox (and its uid) is never reused
        # Other limits than the defaults (beyond timeout/max_output): cold start.
        out = await ex.execute(req(age, evolve(default, memory=default.memory // 2)))
        assert float(out.stdout.split()[0]) < 0.5
        # Session executions never use the pool.
        rb = await ex.execute(req("puts ENV['A']; puts $0", default, "ruby", env={"A": "b"}))
        assert rb.stdout == "b\n/sandbox/main.rb\n"
    finally:
        await ex.close()
    # Nothing of this executor is left (other executors' prepared scratches may be).
    assert not mounts_under(instance) and not instance.exists()  # noqa: ASYNC240 (test)


async def test_run_command_runs_a_bare_command_in_a_fresh_sandbox(
    executor: LocalExecutor,
) -> None:
    for _ in range(3):
        raw = await executor.run_command(
            ["/usr/bin/python3", "-c", "import os, socket; print(os.getuid() != 0, os.getcwd())"]
        )
        assert raw.wait_status == 0 and raw.stdout == "True /work\n", raw
    await asyncio.sleep(0.2)  # the scheduled top-ups have run
    assert len(executor._prepared) <= executor.settings.prepared_scratches
