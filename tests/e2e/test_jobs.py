"""Jobs end to end: many concurrent clients, cancel (and the processes it kills),
durability across kill -9, idempotent submits, graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from deepexec_sdk import DeepExecAsyncClient
from deepexec_sdk.exceptions import (
    MCPCanceledError,
    MCPConflictError,
    MCPError,
    MCPNotFoundError,
    MCPServiceUnavailableError,
)
from tests.e2e.conftest import (
    ServerFactory,
    ServerProcess,
    all_jobs,
    envelope,
    job_state,
    make_client,
    pid_alive,
    pids_of_uid,
    wait_until,
)

# A program that reports its host uid (the sandbox maps it 1:1) and pids, starts a child
# that sleeps, and sleeps itself.
SLEEPER = r"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print("ids", os.getuid(), os.getpid(), child.pid, flush=True)
time.sleep(300)
"""


# ---------------------------------------------------------------------------- concurrency


async def test_sixteen_concurrent_clients_get_their_own_results(server: ServerProcess) -> None:
    """16 clients x 4 executions at once (direct and as jobs): every result is the
    caller's own, and no execution sees another's files."""
    code = (
        "import os, sys\n"
        "token = sys.stdin.read().strip()\n"
        "open('mine.txt', 'w').write(token)\n"
        "open('/tmp/mine.txt', 'w').write(token)\n"
        "print(token, os.environ['TOKEN'], sorted(os.listdir('.')), sorted(os.listdir('/tmp')))\n"
    )

    async def one_client(n: int) -> list[tuple[str, str]]:
        results = []
        async with make_client(server) as c:
            for k in range(4):
                token = f"client{n}-run{k}-{uuid.uuid4().hex}"
                if k % 2 == 0:
                    r = await c.execute_code_and_wait(
                        code, "python", environment={"TOKEN": token}, stdin=token
                    )
                else:
                    job = await c.execute_code_job(
                        code, "python", environment={"TOKEN": token}, stdin=token, tags=[f"c{n}"]
                    )
                    r = await c.get_code_execution_result(job.job_id, max_wait_time=60)
                results.append((token, r.stdout))
        return results

    started = time.monotonic()
    per_client = await asyncio.wait_for(
        asyncio.gather(*(one_client(n) for n in range(16))), timeout=80
    )
    elapsed = time.monotonic() - started
    pairs = [p for client in per_client for p in client]
    assert len(pairs) == 64
    for token, stdout in pairs:
        assert stdout == f"{token} {token} ['mine.txt'] ['mine.txt']\n"
    assert len({t for t, _ in pairs}) == 64
    async with make_client(server) as c:
        for n in (0, 7, 15):
            tagged = [j async for j in c.list_jobs(tag=f"c{n}")]
            assert len(tagged) == 2 and all(j.status.value == "COMPLETED" for j in tagged)
        assert (await c.health()).status.value == "ok"
    assert elapsed < 80


async def test_execute_code_stream_yields_output_printed_before_iteration(
    server: ServerProcess,
) -> None:
    """execute_code_stream promises the program's output as it is produced; output the
    program printed before the caller started iterating (before the SDK's event
    subscription reached the server) is replayed, not lost."""
    code = "import time\nprint('early', flush=True)\ntime.sleep(1)\nprint('late', flush=True)"
    async with make_client(server) as c:
        stream = await c.execute_code_stream(code, "python")
        await asyncio.sleep(0.5)  # the program has printed 'early' by now
        chunks = []
        async with asyncio.timeout(20):
            async for chunk in stream:
                chunks.append(chunk.data)
    assert stream.result is not None and stream.result.stdout == "early\nlate\n"
    assert "".join(chunks) == stream.result.stdout


