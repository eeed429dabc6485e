"""Cold-start machinery: prepared scratches and network namespaces, the system root,
the precompiled python bootstrap (and that none of it changes what a program sees)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from attrs import evolve

from deepexec_server.sandbox import ExecutionRequest, Limits, SandboxSettings
from deepexec_server.sandbox.hostfs import is_mountpoint, mounts_under
from deepexec_server.sandbox.local import LocalExecutor

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


def req(code: str, limits: Limits, language: str = "python", **kw: object) -> ExecutionRequest:
    return ExecutionRequest(code=code, language=language, limits=limits, **kw)  # type: ignore[arg-type]


def _netns_fds() -> int:
    """How many network namespace descriptors this process holds (their inode numbers
    are recycled, so namespaces are counted, not named)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("net:[")
        except OSError:
            pass
    return count


WHO = (
    "import os, json\n"
    "print(json.dumps([os.getuid(), sorted(os.listdir('/work')), sorted(os.listdir('/tmp')),"
    " os.readlink('/proc/self/ns/net')]))\n"
)


async def test_prepared_scratches_serve_one_execution_each(
    make_settings: Callable[..., SandboxSettings], limits: Limits
) -> None:
    held_before = _netns_fds()
    ex = LocalExecutor(make_settings(prepared_scratches=2))
    await ex.start()
    try:
        prepared = list(ex._prepared)  # noqa: SLF001 - the prepared scratches are tested
        assert _netns_fds() == held_before + 2
        assert len(prepared) == 2
        netns_links = set()
        for p in prepared:
            s, uid = p.scratch, p.lease.uid
            assert p.lease.held and is_mountpoint(s.root, "tmpfs")
            for d in (s.work, s.tmp, s.shm):  # empty, the uid's alone
                st = os.stat(d)
                assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700)
                assert os.listdir(d) == []
            st = os.stat(s.prog)  # the program's directory: root's, readable by the uid
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, uid, 0o750)
            assert os.listdir(s.prog) == []
            assert f"sandbox:x:{uid}:{uid}:" in (s.etc / "passwd").read_text()
            assert p.netns is not None
            netns_links.add(os.readlink(f"/proc/self/fd/{p.netns}"))
            (s.etc / "marker").write_text("prepared")  # on its tmpfs: gone with it
        assert len(netns_links) == 2 and os.readlink("/proc/self/ns/net") not in netns_links

        seen = []
        for _ in range(4):
            out = await ex.execute(req(WHO, limits))
            assert out.exit_code == 0, out.stderr
            seen.append(json.loads(out.stdout))
            await asyncio.sleep(0.1)  # teardown and refill
        # The first two executions got the prepared ones (their uids, empty dirs)...
        assert [s[0] for s in seen[:2]] == [p.lease.uid for p in prepared]
        assert all(s[1] == [] and s[2] == [] for s in seen)
        # ...each network namespace served one sandbox, and none was the host's...
        assert netns_links == {s[3] for s in seen[:2]}
        assert os.readlink("/proc/self/ns/net") not in {s[3] for s in seen}
        # ...and what they used is gone: scratch unmounted (its tmpfs and everything on
        # it; the empty mount point may serve a new scratch), lease released, fd closed.
        for p in prepared:
            assert not (p.scratch.etc / "marker").exists() and not p.lease.held
        assert len(ex._prepared) == 2  # noqa: SLF001 - refilled with new ones
        assert _netns_fds() == held_before + 2  # the used ones' descriptors are closed
        for p in ex._prepared:  # noqa: SLF001
            assert is_mountpoint(p.scratch.root, "tmpfs") and os.listdir(p.scratch.work) == []
            assert not (p.scratch.etc / "marker").exists()
        assert not {p.lease.uid for p in ex._prepared} & {  # noqa: SLF001
            p.lease.uid for p in prepared
        }
        scratches = [m for m in mounts_under(ex._instance_dir) if "/x" in m]  # noqa: SLF001
        assert sorted(scratches) == sorted(str(p.scratch.root) for p in ex._prepared)  # noqa: SLF001
        left = list(ex._prepared)  # noqa: SLF001
    finally:
        await ex.close()
    # close() discards the ones left: unmounted, uids released, namespaces closed.
    assert not ex._prepared  # noqa: SLF001
    for p in left:
        assert not p.scratch.root.exists() and not p.lease.held
    assert _netns_fds() == held_before


