"""The reference server end to end, measured side by side in one run.

Starts the real server (``python -m deepexec_server serve --port 0``, a subprocess) with
the TEST DOUBLE fake OpenAI-compatible provider (``tests/fakes``) as its text provider,
then measures, through the real SDK:

1. Idle memory: resident memory of the server process and of its whole process tree
   (the warm-pool sandboxes included) after start and a few requests, from /proc
   (RSS, and PSS, which splits shared pages fairly); target tree RSS <= 80 MB.
2. Job wait overhead: ``execute_code_job`` + ``get_code_execution_result`` vs
   ``execute_code_and_wait`` on ``print(1)``, N each, interleaved (the order alternating
   per round); ratio of medians, target <= 1.05. One request on each side: the SDK submits
   through ``submit_job_stream`` and the wait reads the events of that same response.
   A supplementary row does the same for a program of ~50 ms (``time.sleep(0.05)``),
   where the fixed cost of a durable job (its insert, its completion write, its events)
   weighs less; it is printed for comparison, the target is print(1)'s.
3. Streaming relay: time to the first generated piece through server + SDK minus the
   time to the first piece straight from the fake provider (chunk delay 50 ms), on
   interleaved runs; median difference, target <= 5 ms.
4. Throughput: ``print(1)`` from 8 concurrent clients for ~10 s (executions/s), against
   the machine's cold-start limit = cores / CPU seconds of one sandboxed
   ``/usr/bin/python3 -c pass`` (run as is in a fresh sandbox of the local executor,
   without the server, measured with getrusage(RUSAGE_CHILDREN) deltas); ratio target
   >= 0.8. The machine's speed drifts by tens of percent over minutes here, so the run
   and the limit are measured in alternating slices (throughput, then the limit, five
   times; the server idles while the limit is measured), and the ratio of each slice is
   printed too. Also printed, for comparison, the ratio against ``pass`` run as an execution
   (through python's bootstrap, whose short exit skips the module teardown). Also printed: the CPU
   the server's process tree spent per execution during the run, how busy the whole
   machine was (and how much of that the measured processes account for), and, side by side,
   the rate of the local executor alone (no HTTP, job store or SDK) with as many
   concurrent callers.

Every figure is printed; the script exits 0 whenever it could measure (the targets are
for people to read, never thresholds: see DESIGN.md).

    .venv/bin/python bench/bench_server.py [--n 30] [--seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "generated"))
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from deepexec_sdk import DeepExecAsyncClient  # noqa: E402
from tests.fakes.fake_openai_provider import FakeOpenAIServer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CORES = os.cpu_count() or 1
TARGETS = {
    "wait": 1.05,
    "relay_ms": 5.0,
    "rss_mb": 80.0,
    "throughput": 0.8,
    "latency_warm": 1.0,
    "latency_cold": 1.3,
}


# ---------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            out.setdefault(ppid, []).append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    children, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _uid(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its reaped children (cutime + cstime)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    f = stat[stat.rindex(b")") + 2 :].split()
    # fields after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in f[11:15]) / CLK_TCK


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(v[:8])
    return total - v[3] - v[4], total


def machine_load(seconds: float = 1.0) -> float:
    """Cores busy (with anything) over ``seconds``, measured now."""
    b0, t0 = machine_jiffies()
    time.sleep(seconds)
    b1, t1 = machine_jiffies()
    return (b1 - b0) / max(1, t1 - t0) * CORES


def tree_cpu_seconds(pid: int) -> float:
    """CPU of the whole live tree (reaped children included via cutime/cstime)."""
    total = 0.0
    for p in tree(pid):
        try:
            total += cpu_seconds(p)
        except (OSError, ValueError):
            pass
    return total


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="deepexec-bench-server-"))
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEXEC_")}
        child_env.update(env)
        child_env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'generated'}"
        self.out = self.dir / "stdout"
        self.err = self.dir / "stderr"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "deepexec_server",
                    "serve",
                    "--port",
                    "0",
                    "--state-dir",
                    str(self.dir / "state"),
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=err,
                env=child_env,
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", self.out.read_text())
            if found:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.proc.kill()
        raise SystemExit("the server did not start:\n" + self.err.read_text()[-3000:])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class FakeThread:
    def __init__(self, chunk_delay: float) -> None:
        self.fake = FakeOpenAIServer(chunk_delay=chunk_delay)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def client(url: str) -> DeepExecAsyncClient:
    return DeepExecAsyncClient(endpoint=url, max_retries=0, timeout=60)


# ---------------------------------------------------------------------------- measurements


def memory(server: Server) -> dict[str, float]:
    pids = tree(server.proc.pid)
    sandbox = [p for p in pids if _uid(p) >= 1000]  # warm-pool sandboxes run as uid >= 1000
    mb = 1024.0
    return {
        "server_rss": _status_kb(server.proc.pid, "VmRSS") / mb,
        "server_pss": _pss_kb(server.proc.pid) / mb,
        "tree_rss": sum(_status_kb(p, "VmRSS") for p in pids) / mb,
        "tree_pss": sum(_pss_kb(p) for p in pids) / mb,
        "sandbox_rss": sum(_status_kb(p, "VmRSS") for p in sandbox) / mb,
        "sandbox_pss": sum(_pss_kb(p) for p in sandbox) / mb,
        "processes": len(pids),
        "sandbox_processes": len(sandbox),
    }


#: the program of the supplementary job-wait row: ~50 ms of work, where the fixed cost of
#: a durable job weighs less than on print(1)
WAIT_50MS = "import time\ntime.sleep(0.05)\nprint(1)"


async def wait_overhead(
    url: str, n: int, code: str = "print(1)"
) -> tuple[list[float], list[float]]:
    async with client(url) as c:

        async def via_job() -> float:
            t = time.perf_counter()
            job = await c.execute_code_job(code, "python")
            r = await c.get_code_execution_result(job.job_id)
            elapsed = (time.perf_counter() - t) * 1000
            assert r.stdout == "1\n", r
            return elapsed

        async def direct() -> float:
            t = time.perf_counter()
            r = await c.execute_code_and_wait(code, "python")
            elapsed = (time.perf_counter() - t) * 1000
            assert r.stdout == "1\n", r
            return elapsed

        for _ in range(3):  # warm up both paths
            await via_job()
            await direct()
        jobs: list[float] = []
        directs: list[float] = []
        for i in range(n):
            pair = (via_job, direct) if i % 2 == 0 else (direct, via_job)
            for fn in pair:
                await asyncio.sleep(0.05)  # let the warm pool refill: same start for both
                (jobs if fn is via_job else directs).append(await fn())
        return jobs, directs


async def first_chunk_direct(session: aiohttp.ClientSession, base_url: str) -> float:
    body = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "one two three"}],
    }
    t = time.perf_counter()
    async with session.post(f"{base_url}/chat/completions", json=body) as resp:
        async for line in resp.content:
            if (
                line.startswith(b"data: ")
                and b'"content": "' in line
                and b'"content": ""' not in line
            ):
                elapsed = (time.perf_counter() - t) * 1000
                break
        else:
            raise RuntimeError("no chunk from the fake")
        async for _ in resp.content:  # drain, as the server does
            pass
    return elapsed


async def first_chunk_server(c: DeepExecAsyncClient) -> float:
    t = time.perf_counter()
    stream = await c.generate_text_stream("one two three", model="fake-model")
    elapsed = None
    async for _piece in stream:
        if elapsed is None:
            elapsed = (time.perf_counter() - t) * 1000
    assert elapsed is not None
    return elapsed


async def relay(url: str, fake_url: str, n: int) -> tuple[list[float], list[float]]:
    async with client(url) as c, aiohttp.ClientSession() as s:
        for _ in range(3):
            await first_chunk_direct(s, fake_url)
            await first_chunk_server(c)
        direct: list[float] = []
        through: list[float] = []
        for i in range(n):
            if i % 2 == 0:
                direct.append(await first_chunk_direct(s, fake_url))
                through.append(await first_chunk_server(c))
            else:
                through.append(await first_chunk_server(c))
                direct.append(await first_chunk_direct(s, fake_url))
        return direct, through


async def throughput(url: str, clients: int, seconds: float, pid: int) -> dict[str, float]:
    """``clients`` SDK clients running print(1) back to back for ``seconds`` (after one
    untimed call each, which connects)."""
    sdk_clients = [client(url) for _ in range(clients)]
    counts = [0] * clients
    try:
        await asyncio.gather(*(c.execute_code_and_wait("print(1)", "python") for c in sdk_clients))
        stop = time.monotonic() + seconds

        async def worker(i: int) -> None:
            while time.monotonic() < stop:
                r = await sdk_clients[i].execute_code_and_wait("print(1)", "python")
                assert r.stdout == "1\n", r
                counts[i] += 1

        return await _timed(worker, clients, counts, pid)
    finally:
        for c in sdk_clients:
            await c.close()


async def _timed(worker: Any, clients: int, counts: list[int], pid: int) -> dict[str, float]:
    cpu0 = tree_cpu_seconds(pid)
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0, _ = machine_jiffies()
    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.monotonic() - t0
    busy1, _ = machine_jiffies()
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu1 = tree_cpu_seconds(pid)
    total = sum(counts)
    return {
        "machine_busy": (busy1 - busy0) / CLK_TCK / elapsed,
        "executions": total,
        "seconds": elapsed,
        "rate": total / elapsed,
        "server_cpu_per_exec": (cpu1 - cpu0) / max(total, 1),
        "client_cpu_per_exec": (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime)
        / max(total, 1),
    }


def sandbox_cpu(n: int) -> dict[str, float]:
    """CPU seconds of one sandboxed ``/usr/bin/python3 -c pass``, run as is in a fresh
    sandbox of the local executor (``LocalExecutor.run_command``: cold, no warm pool),
    one after the other: ``children`` from RUSAGE_CHILDREN deltas (the definition of the
    limit), ``executor`` the executor's own CPU in this process, ``machine`` the whole
    machine's busy time per run (/proc/stat, minus the load seen just before: kernel
    threads included, other processes' load not quite excluded); ``via_bootstrap``, the
    children's CPU of ``pass`` as an execution (through python's bootstrap, which ends
    the interpreter without its module teardown, see languages.py); and ``bare``, a bare
    ``/usr/bin/python3 -c pass``."""
    from deepexec_server.sandbox import ExecutionRequest, SandboxSettings
    from deepexec_server.sandbox.local import LocalExecutor

    runtime = Path(tempfile.gettempdir()) / "deepexec-bench-runtime"
    settings = SandboxSettings(languages=("python",), runtime_dir=runtime, warm_pool_size=0)

    def cpu(who: int) -> float:
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    async def run() -> dict[str, float]:
        ex = LocalExecutor(settings)
        await ex.start()
        try:
            req = ExecutionRequest(code="pass", language="python", limits=settings.defaults)
            argv = ["/usr/bin/python3", "-c", "pass"]
            for _ in range(3):
                await ex.execute(req)
                await ex.run_command(argv)
            await asyncio.sleep(0.5)
            baseline = machine_load(1.0)
            c0, s0 = cpu(resource.RUSAGE_CHILDREN), cpu(resource.RUSAGE_SELF)
            b0, _ = machine_jiffies()
            t0 = time.monotonic()
            for _ in range(n):
                raw = await ex.run_command(argv)
                assert raw.wait_status == 0, raw
                await asyncio.sleep(0.03)  # the prepared scratch is replaced meanwhile
            await asyncio.sleep(0.3)  # let deferred teardowns finish
            elapsed = time.monotonic() - t0 - 0.03 * n
            b1, _ = machine_jiffies()
            c1 = cpu(resource.RUSAGE_CHILDREN)
            out = {
                "children": (c1 - c0) / n,
                "executor": (cpu(resource.RUSAGE_SELF) - s0) / n,
                "machine": ((b1 - b0) / CLK_TCK - baseline * elapsed) / n,
            }
            for _ in range(n):
                done = await ex.execute(req)
                assert done.exit_code == 0, done
                await asyncio.sleep(0.03)
            await asyncio.sleep(0.3)
            out["via_bootstrap"] = (cpu(resource.RUSAGE_CHILDREN) - c1) / n
            return out
        finally:
            await ex.close()

    out = asyncio.run(run())
    c0 = cpu(resource.RUSAGE_CHILDREN)
    for _ in range(n):
        subprocess.run(["/usr/bin/python3", "-c", "pass"], env={}, check=True)
    out["bare"] = (cpu(resource.RUSAGE_CHILDREN) - c0) / n
    return out


def throughput_and_limit(
    url: str, clients: int, seconds: float, pid: int, n: int, slices: int = 5
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """:func:`throughput` and :func:`sandbox_cpu` in alternating slices (so that both see
    the machine at the same speed): the throughput over all slices, the limit's CPU
    figures averaged over all slices, and each slice's ratio measured / limit."""
    tps: list[dict[str, float]] = []
    cpus: list[dict[str, float]] = []
    for _ in range(slices):
        tps.append(asyncio.run(throughput(url, clients, seconds / slices, pid)))
        cpus.append(sandbox_cpu(max(4, n // slices)))
    executions = sum(t["executions"] for t in tps)
    elapsed = sum(t["seconds"] for t in tps)
    tp = {
        "executions": executions,
        "seconds": elapsed,
        "rate": executions / elapsed,
        "machine_busy": sum(t["machine_busy"] * t["seconds"] for t in tps) / elapsed,
        **{
            key: sum(t[key] * t["executions"] for t in tps) / max(executions, 1)
            for key in ("server_cpu_per_exec", "client_cpu_per_exec")
        },
    }
    cpu = {key: statistics.fmean(c[key] for c in cpus) for key in cpus[0]}
    ratios = [t["rate"] * c["children"] / CORES for t, c in zip(tps, cpus, strict=True)]
    return tp, cpu, ratios


def sandbox_saturation(clients: int, seconds: float) -> float:
    """Executions/s of ``print(1)`` with the local executor alone (the server's default
    sandbox settings, warm pool included), ``clients`` at once: what the sandbox itself
    achieves on this machine without HTTP, job store or SDK."""
    from deepexec_server.sandbox import ExecutionRequest, SandboxSettings
    from deepexec_server.sandbox.local import LocalExecutor

    runtime = Path(tempfile.gettempdir()) / "deepexec-bench-runtime"
    settings = SandboxSettings(runtime_dir=runtime)

    async def run() -> float:
        ex = LocalExecutor(settings)
        await ex.start()
        try:
            req = ExecutionRequest(code="print(1)", language="python", limits=settings.defaults)
            await ex.wait_warm()
            stop = time.monotonic() + seconds
            count = 0

            async def worker() -> None:
                nonlocal count
                while time.monotonic() < stop:
                    out = await ex.execute(req)
                    assert out.stdout == "1\n", out
                    count += 1

            t0 = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return count / (time.monotonic() - t0)
        finally:
            await ex.close()

    return asyncio.run(run())


# ---------------------------------------------------------------------------- main


def bare_start_ms() -> float:
    """One bare cold start of Debian's interpreter, as the sandbox runs it (an empty
    environment, as in bench_sandbox.py)."""
    t0 = time.perf_counter()
    subprocess.run(
        ["/usr/bin/python3", "-c", "print(1)"], check=True, stdout=subprocess.DEVNULL, env={}
    )
    return (time.perf_counter() - t0) * 1000


async def latency(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    """execute_code_and_wait("print(1)") through each server vs a bare cold start,
    interleaved round by round (a short pause before each, as a lone request sees)."""
    out: dict[str, list[float]] = {"bare": [], **{k: [] for k in urls}}
    clients = {k: client(u) for k, u in urls.items()}
    try:
        for c in clients.values():
            await c.execute_code_and_wait("print(1)", "python")
        for _ in range(n):
            await asyncio.sleep(0.05)
            out["bare"].append(await asyncio.to_thread(bare_start_ms))
            for k, c in clients.items():
                await asyncio.sleep(0.05)
                t0 = time.perf_counter()
                await c.execute_code_and_wait("print(1)", "python")
                out[k].append((time.perf_counter() - t0) * 1000)
    finally:
        for c in clients.values():
            await c.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=30, help="runs per side (wait overhead)")
    parser.add_argument("--stream-runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--chunk-delay", type=float, default=0.05)
    args = parser.parse_args()

    from deepexec_server.sandbox import SandboxSettings
    from deepexec_server.sandbox.local import probe_local_sandbox

    reason = probe_local_sandbox(SandboxSettings())
    if reason is not None:
        print(f"local sandbox unavailable here, nothing measured: {reason}")
        return 0

    load = machine_load()  # before anything of ours runs
    fake = FakeThread(args.chunk_delay)
    server = Server(
        {
            "DEEPEXEC_SERVER_OPENAI_BASE_URL": fake.fake.base_url,
            "DEEPEXEC_SERVER_OPENAI_MODEL": "fake-model",
            "DEEPEXEC_SERVER_RATE_LIMIT": "0",
            "DEEPEXEC_CONFIG": "/dev/null",
        }
    )
    os.environ["DEEPEXEC_CONFIG"] = "/dev/null"
    print(f"DeepExec server bench: {CORES} cores, server at {server.url} (pid {server.proc.pid})")
    print(
        f"machine load before starting (other processes): {load:.2f} of {CORES} cores busy "
        "(figures below are noisier the higher this is)"
    )
    results: dict[str, Any] = {}
    try:

        async def few_requests() -> None:
            async with client(server.url) as c:
                await c.health()
                await c.list_languages()
                await c.execute_code_and_wait("print(1)", "python")
                await c.generate_text_and_wait("hello", model="fake-model")

        asyncio.run(few_requests())
        time.sleep(1.0)  # warm pool refilled, the server idle
        results["mem"] = memory(server)
        results["wait"] = asyncio.run(wait_overhead(server.url, args.n))
        results["wait50"] = asyncio.run(wait_overhead(server.url, max(10, args.n // 2), WAIT_50MS))
        results["relay"] = asyncio.run(relay(server.url, fake.fake.base_url, args.stream_runs))
        results["tp"], results["cpu"], results["slices"] = throughput_and_limit(
            server.url, args.clients, args.seconds, server.proc.pid, args.n
        )
        cold = Server(
            {
                "DEEPEXEC_SERVER_RATE_LIMIT": "0",
                "DEEPEXEC_SERVER_WARM_POOL": "0",
                "DEEPEXEC_CONFIG": "/dev/null",
            }
        )
        try:
            time.sleep(1.0)
            results["latency"] = asyncio.run(
                latency({"warm": server.url, "cold": cold.url}, args.n)
            )
        finally:
            cold.stop()
    finally:
        rc = server.stop()
        fake.stop()
    results["saturation"] = sandbox_saturation(args.clients, args.seconds)

    mem = results["mem"]
    print()
    print("1. idle memory (after start and a few requests)")
    print(
        f"   server process          RSS {mem['server_rss']:7.1f} MB   "
        f"PSS {mem['server_pss']:7.1f} MB"
    )
    print(
        f"   warm-pool sandboxes     RSS {mem['sandbox_rss']:7.1f} MB   PSS "
        f"{mem['sandbox_pss']:7.1f} MB   ({mem['sandbox_processes']} processes)"
    )
    print(
        f"   whole process tree      RSS {mem['tree_rss']:7.1f} MB   PSS {mem['tree_pss']:7.1f} MB"
        f"   ({mem['processes']} processes)   target <= {TARGETS['rss_mb']:.0f} MB"
    )

    jobs, directs = results["wait"]
    mj, md = statistics.median(jobs), statistics.median(directs)
    print()
    print(f"2. job wait overhead, print(1), {len(jobs)} runs each, interleaved")
    print(f"   execute_code_job + get_code_execution_result  median {mj:7.2f} ms")
    print(f"   execute_code_and_wait                         median {md:7.2f} ms")
    print(f"   difference of medians {mj - md:7.2f} ms")
    print(f"   ratio of medians {mj / md:.3f}   target <= {TARGETS['wait']}")
    jobs50, directs50 = results["wait50"]
    mj50, md50 = statistics.median(jobs50), statistics.median(directs50)
    print(
        f"   (supplementary, not the target's program: time.sleep(0.05), {len(jobs50)} runs "
        f"each: job {mj50:.2f} ms, direct {md50:.2f} ms, difference {mj50 - md50:.2f} ms, "
        f"ratio {mj50 / md50:.3f})"
    )

    direct, through = results["relay"]
    diffs = [t - d for d, t in zip(direct, through, strict=True)]
    print()
    print(
        f"3. streaming relay, time to first chunk, {len(direct)} runs each, fake chunk delay "
        f"{args.chunk_delay * 1000:.0f} ms"
    )
    print(f"   straight from the fake provider   median {statistics.median(direct):7.2f} ms")
    print(f"   through server + SDK              median {statistics.median(through):7.2f} ms")
    print(
        f"   added by server + SDK             median {statistics.median(diffs):7.2f} ms"
        f"   target <= {TARGETS['relay_ms']:.0f} ms"
    )

    tp = results["tp"]
    cpu = results["cpu"]
    sandboxed = cpu["children"]
    limit = CORES / sandboxed
    print()
    print(
        f"4. throughput, print(1) in python, {args.clients} concurrent clients, "
        f"{tp['seconds']:.1f} s"
    )
    print(
        f"   measured through server + SDK {tp['rate']:7.1f} executions/s "
        f"({tp['executions']} executions)"
    )
    print(
        f"   CPU of one sandboxed 'python3 -c pass' {sandboxed * 1000:7.2f} ms (RUSAGE_CHILDREN; "
        f"bare /usr/bin/python3 -c pass {cpu['bare'] * 1000:.2f} ms; the executor's own "
        f"{cpu['executor'] * 1000:.2f} ms; whole machine {cpu['machine'] * 1000:.2f} ms)"
    )
    via = cpu["via_bootstrap"]
    print(
        f"   ('pass' as an execution, through python's bootstrap and its short exit: "
        f"{via * 1000:.2f} ms; against that limit, {CORES / via:.1f}/s, the ratio would be "
        f"{tp['rate'] * via / CORES:.3f})"
    )
    print(
        f"   cold-start limit              {limit:7.1f} executions/s "
        f"(= {CORES} cores / {sandboxed * 1000:.2f} ms)"
    )
    print(
        f"   ratio measured / limit        {tp['rate'] / limit:7.3f}   "
        f"target >= {TARGETS['throughput']}"
    )
    print(
        "   (ratio of each of the alternating slices: "
        + ", ".join(f"{r:.3f}" for r in results["slices"])
        + ")"
    )
    used = tp["rate"] * (tp["server_cpu_per_exec"] + tp["client_cpu_per_exec"])
    print(
        f"   server tree CPU per execution {tp['server_cpu_per_exec'] * 1000:7.2f} ms; bench "
        f"clients' {tp['client_cpu_per_exec'] * 1000:.2f} ms; whole machine busy "
        f"{tp['machine_busy']:.2f} of {CORES} cores, {used:.2f} of them accounted to "
        "processes"
    )
    sat = results["saturation"]
    print(
        f"   local executor alone, same clients, no server: {sat:.1f} executions/s; "
        f"server / executor alone {tp['rate'] / sat:.3f}"
    )
    lat = results["latency"]
    bare, warm, cold_ms = (statistics.median(lat[k]) for k in ("bare", "warm", "cold"))
    print()
    print(
        f"5. latency of execute_code_and_wait('print(1)', 'python') through SDK + server, "
        f"{len(lat['bare'])} interleaved rounds"
    )
    print(f"   bare /usr/bin/python3 -c 'print(1)'   median {bare:7.2f} ms")
    print(
        f"   with the warm pool                   median {warm:7.2f} ms   ratio {warm / bare:.2f}"
        f"   target <= {TARGETS['latency_warm']}"
    )
    print(
        f"   without it (--warm-pool 0)           median {cold_ms:7.2f} ms   ratio "
        f"{cold_ms / bare:.2f}   target <= {TARGETS['latency_cold']}"
    )
    print()
    print(f"server exit status on SIGTERM: {rc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