async def test_execute_code_stream_survives_a_cut_connection(
    server: ServerProcess, unused_tcp_port: int
) -> None:
    """A proxy cuts the first event stream after the first output chunk: the SDK
    reconnects and the stream still holds every chunk exactly once."""
    cuts = 0

    async def proxy(request: web.Request) -> web.StreamResponse:
        nonlocal cuts
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                request.method, server.url + request.path_qs, data=body, headers=headers
            ) as upstream,
        ):
            resp = web.StreamResponse(status=upstream.status)
            resp.content_type = upstream.content_type
            await resp.prepare(request)
            # the first stream of events: the one the submit opened
            cut_this = request.path.endswith(("/events", "/stream")) and cuts == 0
            async for line in upstream.content:
                await resp.write(line)
                if cut_this and line.startswith(b"data:") and b"job_output_event" in line:
                    cuts += 1
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    code = "import time\nfor i in range(8):\n    print(i, flush=True)\n    time.sleep(0.1)"
    try:
        async with DeepExecAsyncClient(
            endpoint=f"http://127.0.0.1:{unused_tcp_port}", max_retries=3, retry_delay=0.05
        ) as c:
            stream = await c.execute_code_stream(code, "python")
            chunks = []
            async with asyncio.timeout(30):
                async for chunk in stream:
                    chunks.append(chunk.data)
    finally:
        await runner.cleanup()
    assert cuts == 1
    expected = "".join(f"{i}\n" for i in range(8))
    assert stream.result is not None and stream.result.stdout == expected
    assert "".join(chunks) == expected


# ---------------------------------------------------------------------------- cancel


async def test_cancel_running_job_kills_its_processes(server: ServerProcess) -> None:
    async with make_client(server) as c:
        stream = await c.execute_code_stream(SLEEPER, "python", timeout=120)
        first = ""

        async def first_chunk() -> None:
            nonlocal first
            async for chunk in stream:
                first += chunk.data
                if "\n" in first:
                    return

        # the stream yields output as it is produced: the program is running now
        await asyncio.wait_for(first_chunk(), timeout=20)
        m = re.fullmatch(r"ids (\d+) (\d+) (\d+)\n", first)
        assert m, first
        uid = int(m.group(1))
        assert uid >= 1000, "the sandbox must run under an unprivileged host uid"
        procs = pids_of_uid(uid)
        assert len(procs) >= 2, f"the program and its child run under uid {uid}: {procs}"
        assert await job_state(c, stream.job_id) == "RUNNING"

        canceled = await c.cancel_job(stream.job_id, reason="e2e: stop it")
        assert canceled.status.value == "CANCELED"
        assert canceled.reason == "e2e: stop it"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+Z", canceled.canceled_at)

        await wait_until(
            lambda: not any(pid_alive(p) for p in procs) and not pids_of_uid(uid),
            timeout=10,
            what=f"the processes of uid {uid} to be gone",
        )
        status = await c.get_job_status(stream.job_id)
        assert status.status.value == "CANCELED"
        assert status.canceled_at == canceled.canceled_at
        assert status.cancel_reason == "e2e: stop it"
        assert status.error is not None and status.error.code.value == "job_canceled"
        assert status.finished_at is not None
        with pytest.raises(MCPCanceledError):
            await c.get_code_execution_result(stream.job_id, max_wait_time=10)
        # a second cancel is a conflict; the job stays as it was
        with pytest.raises(MCPConflictError) as err:
            await c.cancel_job(stream.job_id, reason="again")
        assert err.value.http_status == 409
        assert (await c.get_job_status(stream.job_id)).cancel_reason == "e2e: stop it"


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_closing_a_session_stops_everything_running_in_it(
    start_server: ServerFactory,
) -> None:
    """close_session stops a direct execution running in the session (its call raises
    not_found; its processes are gone), cancels the session's running and pending jobs
    (their processes are gone), and removes the directory before it answers."""
    srv = start_server(env={"DEEPEXEC_SERVER_CONCURRENCY": "1"})
    async with make_client(srv) as c:
        # a direct execution, running
        session = await c.create_session()
        marker = f"deepexec-e2e-{uuid.uuid4().hex}"
        program = (
            "import subprocess, sys, time\n"
            "sleeper = 'import time; time.sleep(300)'\n"
            f"subprocess.Popen([sys.executable, '-c', sleeper, {marker!r}])\n"
            "time.sleep(300)\n"
        )
        direct = asyncio.create_task(
            c.execute_code_and_wait(program, "python", session_id=session.session_id, timeout=120)
        )
        await wait_until(lambda: bool(_pids_with(marker)), timeout=20, what="the program")
        procs = _pids_with(marker)
        await session.close()
        assert not (srv.state_dir / "sessions" / session.session_id).exists()
        with pytest.raises(MCPNotFoundError, match="closed during the execution") as err:
            await asyncio.wait_for(direct, timeout=20)
        assert err.value.http_status == 404
        await wait_until(
            lambda: not any(pid_alive(p) for p in procs), timeout=10, what="its processes to end"
        )

        # a running job, a pending one, and a direct execution waiting for its turn
        session = await c.create_session()
        sid = session.session_id
        stream = await c.execute_code_stream(SLEEPER, "python", timeout=120, session_id=sid)
        first = ""
        async for chunk in stream:
            first += chunk.data
            if "\n" in first:
                break
        m = re.fullmatch(r"ids (\d+) (\d+) (\d+)\n", first)
        assert m, first
        uid = int(m.group(1))
        procs = pids_of_uid(uid)
        assert len(procs) >= 2, procs
        pending = await c.execute_code_job("open('ran', 'w')", "python", session_id=sid)
        assert await job_state(c, pending.job_id) == "PENDING"  # the one worker is busy
        waiting = asyncio.create_task(
            c.execute_code_and_wait("print('late')", "python", session_id=sid)
        )
        await asyncio.sleep(0.3)
        await session.close()
        assert not (srv.state_dir / "sessions" / sid).exists()
        for job_id in (stream.job_id, pending.job_id):
            status = await c.get_job_status(job_id)
            assert status.status.value == "CANCELED", status
            assert status.cancel_reason == "its session was closed"
        with pytest.raises(MCPNotFoundError):
            await asyncio.wait_for(waiting, timeout=20)
        await wait_until(
            lambda: not any(pid_alive(p) for p in procs) and not pids_of_uid(uid),
            timeout=10,
            what=f"the processes of uid {uid} to be gone",
        )
        with pytest.raises(MCPNotFoundError):
            await c.execute_code_and_wait("print(1)", "python", session_id=sid)
        assert (await c.execute_code_and_wait("print(1)", "python")).stdout == "1\n"