async def test_prepared_scratch_adapts_to_the_request(
    executor: LocalExecutor, limits: Limits, session_dir: Path
) -> None:
    small = evolve(limits, max_disk=8 * 2**20)
    code = "import os\nst = os.statvfs('/tmp')\nprint(st.f_blocks * st.f_frsize)"
    out = await executor.execute(req(code, small))
    assert out.stdout.strip() == str(8 * 2**20), out
    # C compiles in /sandbox: the prepared scratch's program dir is given to the uid.
    out = await executor.execute(req('#include <stdio.h>\nint main(){puts("hi");}', limits, "c"))
    assert out.stdout == "hi\n", out
    # A session dir is bound on /work.
    out = await executor.execute(req("open('kept', 'w').write('x')", limits, workdir=session_dir))
    assert out.exit_code == 0, out.stderr
    assert (session_dir / "kept").read_text() == "x"
    await executor.release_workdir(session_dir)


async def test_without_prepared_scratches_bubblewrap_makes_the_namespace(
    make_settings: Callable[..., SandboxSettings], limits: Limits
) -> None:
    ex = LocalExecutor(make_settings(prepared_scratches=0))
    await ex.start()
    try:
        assert not ex._prepared  # noqa: SLF001
        outs = [json.loads((await ex.execute(req(WHO, limits))).stdout) for _ in range(2)]
        host = os.readlink("/proc/self/ns/net")
        assert outs[0][3] != host and outs[1][3] != host
    finally:
        await ex.close()


