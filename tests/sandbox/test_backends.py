"""Settings, the backend factory, the insecure fallback and the E2B backend (faked SDK)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve

from deepexec_server.sandbox import (
    DEFAULT_LIMITS,
    MAX_LIMITS,
    ExecutionRequest,
    Limits,
    SandboxSettings,
    SandboxUnavailableError,
    UnsupportedLanguageError,
    create_executor,
)
from deepexec_server.sandbox.e2b_backend import E2BExecutor, E2BKeyMissingError
from deepexec_server.sandbox.insecure import SubprocessExecutor
from deepexec_server.sandbox.local import LocalExecutor

pytestmark = pytest.mark.timeout(60)


def req(code: str, limits: Limits, language: str = "python", **kw: Any) -> ExecutionRequest:
    return ExecutionRequest(code=code, language=language, limits=limits, **kw)


# --------------------------------------------------------------------------- settings


def test_clamp_fills_defaults_and_caps_maxima() -> None:
    s = SandboxSettings()
    assert s.default_limits() == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.timeout == 10 and DEFAULT_LIMITS.memory == 256 * 2**20
    assert MAX_LIMITS.timeout == 300 and MAX_LIMITS.memory == 2 * 2**30
    got = s.clamp({"timeout": 9999, "memory": 64 * 2**20, "max_output": None})
    assert got.timeout == 300.0 and got.memory == 64 * 2**20
    assert got.max_output == DEFAULT_LIMITS.max_output
    with pytest.raises(ValueError, match="unknown limits"):
        s.clamp({"gpu": 1})
    with pytest.raises(ValueError):
        s.clamp({"timeout": 0})
    with pytest.raises(ValueError):
        Limits(**{**_asdict(DEFAULT_LIMITS), "memory": -1})
    with pytest.raises(ValueError):
        SandboxSettings(backend="docker")


def _asdict(limits: Limits) -> dict[str, Any]:
    import attrs

    return attrs.asdict(limits)


def test_e2b_key_is_not_in_reprs() -> None:
    r = req("print(1)", DEFAULT_LIMITS, e2b_key="e2b_SECRET_KEY_123")
    assert "SECRET" not in repr(r)
    assert "SECRET" not in repr(SandboxSettings(e2b_api_key="e2b_SECRET_KEY_123"))


# --------------------------------------------------------------------------- factory


def test_factory_picks_backends(tmp_path: Path) -> None:
    assert isinstance(create_executor(SandboxSettings(backend="e2b")), E2BExecutor)
    with pytest.raises(SandboxUnavailableError, match="allow_insecure"):
        create_executor(SandboxSettings(backend="subprocess-insecure"))
    assert isinstance(
        create_executor(SandboxSettings(backend="subprocess-insecure", allow_insecure=True)),
        SubprocessExecutor,
    )
    no_bwrap = str(tmp_path / "no-bwrap")
    local = create_executor(SandboxSettings(bwrap_path=no_bwrap, runtime_dir=tmp_path))
    assert isinstance(local, LocalExecutor)
    fallback = create_executor(
        SandboxSettings(bwrap_path=no_bwrap, runtime_dir=tmp_path, allow_insecure=True)
    )
    assert isinstance(fallback, SubprocessExecutor)


async def test_local_refuses_to_start_without_bubblewrap(tmp_path: Path) -> None:
    ex = create_executor(
        SandboxSettings(bwrap_path=str(tmp_path / "missing"), runtime_dir=tmp_path)
    )
    with pytest.raises(SandboxUnavailableError, match="missing"):
        await ex.start()


async def test_local_refuses_an_untraversable_runtime_dir(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    ex = LocalExecutor(SandboxSettings(runtime_dir=hidden / "rt"))
    with pytest.raises(SandboxUnavailableError, match="world-searchable"):
        await ex.start()


# --------------------------------------------------------------------------- insecure


async def test_insecure_backend_runs_code_and_warns_on_every_start(
    make_settings: Callable[..., SandboxSettings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(backend="subprocess-insecure", allow_insecure=True)
    ex = create_executor(settings)
    assert ex.name == "subprocess-insecure"
    with caplog.at_level(logging.WARNING):
        await ex.start()
        await ex.close()
        await ex.start()
    warnings = [r for r in caplog.records if "INSECURE" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    try:
        limits = settings.defaults
        out = await ex.execute(req("import os\nprint(sorted(os.environ))", limits, env={"K": "v"}))
        assert out.stdout == "['HOME', 'K', 'LANG', 'PATH', 'TMPDIR']\n"
        assert out.exit_code == 0 and 500_000 < out.memory_usage < 100 * 2**20
        t = time.monotonic()
        out = await ex.execute(req("import time\ntime.sleep(30)", evolve(limits, timeout=0.5)))
        assert out.timed_out and out.signal == 9 and time.monotonic() - t < 5
        c = await ex.execute(
            req('#include <stdio.h>\nint main(){puts("c");return 2;}', limits, "c")
        )
        assert c.stdout == "c\n" and c.exit_code == 2
        with pytest.raises(UnsupportedLanguageError):
            await ex.execute(req("x", limits, "cobol"))
    finally:
        await ex.close()


# --------------------------------------------------------------------------- e2b (faked)


class FakeExecution:
    def __init__(self, error: Any = None) -> None:
        self.error = error


class FakeSandbox:
    """Stands in for e2b_code_interpreter.AsyncSandbox at the SDK boundary."""

    created: list[dict[str, Any]] = []
    instances: list[FakeSandbox] = []
    behaviour: str = "ok"

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.killed = False
        self.calls: list[dict[str, Any]] = []

    @classmethod
    async def create(cls, **kwargs: Any) -> FakeSandbox:
        cls.created.append(kwargs)
        sbx = cls(kwargs)
        cls.instances.append(sbx)
        return sbx

    async def run_code(self, code: str, **kw: Any) -> FakeExecution:
        self.calls.append({"code": code, **kw})
        on_out, on_err = kw["on_stdout"], kw["on_stderr"]
        if self.behaviour == "timeout":
            raise type("TimeoutException", (Exception,), {})("timed out")
        if self.behaviour == "boom":
            raise ConnectionError("network down, key=e2b_SECRET")
        on_out(types.SimpleNamespace(line="line 1\n", timestamp=0, error=False))
        await asyncio.sleep(0.05)
        on_out(types.SimpleNamespace(line="x" * 50 + "\n", timestamp=0, error=False))
        on_err(types.SimpleNamespace(line="warn\n", timestamp=0, error=True))
        if self.behaviour == "error":
            return FakeExecution(
                types.SimpleNamespace(
                    name="ValueError", value="bad", traceback="Traceback...\nValueError: bad\n"
                )
            )
        return FakeExecution()

    async def kill(self) -> None:
        self.killed = True


@pytest.fixture()
def fake_e2b(monkeypatch: pytest.MonkeyPatch) -> type[FakeSandbox]:
    module = types.ModuleType("e2b_code_interpreter")
    FakeSandbox.created, FakeSandbox.instances, FakeSandbox.behaviour = [], [], "ok"
    module.AsyncSandbox = FakeSandbox  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "e2b_code_interpreter", module)
    return FakeSandbox


async def test_e2b_forwards_the_callers_key_and_maps_the_result(
    fake_e2b: type[FakeSandbox], caplog: pytest.LogCaptureFixture
) -> None:
    ex = E2BExecutor(SandboxSettings(backend="e2b"))
    await ex.start()
    chunks: list[tuple[str, str]] = []
    with caplog.at_level(logging.DEBUG):
        out = await ex.execute(
            req("print(1)", DEFAULT_LIMITS, "js", env={"A": "1"}, e2b_key="e2b_CALLER_KEY"),
            lambda s, t: chunks.append((s, t)),
        )
    assert fake_e2b.created[0]["api_key"] == "e2b_CALLER_KEY"
    call = fake_e2b.instances[0].calls[0]
    assert call["language"] == "js" and call["envs"] == {"A": "1"} and call["code"] == "print(1)"
    assert call["timeout"] == DEFAULT_LIMITS.timeout
    assert out.stdout == "line 1\n" + "x" * 50 + "\n" and out.stderr == "warn\n"
    assert out.exit_code == 0 and not out.timed_out and out.execution_time_ms >= 40
    assert chunks[0] == ("stdout", "line 1\n") and ("stderr", "warn\n") in chunks
    assert fake_e2b.instances[0].killed  # no session: sandbox discarded
    assert "e2b_CALLER_KEY" not in caplog.text
    assert {i.id for i in ex.languages()} >= {"python", "javascript", "bash"}


async def test_e2b_errors_caps_timeouts_and_missing_key(fake_e2b: type[FakeSandbox]) -> None:
    ex = E2BExecutor(SandboxSettings(backend="e2b", e2b_api_key="e2b_SERVER_KEY"))
    await ex.start()
    fake_e2b.behaviour = "error"
    out = await ex.execute(req("raise", DEFAULT_LIMITS))
    assert fake_e2b.created[-1]["api_key"] == "e2b_SERVER_KEY"  # server fallback key
    assert out.exit_code == 1 and out.stderr.endswith("ValueError: bad\n")
    fake_e2b.behaviour = "ok"
    capped = await ex.execute(req("x", evolve(DEFAULT_LIMITS, max_output=20)))
    assert capped.stdout_truncated and len(capped.stdout) == 20
    fake_e2b.behaviour = "timeout"
    timed = await ex.execute(req("x", DEFAULT_LIMITS))
    assert timed.timed_out and timed.exit_code is None
    fake_e2b.behaviour = "boom"
    with pytest.raises(Exception) as info:
        await ex.execute(req("x", DEFAULT_LIMITS))
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None
    keyless = E2BExecutor(SandboxSettings(backend="e2b"))
    await keyless.start()
    with pytest.raises(E2BKeyMissingError):
        await keyless.execute(req("x", DEFAULT_LIMITS))
    with pytest.raises(ValueError, match="stdin"):
        await keyless.execute(req("x", DEFAULT_LIMITS, stdin="data", e2b_key="k"))
    with pytest.raises(UnsupportedLanguageError):
        await keyless.execute(req("x", DEFAULT_LIMITS, "cobol", e2b_key="k"))


async def test_e2b_sessions_reuse_one_sandbox_until_released(fake_e2b: type[FakeSandbox]) -> None:
    ex = E2BExecutor(SandboxSettings(backend="e2b"))
    await ex.start()
    wd = Path("/sessions/abc")
    for _ in range(2):
        await ex.execute(req("x", DEFAULT_LIMITS, workdir=wd, e2b_key="k"))
    assert len(fake_e2b.created) == 1 and not fake_e2b.instances[0].killed
    await ex.release_workdir(wd)
    assert fake_e2b.instances[0].killed
    await ex.execute(req("x", DEFAULT_LIMITS, workdir=wd, e2b_key="k"))
    await ex.close()
    assert len(fake_e2b.created) == 2 and fake_e2b.instances[1].killed


async def test_e2b_without_the_sdk_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "e2b_code_interpreter", None)
    with pytest.raises(SandboxUnavailableError, match="e2b-code-interpreter"):
        await E2BExecutor(SandboxSettings(backend="e2b")).start()