async def test_cancel_pending_job_never_runs(start_server: ServerFactory) -> None:
    srv = start_server(env={"DEEPEXEC_SERVER_CONCURRENCY": "1"})
    async with make_client(srv) as c:
        blocker = await c.execute_code_job("import time; time.sleep(60)", "python", timeout=120)
        await wait_until(lambda: _is(c, blocker.job_id, "RUNNING"), 20, what="the blocker to run")
        pending = await c.execute_code_job("print('should never run')", "python")
        assert await job_state(c, pending.job_id) == "PENDING"
        canceled = await c.cancel_job(pending.job_id, reason="not needed")
        assert canceled.status.value == "CANCELED"
        await c.cancel_job(blocker.job_id)
        status = await c.get_job_status(pending.job_id)
        assert status.status.value == "CANCELED"
        assert status.started_at is None and status.result is None


async def _is(c: DeepExecAsyncClient, job_id: str, state: str) -> bool:
    return await job_state(c, job_id) == state


# ---------------------------------------------------------------------------- kill -9


async def test_jobs_survive_kill_9(start_server: ServerFactory) -> None:
    """SIGKILL the server with one job running and three pending; on restart the pending
    ones run to COMPLETED, the interrupted one is re-queued (or failed with a clear
    error), and list_jobs still shows all four."""
    srv = start_server(env={"DEEPEXEC_SERVER_CONCURRENCY": "1"})
    async with make_client(srv) as c:
        long_job = await c.execute_code_job(SLEEPER, "python", timeout=120, name="long")
        stream = c.job_events(long_job.job_id)
        uid = None
        async with asyncio.timeout(20):
            async for event in stream:
                data = getattr(event, "data", "")
                if data.startswith("ids "):
                    uid = int(data.split()[1])
                    break
        await stream.aclose()  # type: ignore[attr-defined]
        assert uid is not None
        pending = [
            await c.execute_code_job(f"print('pending {i}')", "python", name=f"p{i}", priority=10)
            for i in range(3)
        ]
        for job in pending:
            assert await job_state(c, job.job_id) == "PENDING"
        assert await job_state(c, long_job.job_id) == "RUNNING"
    assert pids_of_uid(uid)

    assert srv.kill() == -signal.SIGKILL
    # the sandbox dies with the server (bubblewrap --die-with-parent)
    await wait_until(lambda: not pids_of_uid(uid), 10, what="the orphaned sandbox to die")

    srv.restart()
    async with make_client(srv) as c:
        for i, job in enumerate(pending):
            result = await c.get_code_execution_result(job.job_id, max_wait_time=30)
            assert result.stdout == f"pending {i}\n"
        jobs = await all_jobs(c)
        assert set(jobs) == {long_job.job_id, *(j.job_id for j in pending)}
        interrupted = jobs[long_job.job_id]
        if interrupted.status.value == "FAILED":
            assert interrupted.error is not None
            assert "restart" in interrupted.error.message
        else:
            assert interrupted.status.value in ("PENDING", "RUNNING")  # re-queued
            await c.cancel_job(long_job.job_id, reason="end of test")
        assert (await c.health()).status.value == "ok"
    recovered = re.search(
        r"recovered after an unclean stop: (\d+) job\(s\) re-queued, (\d+) failed", srv.log()
    )
    assert recovered and int(recovered.group(1)) + int(recovered.group(2)) == 1


