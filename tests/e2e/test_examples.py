"""Every example of examples/ (the spec README's examples) run as a subprocess against a
real server, with and without a text provider; their printed output is checked."""

from __future__ import annotations

import asyncio
import re
import sys

from tests.e2e.conftest import REPO, ServerFactory, ServerProcess, sandbox_env

EXAMPLES = REPO / "examples"
CODE_EXAMPLES = ["job_management.py", "code_execution_job.py", "sessions.py", "error_handling.py"]
TEXT_EXAMPLES = [
    "quickstart_sync.py",
    "quickstart_async.py",
    "text_generation_job.py",
    "streaming.py",
]


async def run_example(srv: ServerProcess, name: str, timeout: float = 60) -> str:
    env = sandbox_env()
    env["DEEPEXEC_ENDPOINT"] = srv.url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=str(REPO),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"examples/{name} ran past {timeout} s") from None
    text = out.decode()
    assert proc.returncode == 0, f"examples/{name} exited with {proc.returncode}:\n{text}"
    assert "Traceback" not in text, text
    return text


async def run_all(srv: ServerProcess, names: list[str]) -> dict[str, str]:
    outputs = await asyncio.gather(*(run_example(srv, n) for n in names))
    return dict(zip(names, outputs, strict=True))


def _check_quickstart_code(out: str) -> None:
    assert "Output: Hello, World!\n" in out
    assert "Exit code: 0\n" in out
    ms = re.search(r"Execution time: ([0-9.]+) ms", out)
    assert ms and 0 < float(ms.group(1)) < 10_000, out


def _check_code_examples(outs: dict[str, str]) -> None:
    out = outs["job_management.py"]
    job_id = re.search(r"Job submitted with ID: (job_[0-9a-f]{32})\n", out)
    assert job_id, out
    progress = [int(p) for p in re.findall(r"Progress: (\d+)%", out)]
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    assert progress[-1] == 100
    assert any(0 < p < 100 for p in progress), f"no intermediate progress seen: {progress}"
    assert "Job status: COMPLETED, Progress: 100%" in out
    assert "output='Analyzing data...\\n'" in out and "exit_code=0" in out
    assert "##deepexec-progress" not in out  # progress lines are stripped from the output
    assert re.search(r"Job canceled at: \d{4}-\d\d-\d\dT[0-9:.]+Z\n", out), out
    assert "Canceled job status: CANCELED (No longer needed)" in out

    out = outs["code_execution_job.py"]
    assert re.search(r"Code execution job submitted with ID: job_[0-9a-f]{32}\n", out)
    assert "Output: Step 0\nStep 1\nStep 2\nStep 3\nStep 4\n" in out
    assert "Exit code: 0\n" in out
    seen = [int(p) for p in re.findall(r"progress (\d+)%", out)]
    assert seen and seen == sorted(seen) and seen[-1] == 100, seen
    ms = re.search(r"Execution time: ([0-9.]+) ms", out)
    assert ms and 4500 < float(ms.group(1)) < 30_000  # five sleeps of 1 s
    mem = re.search(r"Memory usage: (\d+) bytes", out)
    assert mem and int(mem.group(1)) > 1_000_000
    assert out.rstrip().endswith("Output: Hello, World!")

    out = outs["sessions.py"]
    assert "Inside the session: kept\n" in out
    assert "Outside the session the file exists: False\n" in out

    out = outs["error_handling.py"]
    assert out.startswith("Output: Hello, World!\n"), out
    assert "Execution failed with exit code 3\nOutput: oops\n" in out
    assert "Operation timed out after 1 seconds" in out


async def test_examples_without_text_provider(start_server: ServerFactory) -> None:
    """Code examples work; text examples say how to configure a provider."""
    srv = start_server()
    outs = await run_all(srv, CODE_EXAMPLES + TEXT_EXAMPLES)
    _check_code_examples(outs)
    for name in ("quickstart_sync.py", "quickstart_async.py"):
        out = outs[name]
        _check_quickstart_code(out)
        assert "Text generation failed: no text generation provider is configured" in out
        assert "code=provider_not_configured, http_status=503" in out
    assert "Text generation is not configured on this server" in outs["text_generation_job.py"]
    out = outs["streaming.py"]
    assert "[stdout] tick 0\n[stdout] tick 1\n[stdout] tick 2\n" in out
    assert re.search(r"exit code 0 in [0-9.]+ ms", out)
    assert "Streaming text needs a provider: no text generation provider" in out


async def test_text_examples_with_fake_provider(server: ServerProcess) -> None:
    """With a provider configured, the text examples print the generated text."""
    outs = await run_all(server, TEXT_EXAMPLES)
    for name in ("quickstart_sync.py", "quickstart_async.py"):
        out = outs[name]
        _check_quickstart_code(out)
        assert "Generated text: Echo: Explain quantum computing in simple terms\n" in out
        assert "Model: deepseek-v3\n" in out
        assert re.search(r"Generation time: [0-9.]+ ms", out)
        assert "failed" not in out
    out = outs["text_generation_job.py"]
    assert re.search(r"Text generation job submitted with ID: job_[0-9a-f]{32}\n", out)
    assert "Generated text: Echo: Write a short poem about artificial intelligence\n" in out
    assert "Token usage: Usage(prompt_tokens=7, completion_tokens=8, total_tokens=15)" in out
    assert "Generated text: Echo: Explain how neural networks work\n" in out
    out = outs["streaming.py"]
    assert "[stdout] tick 2\n" in out
    assert "Echo: Count to five\n" in out
    assert "usage: Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)" in out