async def test_each_sandbox_has_its_own_loopback(executor: LocalExecutor, limits: Limits) -> None:
    """Two sandboxes at once: one listens on 127.0.0.1, the other cannot reach it."""
    listener = (
        "import socket, time\n"
        "s = socket.socket()\ns.bind(('127.0.0.1', 47011))\ns.listen()\n"
        "u = socket.socket(socket.AF_UNIX)\nu.bind('\\0deepexec-test')\nu.listen()\n"
        "print('up', flush=True)\ntime.sleep(3)\n"
    )
    up = asyncio.Event()

    async def on_output(stream: str, text: str) -> None:
        if "up" in text:
            up.set()

    task = asyncio.ensure_future(executor.execute(req(listener, limits), on_output=on_output))
    try:
        await asyncio.wait_for(up.wait(), 10)
        probe = (
            "import socket, json\nres = {}\n"
            "for name, fam, addr in (('tcp', socket.AF_INET, ('127.0.0.1', 47011)),"
            " ('unix', socket.AF_UNIX, '\\0deepexec-test')):\n"
            "    s = socket.socket(fam)\n"
            "    try:\n"
            "        s.connect(addr)\n        res[name] = 'CONNECTED'\n"
            "    except OSError as e:\n        res[name] = type(e).__name__\n"
            "print(json.dumps(res))\n"
        )
        res = json.loads((await executor.execute(req(probe, limits))).stdout)
        assert res == {"tcp": "ConnectionRefusedError", "unix": "ConnectionRefusedError"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_system_root_is_read_only_with_working_devices(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = (
        "import json, os, errno\nres = {}\n"
        "open('/dev/null', 'w').write('x')\n"
        "res['zero'] = open('/dev/zero', 'rb').read(4).hex()\n"
        "res['urandom'] = len(open('/dev/urandom', 'rb').read(16))\n"
        "try:\n    os.write(os.open('/dev/full', os.O_WRONLY), b'x')\nexcept OSError as e:\n"
        "    res['full'] = errno.errorcode[e.errno]\n"
        "for p in ('/', '/etc', '/dev', '/usr'):\n"
        "    try:\n        os.mkdir(p.rstrip('/') + '/x')\n        res[p] = 'MADE'\n"
        "    except OSError as e:\n        res[p] = errno.errorcode[e.errno]\n"
        "try:\n    os.mknod('/tmp/n', 0o20666, os.makedev(1, 3))\n    res['mknod'] = 'MADE'\n"
        "except OSError as e:\n    res['mknod'] = errno.errorcode[e.errno]\n"
        "mounts = [line.split() for line in open('/proc/self/mountinfo')]\n"
        "res['root'] = [m[5] for m in mounts if m[4] == '/']\n"
        "res['etc'] = sorted(os.listdir('/etc'))\n"
        "res['hosts'] = open('/etc/hosts').read()\n"
        "print(json.dumps(res))\n"
    )
    out = await executor.execute(req(code, limits))
    assert out.exit_code == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["zero"] == "00000000" and res["urandom"] == 16 and res["full"] == "ENOSPC"
    assert all(res[p] == "EROFS" for p in ("/", "/etc", "/dev", "/usr")), res
    assert res["mknod"] in ("EPERM", "EACCES")
    assert "ro" in res["root"][0].split(",") and "nosuid" in res["root"][0].split(",")
    assert {"passwd", "group", "hosts", "ld.so.cache", "ssl"} <= set(res["etc"])
    assert "shadow" not in res["etc"] and "localhost" in res["hosts"]


async def test_a_replaced_system_root_goes_once_its_sandboxes_are_gone(
    make_settings: Callable[..., SandboxSettings], limits: Limits
) -> None:
    ex = LocalExecutor(make_settings())
    await ex.start()
    try:
        old = ex._sysroot  # noqa: SLF001
        assert old is not None and is_mountpoint(old.path, "tmpfs")
        sleeper = asyncio.ensure_future(ex.execute(req("import time; time.sleep(1.5)", limits)))
        await asyncio.sleep(0.5)  # started on the old root
        old.fingerprint = (("/etc/ld.so.cache", "replaced"),)  # as if the host file changed
        ex._check_sysroot()  # noqa: SLF001
        assert ex._sysroot is old and ex._sysroot_task is not None  # noqa: SLF001
        await ex._sysroot_task  # noqa: SLF001 - built in a worker thread
        new = ex._sysroot  # noqa: SLF001
        assert new is not None and new is not old and old.retired
        assert old.path.exists()  # still in use by the sleeper
        out = await ex.execute(req("print(open('/etc/hosts').read().split()[0])", limits))
        assert out.stdout == "127.0.0.1\n", out
        assert (await sleeper).exit_code == 0
        await asyncio.sleep(0.2)  # its teardown
        assert not old.path.exists() and not mounts_under(old.path)
        assert new.path.exists()
    finally:
        await ex.close()
    assert not new.path.exists()


async def test_python_bootstrap_leaves_no_descriptor_and_cannot_be_altered(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = (
        "import os, json\nres = {}\n"
        "fds = [f'/proc/self/fd/{n}' for n in os.listdir('/proc/self/fd') if int(n) > 2]\n"
        "res['mine'] = sorted(os.readlink(p) for p in fds if os.path.exists(p))\n"
        "res['writes'] = []\n"
        "try:\n    pid1 = os.listdir('/proc/1/fd')\nexcept OSError:\n    pid1 = []\n"
        "for n in pid1:\n"
        "    p = f'/proc/1/fd/{n}'\n"
        "    try:\n        target = os.readlink(p)\n    except OSError:\n        continue\n"
        "    if 'deepexec-python-boot' in target:\n"
        "        try:\n            open(p, 'r+b').write(b'X')\n"
        "            res['writes'].append('WROTE')\n"
        "        except OSError as e:\n            res['writes'].append(type(e).__name__)\n"
        "print(json.dumps(res))\n"
    )
    out = await executor.execute(req(code, limits))
    assert out.exit_code == 0, out.stderr
    res = json.loads(out.stdout)
    assert not any("deepexec" in m or "socket" in m for m in res["mine"]), res
    assert "WROTE" not in res["writes"]
    # and the next program still starts normally
    assert (await executor.execute(req("print(1)", limits))).stdout == "1\n"


OBSERVABLES = (
    "import sys, os, json, traceback, warnings\n"
    "def where():\n"
    "    with warnings.catch_warnings(record=True) as w:\n"
    "        warnings.simplefilter('always')\n"
    "        warnings.warn('x', stacklevel=3)\n"
    "    return w[0].filename\n"
    "print(json.dumps({\n"
    "  'argv': sys.argv, 'path0': sys.path[:2], 'lb': sys.stdout.line_buffering,\n"
    "  'globals': sorted(globals()), 'file': __file__, 'loader': repr(__loader__),\n"
    "  'spec': repr(__spec__), 'cached': __cached__, 'stack': len(traceback.extract_stack()),\n"
    "  'warn': where(), 'env': sorted(os.environ), 'flags': repr(sys.flags),\n"
    "  'mods': sorted(m for m in ('marshal', 'ast', '_ast') if m in sys.modules),\n"
    "}))\n"
)


async def test_cold_and_warm_python_look_the_same(
    make_settings: Callable[..., SandboxSettings], limits: Limits
) -> None:
    cold = LocalExecutor(make_settings(languages=("python",)))
    warm = LocalExecutor(make_settings(languages=("python",), warm_pool_size=1))
    await cold.start()
    await warm.start()
    try:
        await warm.wait_warm()
        outs = []
        for ex in (cold, warm):
            out = await ex.execute(req(OBSERVABLES, limits, env={"PYTHONPATH": "/opt/x", "A": "1"}))
            assert out.exit_code == 0, out.stderr
            outs.append(json.loads(out.stdout))
        assert outs[0] == outs[1]
        seen = outs[0]
        assert seen["argv"] == ["/sandbox/main.py"] and seen["path0"] == ["/work", "/opt/x"]
        assert seen["lb"] is True and seen["file"] == "/sandbox/main.py"
        assert seen["warn"] == "<string>"  # the bootstrap's frame, as before
        assert "A" in seen["env"] and "PYTHONPATH" in seen["env"]
    finally:
        await cold.close()
        await warm.close()


async def test_an_environment_larger_than_the_socket_buffer_arrives_whole(
    executor: LocalExecutor, limits: Limits
) -> None:
    """Cold starts write what fits before the interpreter starts, the rest later."""
    env = {f"V{i}": str(i) * 5000 + "é" for i in range(100)}  # ~500 KB
    code = (
        "import os, hashlib\n"
        "print(hashlib.sha256(repr(sorted((k, v) for k, v in os.environ.items()"
        " if k.startswith('V'))).encode()).hexdigest())\n"
    )
    want = hashlib.sha256(repr(sorted(env.items())).encode()).hexdigest()
    out = await executor.execute(req(code, limits, env=env))
    assert out.exit_code == 0, out.stderr
    assert out.stdout.strip() == want
    out = await executor.execute(req("echo ${#V7}", limits, "bash", env=env))
    assert out.stdout == "5001\n", out


def _mounts_seen_from(ex: LocalExecutor) -> list[str]:
    """Mount points as bubblewrap sees them when the launcher starts it (in the minimal
    mount namespace)."""
    assert ex._launcher is not None and ex._mntns is not None  # noqa: SLF001
    r, w = os.pipe()
    out = subprocess.run(
        [str(ex._launcher), str(w), "-1", "-a", "-m", str(ex._mntns), "--"]  # noqa: SLF001
        + ["/usr/bin/cat", "/proc/self/mountinfo"],
        pass_fds=(w, ex._mntns),  # noqa: SLF001
        capture_output=True,
        text=True,
        check=True,
    )
    os.close(w)
    os.close(r)
    return [line.split()[4] for line in out.stdout.splitlines()]


async def test_bubblewrap_starts_in_a_minimal_mount_namespace(
    make_settings: Callable[..., SandboxSettings], limits: Limits
) -> None:
    ex = LocalExecutor(make_settings(prepared_scratches=1))
    await ex.start()
    try:
        assert ex._mntns is not None  # noqa: SLF001 - the smoke test passed in it
        assert ex._instance_dir is not None  # noqa: SLF001
        inst = str(ex._instance_dir)  # noqa: SLF001
        seen = _mounts_seen_from(ex)
        host = [line.split()[4] for line in open("/proc/self/mountinfo")]  # noqa: ASYNC230
        # Only what bubblewrap needs, not the host's mounts; the instance dir is there
        # (a slave copy of it), with what is mounted in it.
        assert {"/", "/usr", "/proc", inst} <= set(seen)
        assert not {m for m in seen if m.startswith(("/sys", "/dev"))}
        assert len([m for m in seen if not m.startswith(inst)]) < len(host)
        prepared = ex._prepared[0].scratch.root  # noqa: SLF001
        assert str(prepared) in seen
        # A scratch mounted (and unmounted) on the host later shows up (and goes: only
        # the new prepared one is left, on the same mount point or another).
        out = await ex.execute(req("print(1)", limits))
        assert out.stdout == "1\n"
        await asyncio.sleep(0.2)  # teardown, refill
        seen = _mounts_seen_from(ex)
        scratches = [m for m in seen if m.startswith(inst + "/x")]
        assert scratches == [str(ex._prepared[0].scratch.root)]  # noqa: SLF001
        # /usr and / keep their read-only flags in the sandbox.
        code = (
            "print([l.split()[5] for l in open('/proc/self/mountinfo')"
            " if l.split()[4] in ('/', '/usr')])"
        )
        opts = (await ex.execute(req(code, limits))).stdout
        assert opts.count("ro,") == 2 and "nodev" in opts, opts
    finally:
        await ex.close()
    assert not mounts_under(Path(inst))


async def test_a_new_system_root_comes_with_a_new_mount_namespace(
    make_settings: Callable[..., SandboxSettings], limits: Limits
) -> None:
    ex = LocalExecutor(make_settings())
    await ex.start()
    try:
        old_ns, old_root = ex._mntns, ex._sysroot  # noqa: SLF001
        assert old_ns is not None and old_root is not None
        old_root.fingerprint = ()  # as if a host file changed
        ex._check_sysroot()  # noqa: SLF001
        assert ex._sysroot_task is not None  # noqa: SLF001
        await ex._sysroot_task  # noqa: SLF001
        assert ex._sysroot is not old_root and ex._mntns is not None  # noqa: SLF001
        # The new root's binds are read-only in the new namespace and in the sandbox
        # (mount flags set after a mount is made do not propagate to slave copies).
        code = (
            "print([l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == '/usr'])"
        )
        out = await ex.execute(req(code, limits))
        assert "ro," in out.stdout and "nodev" in out.stdout, out
    finally:
        await ex.close()


async def test_minimal_mount_namespace_with_a_runtime_dir_outside_tmp(limits: Limits) -> None:
    """The default runtime dir is in /run: bubblewrap still finds its /tmp there."""
    runtime = Path(f"/run/deepexec-test-runtime-{os.getpid()}")
    runtime.mkdir(mode=0o711)  # noqa: ASYNC240 (test)
    try:
        ex = LocalExecutor(SandboxSettings(runtime_dir=runtime, warm_pool_size=0))
    except BaseException:
        runtime.rmdir()  # noqa: ASYNC240 (test)
        raise
    try:
        await ex.start()
        assert ex._mntns is not None  # noqa: SLF001 - not fallen back to the host's
        out = await ex.execute(req("print(1)", limits))
        assert out.stdout == "1\n", out
    finally:
        await ex.close()
        assert not mounts_under(runtime)
        shutil.rmtree(runtime)