# ---------------------------------------------------------------------------- idempotency


async def test_idempotent_submit_raw(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    key = str(uuid.uuid4())
    name = f"idem-{key[:8]}"
    body = envelope(
        "submit_job",
        {
            "name": name,
            "job_type": "code_execution",
            "data": {"code": "print(1)", "language": "python"},
        },
    )
    headers = {"Idempotency-Key": key}
    async with http.post(f"{server.url}/v1/jobs", json=body, headers=headers) as r1:
        assert r1.status == 200
        first = await r1.json()
    async with http.post(f"{server.url}/v1/jobs", json=body, headers=headers) as r2:
        assert r2.status == 200
        second = await r2.json()
    assert first["output"]["job_id"] == second["output"]["job_id"]
    assert first["output"]["created_at"] == second["output"]["created_at"]

    changed = envelope(
        "submit_job",
        {
            "name": name,
            "job_type": "code_execution",
            "data": {"code": "print(2)", "language": "python"},
        },
    )
    async with http.post(f"{server.url}/v1/jobs", json=changed, headers=headers) as r3:
        assert r3.status == 409
        third = await r3.json()
    assert third["status"] == "error" and third["error"]["code"] == "conflict"

    async with make_client(server) as c:
        named = [j async for j in c.list_jobs() if j.name == name]
    assert [j.job_id for j in named] == [first["output"]["job_id"]]


async def test_submit_retried_after_lost_response_creates_one_job(
    server: ServerProcess, unused_tcp_port: int
) -> None:
    """A proxy forwards the first submit to the server, then drops the connection before
    the answer reaches the SDK; the SDK retries with the same Idempotency-Key and gets the
    job that was created, and there is only one."""
    seen_keys: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                request.method, server.url + request.path_qs, data=body, headers=headers
            ) as upstream,
        ):
            payload = await upstream.read()
            status = upstream.status
            ctype = upstream.headers.get("Content-Type", "application/json")
        if request.method == "POST" and request.path in ("/v1/jobs", "/v1/jobs/stream"):
            seen_keys.append(request.headers.get("Idempotency-Key", ""))
            if len(seen_keys) == 1:
                assert request.transport is not None
                request.transport.close()  # the answer is lost
                return web.Response(status=204)
        return web.Response(body=payload, status=status, headers={"Content-Type": ctype})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        name = f"retried-{uuid.uuid4().hex[:8]}"
        async with DeepExecAsyncClient(
            endpoint=f"http://127.0.0.1:{unused_tcp_port}", max_retries=3, retry_delay=0.05
        ) as c:
            job = await c.execute_code_job("print('once')", "python", name=name)
            assert len(seen_keys) == 2 and seen_keys[0] == seen_keys[1] != ""
            result = await c.get_code_execution_result(job.job_id, max_wait_time=30)
            assert result.stdout == "once\n"
    finally:
        await runner.cleanup()
    async with make_client(server) as c:
        named = [j async for j in c.list_jobs() if j.name == name]
    assert [j.job_id for j in named] == [job.job_id]


async def _sse_events(resp: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """Every (event name, data) of a whole server-sent event response."""
    text = (await resp.read()).decode().replace("\r\n", "\n")
    out = []
    for frame in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in frame.splitlines() if line and not line.startswith(":")
        )
        if "data" in fields:
            out.append((fields["event"], orjson.loads(fields["data"])))
    return out


PROGRESS_CODE = "print('step')\nprint('##deepexec-progress 50')\nprint('done')"


