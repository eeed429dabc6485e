"""A warm sandbox's program starts the moment its control data is sent, before its output
pipes are being read: nothing it writes meanwhile is lost, whatever the sizes."""

from __future__ import annotations

from collections.abc import Callable

from attrs import evolve

from deepexec_server.sandbox import ExecutionRequest, SandboxSettings
from deepexec_server.sandbox.local import LocalExecutor

# Writes more than a pipe holds (64 KiB) on both streams at once, before any read could
# have happened, then exits; the environment is echoed back.
FLOOD = (
    "import os, sys\n"
    "sys.stdout.write('o' * 300_000)\n"
    "sys.stderr.write('e' * 200_000)\n"
    "sys.stdout.write('|' + str(len(os.environ.get('BIG', ''))) + os.environ['SMALL'])\n"
)


async def test_output_written_before_the_pipes_are_read_is_all_delivered(
    make_settings: Callable[..., SandboxSettings],
) -> None:
    ex = LocalExecutor(make_settings(warm_pool_size=1, warm_languages=("python",)))
    await ex.start()
    try:
        limits = evolve(ex.settings.defaults, timeout=20, max_output=1 << 20)
        # a small environment goes out in one send; a big one (beyond the socket's
        # buffer) is sent in part at once, the rest once the pipes are read
        for env in ({"SMALL": "s"}, {"SMALL": "s", "BIG": "b" * 600_000}):
            await ex.wait_warm()
            assert len(ex._pool["python"]) == 1  # noqa: SLF001 - a warm sandbox serves it
            streamed: dict[str, list[str]] = {"stdout": [], "stderr": []}
            out = await ex.execute(
                ExecutionRequest(code=FLOOD, language="python", limits=limits, env=env),
                on_output=lambda stream, text, into=streamed: into[stream].append(text),
            )
            assert out.exit_code == 0, out.stderr[-500:]
            tail = f"|{len(env.get('BIG', ''))}s"
            assert out.stdout == "o" * 300_000 + tail
            assert out.stderr == "e" * 200_000
            assert "".join(streamed["stdout"]) == out.stdout
            assert "".join(streamed["stderr"]) == out.stderr
    finally:
        await ex.close()
