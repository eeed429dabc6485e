"""Overhead of the SDK facade, measured side by side in one run.

A local aiohttp.web server (a separate process, so its CPU time is not charged to either
side) answers ``POST /v1/execute`` at once with a fixed, valid CodeExecutionResponse
envelope, and ``GET /v1/health``. Then, interleaved round by round so a burst of noise on
this shared machine hits both sides of each pair:

(a) ``DeepExecAsyncClient.execute_code_and_wait`` vs a raw aiohttp POST of the same JSON
    body to the same handler (one ClientSession, ``orjson.loads`` of the answer);
    target ratio <= 1.10;
(b) ``DeepExecClient`` vs ``DeepExecAsyncClient`` on the same calls; target <= 1.3 (the
    calling thread runs the client's private loop; the same calls made from inside a running
    event loop, as in a Jupyter cell, where the helper thread runs it, are printed beside);
(c) ``python -c "import deepexec_sdk"`` vs ``python -c "import aiohttp"`` wall time,
    median of runs alternating the two; target < 2x.

Every measured figure and ratio is printed; the script exits 0 whenever it could measure
(the ratios are for people to read, never thresholds: see DESIGN.md).

    .venv/bin/python bench/bench_client.py [--calls 2000] [--rounds 40] [--imports 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "generated"))
sys.path.insert(0, str(ROOT))

from deepexec_protocol.constants import PROTOCOL_VERSION  # noqa: E402 - after the path

TARGETS = {"async_vs_raw": 1.10, "sync_vs_async": 1.3, "import": 2.0}

CODE = "print('Hello, World!')"
REQUEST = orjson.dumps(
    {
        "protocol_version": PROTOCOL_VERSION,
        "type": "code_execution",
        "input": {"code": CODE, "language": "python"},
    }
)
RESPONSE = orjson.dumps(
    {
        "protocol_version": PROTOCOL_VERSION,
        "type": "code_execution_response",
        "session_id": None,
        "status": "success",
        "output": {
            "type": "code_execution_result",
            "output": "Hello, World!\n",
            "stdout": "Hello, World!\n",
            "stderr": "",
            "exit_code": 0,
            "signal": None,
            "timed_out": False,
            "stdout_truncated": False,
            "stderr_truncated": False,
            "execution_time": 21.4,
            "memory_usage": 9437184,
            "language": "python",
        },
        "metadata": {"request_id": "req_5f2c9a"},
    }
)
HEALTH = orjson.dumps(
    {
        "protocol_version": PROTOCOL_VERSION,
        "type": "health_response",
        "status": "success",
        "output": {
            "status": "ok",
            "version": "0.1.0",
            "protocol_version": PROTOCOL_VERSION,
            "uptime": 1.0,
            "sandbox_backend": "local",
            "text_generation_available": False,
            "jobs_pending": 0,
            "jobs_running": 0,
        },
    }
)


# --------------------------------------------------------------------------- server


def serve() -> None:
    """Server mode: answer instantly; print the port on stdout; run until stdin closes."""

    async def execute(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=RESPONSE, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(body=HEALTH, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/execute", execute)
        app.router.add_get("/v1/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- timing


def per_call_us(total_s: float, calls: int) -> float:
    return total_s / calls * 1e6


async def timed_async(fn: Callable[[], Awaitable[object]], calls: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(calls):
        await fn()
    return time.perf_counter() - started


def timed_sync(fn: Callable[[], object], calls: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - started


def import_time(module: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        check=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"},
    )
    return time.perf_counter() - started


def line(label: str, ours: float, base: float, target: float, unit: str = "us/call") -> None:
    ratio = ours / base
    verdict = "ok" if ratio <= target else "MISSED"
    print(
        f"  {label:<44} {ours:9.1f} vs {base:9.1f} {unit:<8} ratio {ratio:5.2f}"
        f"  (target <= {target:g}: {verdict})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per side in (a), (b)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--imports", type=int, default=15, help="interpreter starts per side")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0

    from deepexec_protocol import api as ops
    from deepexec_protocol import models, structure

    from deepexec_sdk import DeepExecAsyncClient, DeepExecClient

    env = {"DEEPEXEC_CONFIG": os.devnull}
    for name in [n for n in os.environ if n.startswith("DEEPEXEC_")]:
        del os.environ[name]
    os.environ.update(env)

    proc, url = start_server()
    per_round = max(1, args.calls // args.rounds)
    calls = per_round * args.rounds
    loop = asyncio.new_event_loop()
    try:
        raw_session: aiohttp.ClientSession = loop.run_until_complete(_make_session())
        aclient = DeepExecAsyncClient(endpoint=url, max_retries=0)
        sclient = DeepExecClient(endpoint=url, max_retries=0)

        async def raw_call() -> object:
            async with raw_session.post(
                f"{url}/v1/execute",
                data=REQUEST,
                headers={"Content-Type": "application/json"},
            ) as resp:
                return orjson.loads(await resp.read())

        async def sdk_call() -> object:
            return await aclient.execute_code_and_wait(CODE, "python")

        # for the breakdown: the generated layer alone (what the facade is built on)
        gen_body = structure(orjson.loads(REQUEST), models.CodeExecutionRequest)

        async def gen_call() -> object:
            return await ops.code_execution.asyncio(raw_session, url, body=gen_body, timeout=60)

        def sync_call() -> object:
            return sclient.execute_code_and_wait(CODE, "python")

        async def sync_in_loop(n: int) -> float:
            # as in a Jupyter cell: the calling thread runs an event loop, so the sync
            # client's helper thread runs the private loop (blocking this one meanwhile)
            return timed_sync(sync_call, n)

        # the same answer on every side, and warm connections/caches
        assert loop.run_until_complete(raw_call())["output"]["exit_code"] == 0  # type: ignore[index]
        assert loop.run_until_complete(sdk_call()).exit_code == 0  # type: ignore[attr-defined]
        assert sync_call().exit_code == 0  # type: ignore[attr-defined]
        loop.run_until_complete(timed_async(raw_call, 200))
        loop.run_until_complete(timed_async(sdk_call, 200))
        loop.run_until_complete(timed_async(gen_call, 200))
        timed_sync(sync_call, 200)
        loop.run_until_complete(sync_in_loop(200))

        raw_t: list[float] = []
        gen_t: list[float] = []
        sdk_t: list[float] = []
        sync_t: list[float] = []
        jupyter_t: list[float] = []
        for r in range(args.rounds):
            order = ["raw", "gen", "sdk", "sync", "jupyter"]
            for side in order if r % 2 == 0 else reversed(order):
                if side == "raw":
                    raw_t.append(loop.run_until_complete(timed_async(raw_call, per_round)))
                elif side == "gen":
                    gen_t.append(loop.run_until_complete(timed_async(gen_call, per_round)))
                elif side == "sdk":
                    sdk_t.append(loop.run_until_complete(timed_async(sdk_call, per_round)))
                elif side == "sync":
                    sync_t.append(timed_sync(sync_call, per_round))
                else:
                    jupyter_t.append(loop.run_until_complete(sync_in_loop(per_round)))

        sclient.close()
        loop.run_until_complete(aclient.close())
        loop.run_until_complete(raw_session.close())
    finally:
        loop.close()
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)

    imports: dict[str, list[float]] = {"deepexec_sdk": [], "aiohttp": []}
    for module in imports:  # warm the OS file cache
        import_time(module)
    for _ in range(args.imports):
        for module in imports:
            imports[module].append(import_time(module))

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    print(
        f"DeepExec client overhead ({calls} calls per side in {args.rounds} interleaved "
        f"rounds; server in its own process)"
    )
    raw_us = per_call_us(sum(raw_t), calls)
    sdk_us = per_call_us(sum(sdk_t), calls)
    sync_us = per_call_us(sum(sync_t), calls)
    jupyter_us = per_call_us(sum(jupyter_t), calls)
    print(f"  raw aiohttp POST + orjson.loads            {raw_us:9.1f} us/call")
    gen_us = per_call_us(sum(gen_t), calls)
    print(f"  generated api.code_execution.asyncio       {gen_us:9.1f} us/call  (breakdown only)")
    print(f"  DeepExecAsyncClient.execute_code_and_wait  {sdk_us:9.1f} us/call")
    print(f"  DeepExecClient.execute_code_and_wait       {sync_us:9.1f} us/call")
    line("(a) async client / raw aiohttp (all calls)", sdk_us, raw_us, TARGETS["async_vs_raw"])
    print(
        f"      median of the {args.rounds} round ratios: "
        f"{med([s / r for s, r in zip(sdk_t, raw_t, strict=True)]):.3f}"
    )
    print(
        f"      of which the generated layer (generated / raw): {gen_us / raw_us:.3f}, "
        f"the facade (async client / generated): {sdk_us / gen_us:.3f}"
    )
    line("(b) sync client / async client (all calls)", sync_us, sdk_us, TARGETS["sync_vs_async"])
    print(
        f"      median of the {args.rounds} round ratios: "
        f"{med([y / s for y, s in zip(sync_t, sdk_t, strict=True)]):.3f}"
    )
    print(
        f"      the calling thread runs the private loop itself; called from inside a running"
        f" event loop\n      (a Jupyter cell: the helper thread runs it) {jupyter_us:.1f} us/call,"
        f" {jupyter_us / sdk_us:.2f}x the async client (breakdown only)"
    )
    sdk_imp = med(imports["deepexec_sdk"]) * 1e3
    aio_imp = med(imports["aiohttp"]) * 1e3
    print(
        f"  python -c 'import deepexec_sdk' median    {sdk_imp:9.1f} ms "
        f"(min {min(imports['deepexec_sdk']) * 1e3:.1f})"
    )
    print(
        f"  python -c 'import aiohttp' median         {aio_imp:9.1f} ms "
        f"(min {min(imports['aiohttp']) * 1e3:.1f})"
    )
    line("(c) import deepexec_sdk / import aiohttp", sdk_imp, aio_imp, TARGETS["import"], "ms")
    return 0


async def _make_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


if __name__ == "__main__":
    sys.exit(main())