async def test_submit_job_stream_answers_the_job_then_its_events(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    key = str(uuid.uuid4())
    body = envelope(
        "submit_job",
        {
            "name": f"follow-{key[:8]}",
            "job_type": "code_execution",
            "data": {"code": PROGRESS_CODE, "language": "python"},
        },
    )
    headers = {"Idempotency-Key": key, "Accept": "text/event-stream"}
    async with http.post(f"{server.url}/v1/jobs/stream", json=body, headers=headers) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        events = await _sse_events(r)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "job_submitted_event" and kinds[1] == "job_status_event"
    assert kinds[-1] == "job_result_event"
    job_id = events[0][1]["job"]["job_id"]
    assert all(data.get("job_id", job_id) == job_id for _, data in events)
    final = events[-1][1]["job"]
    assert final["status"] == "COMPLETED" and final["result"]["stdout"] == "step\ndone\n"
    output = "".join(d["data"] for k, d in events if k == "job_output_event")
    assert "step\n" in output and "done\n" in output
    assert 50 in [d["progress"] for k, d in events if k == "job_progress_event"]

    # the same key: the same job, whose stream now starts finished
    async with http.post(f"{server.url}/v1/jobs/stream", json=body, headers=headers) as r:
        again = await _sse_events(r)
    assert again[0] == (
        "job_submitted_event",
        {
            "type": "job_submitted_event",
            "job": {
                "job_id": job_id,
                "status": "COMPLETED",
                "created_at": events[0][1]["job"]["created_at"],
            },
        },
    )
    assert again[-1][0] == "job_result_event" and again[-1][1]["job"]["result"] == final["result"]
    # the same key and the plain submit: still the same job
    async with http.post(f"{server.url}/v1/jobs", json=body, headers={"Idempotency-Key": key}) as r:
        assert (await r.json())["output"]["job_id"] == job_id


async def test_submit_job_stream_refuses_bad_input_with_an_envelope_and_no_job(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    cases = [
        (
            {"name": name, "job_type": "code_execution", "data": {"prompt": "x"}},
            422,
            "validation_error",
        ),
        (
            {
                "name": name,
                "job_type": "code_execution",
                "data": {"code": "1", "language": "cobol"},
            },
            422,
            "unsupported_language",
        ),
    ]
    for payload, status, code in cases:
        async with http.post(
            f"{server.url}/v1/jobs/stream",
            json=envelope("submit_job", payload),
            headers={"Accept": "text/event-stream"},
        ) as r:
            assert (r.status, r.content_type) == (status, "application/json")
            answer = await r.json()
        assert answer["error"]["code"] == code
    session = envelope(
        "submit_job",
        {"name": name, "job_type": "code_execution", "data": {"code": "1", "language": "python"}},
        session_id="sess_" + "0" * 32,
    )
    async with http.post(f"{server.url}/v1/jobs/stream", json=session) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    async with make_client(server) as c:
        assert [j async for j in c.list_jobs() if j.name == name] == []
        assert (await c.health()).status == "ok"


async def test_sdk_waits_on_the_stream_its_submit_opened(server: ServerProcess) -> None:
    """execute_code_job + get_code_execution_result: one request (the submit's stream is
    read by the wait), as the server's access log shows; after the cap of held streams,
    the oldest jobs are followed through their event streams."""
    async with make_client(server) as c:
        job = await c.execute_code_job("print('held')", "python")
        progress: list[int] = []
        result = await c.get_code_execution_result(job.job_id, on_progress=progress.append)
        assert result.stdout == "held\n" and progress[-1] == 100
        stream = await c.execute_code_stream("print('a'); print('b')", "python")
        assert [chunk.data async for chunk in stream] and stream.result is not None
        assert stream.result.stdout == "a\nb\n"
        jobs = [await c.execute_code_job(f"print({i})", "python") for i in range(10)]
        outputs = [(await c.get_code_execution_result(j.job_id)).stdout for j in jobs]
        assert outputs == [f"{i}\n" for i in range(10)]
    log = server.log()
    for followed in (job.job_id, stream.job_id, *(j.job_id for j in jobs[2:])):
        assert f"/v1/jobs/{followed}/events" not in log
    for evicted in jobs[:2]:  # beyond the 8 held streams
        assert f"GET /v1/jobs/{evicted.job_id}/events" in log


async def test_idempotent_create_session(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """A retried create_session (same Idempotency-Key) gets the same session while it is
    open; once it is closed the key is forgotten and a new session is made."""
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = envelope("create_session", {})

    async def create() -> str:
        async with http.post(f"{server.url}/v1/sessions", json=body, headers=key) as r:
            assert r.status == 200
            return str((await r.json())["output"]["session_id"])

    first = await create()
    assert await create() == first
    async with make_client(server) as c:
        await c.close_session(first)
        second = await create()
        assert second != first
        r = await c.execute_code_and_wait("print('in new')", "python", session_id=second)
        assert r.stdout == "in new\n"
        await c.close_session(second)


# ---------------------------------------------------------------------------- SIGTERM


async def test_sigterm_lets_running_job_finish(start_server: ServerFactory) -> None:
    """SIGTERM: the job that can finish within the grace period finishes (COMPLETED, and a
    client waiting on its event stream gets the result), one that can not is put back in
    the queue; the server exits 0 soon after the grace period; after a restart both are
    there."""
    srv = start_server(
        env={"DEEPEXEC_SERVER_CONCURRENCY": "2", "DEEPEXEC_SERVER_SHUTDOWN_GRACE": "3"}
    )
    async with make_client(srv) as c, make_client(srv, max_retries=1) as watcher:
        short = await c.execute_code_job(
            "import time\nprint('started', flush=True)\ntime.sleep(1.5)\nprint('finished')",
            "python",
            timeout=30,
        )
        long = await c.execute_code_job("import time; time.sleep(120)", "python", timeout=200)
        for job in (short, long):
            await wait_until(lambda j=job: _is(c, j.job_id, "RUNNING"), 20, what="RUNNING")
        waiting_short = asyncio.create_task(watcher.wait_for_job(short.job_id, max_wait_time=20))
        waiting_long = asyncio.create_task(watcher.wait_for_job(long.job_id, max_wait_time=20))
        await asyncio.sleep(0.2)  # both watchers are subscribed
        t0 = time.monotonic()
        rc = await asyncio.to_thread(srv.stop, 30)
        took = time.monotonic() - t0
        assert rc == 0
        assert took < 3 + 5, f"shutdown took {took:.1f} s (grace 3 s)"
        seen = await asyncio.wait_for(waiting_short, 10)
        assert seen.status.value == "COMPLETED"
        with pytest.raises(MCPError):  # the server is gone: an error, not a hang
            await asyncio.wait_for(waiting_long, 15)

    srv.restart()
    async with make_client(srv) as c:
        done = await c.get_job_status(short.job_id)
        assert done.status.value == "COMPLETED", done
        assert done.result is not None and done.result.stdout == "started\nfinished\n"
        requeued = await c.get_job_status(long.job_id)
        assert requeued.status.value in ("PENDING", "RUNNING"), requeued
        await c.cancel_job(long.job_id, reason="end of test")


# ---------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for a state dir to fill up (the local sandbox mounts a tmpfs for every
    execution: where it runs, this can be mounted too)."""
    path = tmp_path / "small-fs"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True
    )
    assert mounted.returncode == 0, mounted.stderr.decode()
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until its file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


async def test_a_full_disk_refuses_new_jobs_and_holds_finished_ones_until_space_is_back(
    start_server: ServerFactory, small_fs: Path
) -> None:
    """Submitting to a full state dir is 503 service_unavailable and creates nothing; a job
    that ends meanwhile stays RUNNING (its outcome is not shown before it is durable) and
    completes, with its output, once the store can write again."""
    srv = start_server(state_dir=small_fs / "state")
    async with make_client(srv, max_retries=0) as c:
        running = await c.execute_code_job("import time; time.sleep(1); print('done')", "python")
        filler = small_fs / "filler"
        fill(filler)

        with pytest.raises(MCPServiceUnavailableError) as full:
            await c.execute_code_job("print(1)", "python")
        assert full.value.http_status == 503 and "nothing was changed" in str(full.value)

        await asyncio.sleep(2.0)  # the program has ended by now
        assert (await c.get_job_status(running.job_id)).status.value == "RUNNING"

        filler.unlink()
        result = await c.get_code_execution_result(running.job_id, max_wait_time=30)
        assert result.stdout == "done\n"
        assert [job.job_id async for job in c.list_jobs()] == [running.job_id]
    assert "could not record how it ended (database or disk is full)" in srv.log()
