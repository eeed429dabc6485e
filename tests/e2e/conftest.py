"""Fixtures of the end-to-end tests: the REAL reference server, started as a subprocess
(``python -m deepexec_server serve --port 0``) on a free loopback port with a temporary
state dir, driven by the real SDK and by raw aiohttp requests.

* :class:`ServerProcess` starts, stops (SIGTERM), kills (SIGKILL) and restarts one server
  and reads its log; :func:`start_server` (a fixture) builds them per test with tokens,
  environment (``DEEPEXEC_SERVER_*``) and a state dir of the test's choice, and stops every
  one at teardown, checking that no secret of :data:`SECRETS` ever reached its log and that
  it logged no traceback.
* :class:`FakeProviderThread` runs the TEST DOUBLE :class:`FakeOpenAIServer` on its own
  event loop in a thread, so sync code (subprocess.run, the sync SDK) can run beside it.
  :func:`fake` resets it after every test.
* :func:`server` is one module-wide server with the fake configured both as the
  OpenAI-compatible provider and as the DeepSeek base URL (so a client's X-DeepSeek-Key
  really travels to a provider, and never to the internet).

Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from deepexec_sdk import DeepExecAsyncClient
from tests.fakes.fake_openai_provider import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

#: Provider keys and tokens the tests send; none may ever appear in a server's log.
SECRETS: set[str] = {
    "sk-e2e-deepseek-SECRET-0123456789abcdef",
    "sk-e2e-bad-deepseek-SECRET-fedcba9876543210",
    "e2b_e2e-SECRET-13579bdf",
    "tok-A-e2e-SECRET-aaaaaaaaaaaaaaaa",
    "tok-B-e2e-SECRET-bbbbbbbbbbbbbbbb",
    "tok-WRONG-e2e-SECRET-cccccccccccccc",
}
DEEPSEEK_KEY = "sk-e2e-deepseek-SECRET-0123456789abcdef"
BAD_DEEPSEEK_KEY = "sk-e2e-bad-deepseek-SECRET-fedcba9876543210"
E2B_KEY = "e2b_e2e-SECRET-13579bdf"
TOKEN_A = "tok-A-e2e-SECRET-aaaaaaaaaaaaaaaa"
TOKEN_B = "tok-B-e2e-SECRET-bbbbbbbbbbbbbbbb"
TOKEN_WRONG = "tok-WRONG-e2e-SECRET-cccccccccccccc"

FAKE_MODEL = "fake-model"
_counter = itertools.count()


def sandbox_env() -> dict[str, str]:
    """The environment of a child process: ours without any DEEPEXEC_* setting, and
    with config files ignored."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEXEC_")}
    env["DEEPEXEC_CONFIG"] = "/dev/null"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "generated"), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


# ---------------------------------------------------------------------------- /proc


def pids_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid`` (zombies included)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            out.append(int(entry))
                        break
        except OSError:
            continue
    return out


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


# ---------------------------------------------------------------------------- the server


class ServerProcess:
    """One reference server subprocess (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        log_dir: Path,
        *,
        tokens: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        log_level: str = "debug",
    ) -> None:
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.tokens = list(tokens)
        self.env = dict(env or {})
        self.args = list(args)
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self.logs: list[Path] = []  # stderr of every run (restarts append)
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "deepexec_server",
            "serve",
            "--port",
            "0",
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            self.log_level,
        ]
        for token in self.tokens:
            cmd += ["--token", token]
        return cmd + self.args

    def start(self) -> ServerProcess:
        """Start and wait (bounded) until it prints its address."""
        n = next(_counter)
        out_path = self.log_dir / f"server-{n}.stdout"
        err_path = self.log_dir / f"server-{n}.stderr"
        self.logs.append(err_path)
        env = sandbox_env()
        env.update(self.env)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=err, env=env, cwd=REPO, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = out_path.read_text(errors="replace")
            found = re.search(r"listening on (http://[0-9.]+:(\d+))", text)
            if found:
                self.url, self.port = found.group(1), int(found.group(2))
                self.started_at = time.monotonic()
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.proc.returncode} before listening:\n"
                    + err_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"the server did not listen within {START_TIMEOUT:.0f} s")

    def restart(self) -> ServerProcess:
        """Start again on the same state dir (after stop or kill)."""
        assert self.proc is None or self.proc.poll() is not None, "still running"
        return self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; SIGKILL if it overstays. Returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"the server ignored SIGTERM for {timeout} s") from None
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL (no cleanup at all) and reap."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def log(self) -> str:
        """Everything the server wrote to stderr, over all its runs."""
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def check_log_clean(log: str) -> None:
    """No secret, and no traceback, in a server's log."""
    for secret in SECRETS:
        assert secret not in log, "a secret reached the server's log"
    assert "Traceback" not in log, "the server logged a traceback:\n" + log[-6000:]


