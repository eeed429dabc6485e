"""`make demo`: start the reference server on a free loopback port with a temporary state
dir, run every example against it, stop the server.

Text generation runs when a provider is configured (DEEPEXEC_SERVER_DEEPSEEK_KEY, or
DEEPEXEC_SERVER_OPENAI_BASE_URL [+ _API_KEY, _MODEL]); otherwise the examples say how to
configure one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = [
    "quickstart_sync.py",
    "quickstart_async.py",
    "job_management.py",
    "code_execution_job.py",
    "text_generation_job.py",
    "streaming.py",
    "sessions.py",
    "error_handling.py",
]


def start_server(state_dir: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deepexec_server",
            "serve",
            "--port",
            "0",
            "--state-dir",
            state_dir,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            print(line.strip(), flush=True)
            return proc, line.rsplit("listening on ", 1)[1].strip()
    proc.kill()
    raise SystemExit("the server did not start; see its messages above")


def main() -> int:
    configured = any(
        os.environ.get(v)
        for v in ("DEEPEXEC_SERVER_DEEPSEEK_KEY", "DEEPEXEC_SERVER_OPENAI_BASE_URL")
    )
    if not configured:
        print(
            "Text generation: no provider configured. Set DEEPEXEC_SERVER_DEEPSEEK_KEY=sk-... "
            "(DeepSeek) or DEEPEXEC_SERVER_OPENAI_BASE_URL=http://host:port/v1 (any "
            "OpenAI-compatible server: Ollama, vLLM, llama.cpp) and run `make demo` again.",
            flush=True,
        )
    failures = 0
    with tempfile.TemporaryDirectory(prefix="deepexec-demo-") as state_dir:
        server, endpoint = start_server(state_dir)
        env = dict(os.environ, DEEPEXEC_ENDPOINT=endpoint)
        try:
            for name in EXAMPLES:
                print(f"\n=== examples/{name}", flush=True)
                done = subprocess.run([sys.executable, str(HERE / name)], env=env, timeout=120)
                if done.returncode != 0:
                    failures += 1
                    print(f"!!! examples/{name} exited with {done.returncode}", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"\ndemo finished: {len(EXAMPLES) - failures} of {len(EXAMPLES)} examples ran cleanly")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
