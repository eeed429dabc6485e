"""Escapes: network, host files, writes outside the work dir, keys, symlinks, leftovers.

Each test runs a real program in the sandbox, asserts containment, then asserts the
next execution works.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve

import deepexec_server
from deepexec_server.sandbox import ExecutionOutcome, ExecutionRequest, Limits
from deepexec_server.sandbox.local import LocalExecutor

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

REPO_FILE = Path(deepexec_server.__file__).resolve()


def req(code: str, limits: Limits, language: str = "python", **kw: object) -> ExecutionRequest:
    return ExecutionRequest(code=code, language=language, limits=limits, **kw)  # type: ignore[arg-type]


async def run(executor: LocalExecutor, code: str, limits: Limits, **kw: Any) -> ExecutionOutcome:
    out = await executor.execute(req(code, limits, **kw))
    assert out.exit_code == 0, out
    return out


async def still_works(executor: LocalExecutor, limits: Limits) -> None:
    out = await executor.execute(req("print('still ok')", limits))
    assert (out.stdout, out.exit_code) == ("still ok\n", 0), out


def results(out: ExecutionOutcome) -> dict[str, Any]:
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------- network


async def test_no_tcp_to_a_host_loopback_listener(executor: LocalExecutor, limits: Limits) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        code = (
            "import json, socket\nres = {}\n"
            f"for host in ('127.0.0.1', 'localhost', '::1'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=2).close()\n"
            "        res[host] = 'CONNECTED'\n"
            "    except OSError as e:\n"
            "        res[host] = type(e).__name__\n"
            "print(json.dumps(res))\n"
        )
        out = await run(executor, code, limits)
        assert "CONNECTED" not in out.stdout, out
        assert set(results(out)) == {"127.0.0.1", "localhost", "::1"}
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the host's listener
    await still_works(executor, limits)


async def test_no_udp_to_a_host_loopback_listener(executor: LocalExecutor, limits: Limits) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        code = (
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "sent = 0\n"
            "for _ in range(20):\n"
            "    try:\n"
            f"        s.sendto(b'LEAK', ('127.0.0.1', {port})); sent += 1\n"
            "    except OSError:\n"
            "        pass\n"
            "print(sent)\n"
        )
        await run(executor, code, limits)
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.recvfrom(100)  # datagrams went to the sandbox's own loopback, not ours
    await still_works(executor, limits)


async def test_only_loopback_and_no_name_resolution(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = (
        "import json, socket\nres = {'ifaces': [n for _, n in socket.if_nameindex()]}\n"
        "res['proc_net_dev'] = [l.split(':')[0].strip() for l in open('/proc/net/dev')][2:]\n"
        "res['routes'] = open('/proc/net/route').read().splitlines()[1:]\n"
        "for name in ('example.com', 'deb.debian.org', 'pypi.org'):\n"
        "    try:\n"
        "        socket.getaddrinfo(name, 443)\n"
        "        res[name] = 'RESOLVED'\n"
        "    except OSError as e:\n"
        "        res[name] = type(e).__name__\n"
        "print(json.dumps(res))\n"
    )
    res = results(await run(executor, code, limits))
    assert res["ifaces"] == ["lo"] and res["proc_net_dev"] == ["lo"]
    assert res["routes"] == []
    assert "RESOLVED" not in json.dumps(res)
    await still_works(executor, limits)


# ------------------------------------------------------------------------- reading


async def test_host_files_are_not_readable(
    executor: LocalExecutor, limits: Limits, session_root: Path, tmp_path: Path
) -> None:
    state = session_root / "state"
    state.mkdir()
    secret = state / "jobs.db"
    secret.write_text("TOP-SECRET-STATE")
    secret.chmod(0o644)
    host_tmp = Path("/tmp") / f"deepexec-host-secret-{os.getpid()}"
    host_tmp.write_text("TOP-SECRET-TMP")
    host_tmp.chmod(0o644)
    targets = [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/ssl/private",
        "/root",
        "/home",
        str(secret),
        str(host_tmp),
        str(REPO_FILE),
        str(REPO_FILE.parent.parent / "pyproject.toml"),
        str(executor.settings.runtime_dir),
        str(executor.settings.uid_lock_dir),
        "/proc/1/root/etc/shadow",
        "/sys/class/net",
        "/var/log",
        "/run",
    ]
    code = (
        "import json, os\nres = {}\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        if os.path.isdir(p):\n"
        "            res[p] = 'LISTED ' + ','.join(os.listdir(p))[:100]\n"
        "        else:\n"
        "            res[p] = 'READ ' + open(p).read()[:100]\n"
        "    except OSError as e:\n"
        "        res[p] = type(e).__name__\n"
        "res['/proc/1/environ'] = open('/proc/1/environ', 'rb').read().decode()\n"
        "res['passwd'] = open('/etc/passwd').read()\n"
        "print(json.dumps(res))\n"
    )
    try:
        res = results(await run(executor, code, limits))
    finally:
        host_tmp.unlink()
    for p in targets:
        assert not res[p].startswith(("READ", "LISTED")), (p, res[p])
    assert res["/proc/1/environ"] == ""
    assert "root:x:0:0" in res["passwd"] and len(res["passwd"].splitlines()) == 3
    assert "TOP-SECRET" not in json.dumps(res)
    await still_works(executor, limits)


async def test_another_executions_files_and_processes_are_invisible(
    executor: LocalExecutor, limits: Limits
) -> None:
    victim_code = (
        "import os, time\nopen('/work/victim-secret', 'w').write('VICTIM-DATA')\n"
        "open('/tmp/victim-tmp', 'w').write('VICTIM-DATA')\nprint('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    ready = asyncio.Event()
    victim = asyncio.create_task(
        executor.execute(req(victim_code, evolve(limits, timeout=40)), lambda s, t: ready.set())
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        host_paths = [
            str(p) for p in executor.settings.runtime_dir.glob("i*/x*/work/victim-secret")
        ]
        host_paths += [str(p) for p in executor.settings.runtime_dir.glob("i*/x*/tmp/victim-tmp")]
        assert len(host_paths) == 2  # the host (root) can see them...
        code = (
            "import json, os, glob\nres = {}\n"
            f"for p in {host_paths!r} + ['/work/victim-secret', '/tmp/victim-tmp']:\n"
            "    try:\n"
            "        res[p] = 'READ ' + open(p).read()\n"
            "    except OSError as e:\n"
            "        res[p] = type(e).__name__\n"
            "res['pids'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "res['roots'] = [os.readlink(f'/proc/{p}/root') for p in res['pids']]\n"
            "res['found'] = []\n"
            "for root, dirs, files in os.walk('/'):\n"
            "    if root == '/':\n"
            "        dirs[:] = [d for d in dirs if d not in ('usr', 'proc')]\n"
            "    res['found'] += [os.path.join(root, f) for f in files if 'victim' in f]\n"
            "print(json.dumps(res))\n"
        )
        res = results(await run(executor, code, limits))
        assert "VICTIM-DATA" not in json.dumps(res)  # ...the attacker cannot
        assert res["found"] == []
        assert res["pids"] == [1, 2]  # its own pid namespace: bwrap's init and itself
    finally:
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
    await still_works(executor, limits)


# ------------------------------------------------------------------------- writing


async def test_nothing_outside_the_work_dir_is_writable(
    executor: LocalExecutor, limits: Limits
) -> None:
    marker = f"deepexec-pwned-{os.getpid()}"
    targets = [
        f"/{marker}",
        f"/etc/{marker}",
        f"/usr/{marker}",
        f"/usr/bin/{marker}",
        f"/usr/lib/{marker}",
        f"/sandbox/{marker}",
        "/sandbox/main.py",
        f"/dev/{marker}",
        "/etc/passwd",
        "/etc/hosts",
        "/proc/sys/kernel/hostname",
        "/proc/sys/vm/drop_caches",
        "/proc/sysrq-trigger",
    ]
    code = (
        "import json, os\nres = {}\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        with open(p, 'a') as f: f.write('x')\n"
        "        res[p] = 'WROTE'\n"
        "    except OSError as e:\n"
        "        res[p] = type(e).__name__\n"
        "for d in ('/work', '/tmp', '/dev/shm'):\n"
        "    open(d + '/ok', 'w').write('fine')\n"
        "    res[d] = 'ok'\n"
        "print(json.dumps(res))\n"
    )
    res = results(await run(executor, code, limits))
    for p in targets:
        assert res[p] != "WROTE", (p, res)
    assert all(res[d] == "ok" for d in ("/work", "/tmp", "/dev/shm"))
    for host in (f"/{marker}", f"/etc/{marker}", f"/usr/{marker}", f"/usr/bin/{marker}"):
        assert not os.path.exists(host)  # noqa: ASYNC240 (test)
    await still_works(executor, limits)


# ------------------------------------------------------------------------- host code


async def test_the_hosts_site_customisation_does_not_run_in_the_sandbox(
    executor: LocalExecutor, limits: Limits
) -> None:
    """The import line of a .pth file in the system's site-packages is host code: a bare
    interpreter runs it at start-up; the sandbox's python sees the file and its directory
    on the search path, but does not run it (cold and from the warm pool)."""
    site_dir = Path("/usr/lib/python3/dist-packages")
    pth = site_dir / f"zz_deepexec_probe_{os.getpid()}_{os.urandom(4).hex()}.pth"
    # harmless should it ever be left behind: it only sets an attribute of builtins
    pth.write_text("import builtins; builtins.DEEPEXEC_PTH_PROBE = 1\n")
    try:
        probe = (
            "import builtins, os, sys\n"
            f"print(os.path.exists({str(pth)!r}), {str(site_dir)!r} in sys.path,"
            " getattr(builtins, 'DEEPEXEC_PTH_PROBE', 0))\n"
        )
        bare = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-c", probe, stdout=asyncio.subprocess.PIPE, env={}
        )
        stdout, _ = await bare.communicate()
        assert stdout == b"True True 1\n"  # the file works on the host
        # warm interpreters started before the file and after it, and a cold one
        for wait in (True, True, False):
            if wait:
                await executor.wait_warm()
            out = await run(executor, probe, limits)
            assert (out.stdout, out.exit_code) == ("True True 0\n", 0), out
    finally:
        pth.unlink()


# ------------------------------------------------------------------------- secrets


async def test_provider_keys_do_not_leak_into_the_sandbox(
    executor: LocalExecutor, limits: Limits, provider_key_in_server_env: str
) -> None:
    assert os.environ["DEEPEXEC_DEEPSEEK_KEY"] == provider_key_in_server_env
    code = (
        "import os, glob\n"
        # Spelled backwards so that the program's own source does not match.
        "markers = [m[::-1] for m in (b'KEESPEED_CEXEPEED', b'cexepeed-ks', b'EKAF-b2e')]\n"
        "found, scanned = set(), 0\n"
        "def scan(data):\n"
        "    global scanned\n"
        "    scanned += 1\n"
        "    found.update(m.decode() for m in markers if m in data)\n"
        "scan(repr(dict(os.environ)).encode())\n"
        "for pattern in ('/proc/*/environ', '/proc/*/cmdline', '/proc/*/task/*/environ'):\n"
        "    for p in glob.glob(pattern):\n"
        "        try:\n"
        "            scan(open(p, 'rb').read())\n"
        "        except OSError:\n"
        "            pass\n"
        "for d in ('/work', '/tmp', '/sandbox', '/dev/shm', '/etc'):\n"
        "    for root, _, files in os.walk(d):\n"
        "        for f in files:\n"
        "            try:\n"
        "                scan(open(os.path.join(root, f), 'rb').read())\n"
        "            except OSError:\n"
        "                pass\n"
        "print(scanned, sorted(found))\n"
    )
    for _ in range(2):  # the first run uses the warm pool, the second usually not
        out = await run(executor, code, limits, e2b_key="e2b-FAKE-caller-key")
        scanned, found = out.stdout.split(" ", 1)
        assert int(scanned) > 100 and found == "[]\n", out
        await asyncio.sleep(0.3)
    c = await executor.execute(
        req(
            "#include <stdio.h>\n#include <stdlib.h>\n"
            'int main(){puts(getenv("DEEPEXEC_DEEPSEEK_KEY")?"LEAK":"none");}',
            limits,
            "c",
        )
    )
    assert c.stdout == "none\n"
    await still_works(executor, limits)


# ------------------------------------------------------------------------- symlinks


async def test_symlinks_in_a_session_dir_do_not_reach_the_host(
    executor: LocalExecutor, limits: Limits, session_root: Path
) -> None:
    session = session_root / "s1" / "work"
    shadow_before = os.lstat("/etc/shadow")
    shadow_hash = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()  # noqa: ASYNC240 (test)
    etc_before = os.lstat("/etc")
    repo_before = os.lstat(REPO_FILE)
    planted = {
        "shadow": "/etc/shadow",
        "etc": "/etc",
        "repo": str(REPO_FILE),
        "root": "/root",
        "host_proc": "/proc/1/root/etc/shadow",
    }
    code = "import os\n" + "".join(
        f"os.symlink({target!r}, {name!r})\n" for name, target in planted.items()
    )
    code += "os.mkdir('d')\nos.symlink('/etc/shadow', 'd/deep')\nprint('planted')\n"
    await run(executor, code, limits, workdir=session)
    # The next execution of the session hands the tree to a new uid (chown) and follows them.
    follow = (
        "import json, os\nres = {}\n"
        f"for name in {[*planted, 'd/deep']!r}:\n"
        "    try:\n"
        "        res[name] = 'READ ' + (str(os.listdir(name)) if os.path.isdir(name) "
        "else open(name).read(200))\n"
        "    except OSError as e:\n"
        "        res[name] = type(e).__name__\n"
        "print(json.dumps(res))\n"
    )
    res = results(await run(executor, follow, limits, workdir=session))
    for name, value in res.items():
        if name == "etc":  # resolves to the sandbox's own, minimal /etc
            assert "shadow" not in value and "passwd" in value
        else:
            assert not value.startswith("READ"), (name, value)
    for before, path in (
        (shadow_before, "/etc/shadow"),
        (etc_before, "/etc"),
        (repo_before, REPO_FILE),
    ):
        after = os.lstat(path)
        assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (
            before.st_uid,
            before.st_gid,
            stat.S_IMODE(before.st_mode),
        ), path
    await executor.release_workdir(session)  # rmtree must not follow them either
    assert hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest() == shadow_hash  # noqa: ASYNC240 (test)
    assert REPO_FILE.exists() and os.path.isdir("/root")  # noqa: ASYNC240 (test)
    await still_works(executor, limits)


# ------------------------------------------------------------------------- persistence


async def test_nothing_persists_between_executions_or_sessions(
    executor: LocalExecutor, limits: Limits, session_root: Path
) -> None:
    write = (
        "for d in ('/work', '/tmp', '/dev/shm'):\n"
        "    open(d + '/left-behind', 'w').write('x')\n"
        "print('written')\n"
    )
    look = (
        "import os\n"
        "print(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')), "
        "sorted(os.listdir('/dev/shm')))\n"
    )
    await run(executor, write, limits)
    assert (await run(executor, look, limits)).stdout == "[] [] []\n"
    s1, s2 = session_root / "a" / "work", session_root / "b" / "work"
    await run(executor, write, limits, workdir=s1)
    assert (await run(executor, look, limits, workdir=s2)).stdout == "[] [] []\n"
    # Within a session only the work dir persists; /tmp is per execution.
    assert (await run(executor, look, limits, workdir=s1)).stdout == "['left-behind'] [] []\n"
    await executor.release_workdir(s1)
    await executor.release_workdir(s2)
    await asyncio.sleep(0.2)  # background teardowns
    mounts = Path("/proc/self/mountinfo").read_text()  # noqa: ASYNC240 (test)
    assert str(s1) not in mounts and str(s2) not in mounts
    await still_works(executor, limits)