@pytest.fixture(scope="session")
def e2e_tmp() -> Iterator[Path]:
    """A scratch dir for state dirs and logs of this run."""
    path = Path(tempfile.mkdtemp(prefix="deepexec-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


ServerFactory = Callable[..., ServerProcess]


class ServerPool:
    """Starts servers into a scratch dir; :meth:`close` stops them all (SIGTERM, exit
    status 0 expected) and checks their logs (no secret, no traceback)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[ServerProcess] = []

    def start(
        self,
        *,
        tokens: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        state_dir: Path | None = None,
        log_level: str = "debug",
    ) -> ServerProcess:
        n = next(_counter)
        if state_dir is None:
            state_dir = self.base / f"state-{n}"
        log_dir = self.base / f"logs-{n}"
        log_dir.mkdir(parents=True, exist_ok=True)
        srv = ServerProcess(
            state_dir, log_dir, tokens=tokens, env=env, args=args, log_level=log_level
        )
        self.started.append(srv)
        return srv.start()

    def close(self) -> None:
        problems = []
        for srv in self.started:
            try:
                if srv.running():
                    rc = srv.stop()
                    if rc != 0:
                        problems.append(f"server exited with {rc} on SIGTERM")
                check_log_clean(srv.log())
            except AssertionError as exc:
                problems.append(str(exc))
        self.started.clear()
        if problems:
            pytest.fail("; ".join(problems))


@pytest.fixture
def start_server(e2e_tmp: Path) -> Iterator[ServerFactory]:
    """``start_server(tokens=..., env=..., args=..., state_dir=...)`` -> a running
    :class:`ServerProcess`; all are stopped (and their logs checked) after the test."""
    pool = ServerPool(e2e_tmp)
    yield pool.start
    pool.close()


@pytest.fixture(scope="module")
def module_servers(e2e_tmp: Path) -> Iterator[ServerPool]:
    """A pool of servers that live as long as the test module."""
    pool = ServerPool(e2e_tmp)
    yield pool
    pool.close()


# ---------------------------------------------------------------------------- fake provider


class FakeProviderThread:
    """The fake OpenAI-compatible server on an event loop of its own, in a thread."""

    def __init__(self) -> None:
        self.server = FakeOpenAIServer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> FakeProviderThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def reset(self) -> None:
        s = self.server
        s.api_key = None
        s.chunk_delay = 0.0
        s.fail_status = None
        s.retry_after = "7"
        s.model_name = None
        s.requests.clear()
        s.chunk_times.clear()


@pytest.fixture(scope="session")
def fake_thread() -> Iterator[FakeProviderThread]:
    fake = FakeProviderThread().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_thread: FakeProviderThread) -> Iterator[FakeOpenAIServer]:
    """The shared fake provider, reset after the test."""
    fake_thread.reset()
    yield fake_thread.server
    fake_thread.reset()


def provider_env(fake: FakeProviderThread | FakeOpenAIServer) -> dict[str, str]:
    """Server environment routing every text request to the fake."""
    return {
        "DEEPEXEC_SERVER_OPENAI_BASE_URL": fake.base_url,
        "DEEPEXEC_SERVER_OPENAI_MODEL": FAKE_MODEL,
        "DEEPEXEC_SERVER_DEEPSEEK_BASE_URL": fake.base_url,
    }


@pytest.fixture(scope="module")
def server(module_servers: ServerPool, fake_thread: FakeProviderThread) -> ServerProcess:
    """One server per test module: no tokens, the fake as text provider."""
    return module_servers.start(env=provider_env(fake_thread))


# ---------------------------------------------------------------------------- clients


def make_client(srv: ServerProcess, **kw: Any) -> DeepExecAsyncClient:
    """An SDK client of ``srv``: few, fast retries unless told otherwise."""
    kw.setdefault("max_retries", 2)
    kw.setdefault("retry_delay", 0.05)
    kw.setdefault("timeout", 30.0)
    return DeepExecAsyncClient(endpoint=srv.url, **kw)


@pytest_asyncio.fixture
async def client(server: ServerProcess) -> AsyncIterator[DeepExecAsyncClient]:
    async with make_client(server) as c:
        yield c


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP session (bounded timeouts)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture(autouse=True, scope="session")
def _hermetic_sdk_env() -> Iterator[None]:
    """The SDK in this process reads no config file and no DEEPEXEC_* variable."""
    saved = dict(os.environ)
    for k in [k for k in os.environ if k.startswith("DEEPEXEC_")]:
        del os.environ[k]
    os.environ["DEEPEXEC_CONFIG"] = "/dev/null"
    yield
    os.environ.clear()
    os.environ.update(saved)


# ---------------------------------------------------------------------------- helpers


def envelope(type_: str, input_: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A request envelope of the current protocol version."""
    from deepexec_protocol import PROTOCOL_VERSION

    body: dict[str, Any] = {"protocol_version": PROTOCOL_VERSION, "type": type_, "input": input_}
    body.update(extra)
    return body


async def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Await (or call) ``predicate`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


async def job_state(c: DeepExecAsyncClient, job_id: str) -> str:
    return (await c.get_job_status(job_id)).status.value


async def all_jobs(c: DeepExecAsyncClient) -> dict[str, Any]:
    """job_id -> JobStatus of every job the client's token can see."""
    return {j.job_id: j async for j in c.list_jobs()}
