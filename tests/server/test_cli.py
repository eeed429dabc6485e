"""``deepexec serve`` that can not start says why in one line and exits 1: no traceback,
and nothing it had started is left running."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def serve(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deepexec_server", "serve", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}",
            "DEEPEXEC_SERVER_WARM_POOL": "1",
        },
    )


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert f"Error: {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("")
    refused(serve(state_dir=path), f"cannot use the state dir {str(path)!r}: not a directory")


def test_a_state_dir_that_can_not_be_made(tmp_path: Path) -> None:
    path = Path("/proc/deepexec-no-such-dir")
    refused(
        serve(state_dir=path),
        f"cannot use the state dir {str(path)!r}: No such file or directory",
    )


def test_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    """The sandbox (warm pool included) was started before the port was found taken: it is
    stopped again, and the command returns."""
    result = serve("--port", str(taken_port), state_dir=tmp_path / "state")
    refused(result, f"cannot listen on 127.0.0.1:{taken_port}: Address already in use")


def test_a_sandbox_backend_that_can_not_start(tmp_path: Path) -> None:
    result = serve("--sandbox", "e2b", state_dir=tmp_path / "state")
    refused(result, "cannot start: ")
    assert "e2b" in result.stderr


def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """Event streams hold connections and sandboxes hold pipes: the usual soft limit of
    1024 open files is raised to the hard one."""

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    proc = subprocess.Popen(
        [sys.executable, "-m", "deepexec_server", "serve", "--port", "0"]
        + ["--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}"},
        preexec_fn=low_soft_limit,
    )
    try:
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _first_lines(*args: str, state_dir: Path) -> str:
    """Start the server, return what it logged until it listens, stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepexec_server", "serve", "--port", "0"]
        + ["--state-dir", str(state_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}"},
    )
    try:
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    return err


@pytest.mark.parametrize(
    ("args", "warned"),
    [
        (["--host", "0.0.0.0"], True),
        (["--host", "0.0.0.0", "--token", "t0k3n-for-the-test"], False),
        (["--host", "127.0.0.1"], False),
    ],
)
def test_an_open_server_on_a_reachable_address_says_so(
    tmp_path: Path, args: list[str], warned: bool
) -> None:
    err = _first_lines(*args, state_dir=tmp_path / "state")
    assert ("without API tokens: anyone who can reach this address can run code" in err) is warned
    assert "t0k3n-for-the-test" not in err
