"""Resource abuse and process escapes: bombs, runaway output, leftovers, signals, ptrace.

Each test runs a real program in the sandbox (bounded so the suite stays fast),
asserts containment, then asserts the next execution works.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from attrs import evolve

from deepexec_server.sandbox import ExecutionOutcome, ExecutionRequest, Limits
from deepexec_server.sandbox.hostfs import mounts_under
from deepexec_server.sandbox.local import LocalExecutor
from deepexec_server.sandbox.uids import processes_of_uid

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

MiB = 2**20


def req(code: str, limits: Limits, language: str = "python", **kw: object) -> ExecutionRequest:
    return ExecutionRequest(code=code, language=language, limits=limits, **kw)  # type: ignore[arg-type]


async def still_works(executor: LocalExecutor, limits: Limits) -> None:
    out = await executor.execute(req("print('still ok')", limits))
    assert (out.stdout, out.exit_code) == ("still ok\n", 0), out


# ------------------------------------------------------------------------- processes


async def test_fork_bomb_is_stopped_far_below_2000(executor: LocalExecutor, limits: Limits) -> None:
    code = (
        "import os, time\nstarted = 0\n"
        "for _ in range(2000):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('stopped', started, e.errno, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    started += 1\n"
        "else:\n"
        "    print('NOT STOPPED', started, flush=True)\n"
        "print(os.getuid())\n"
    )
    out = await executor.execute(req(code, evolve(limits, max_processes=32)))
    word, started, errno_, uid = out.stdout.split()
    assert word == "stopped" and errno_ == "11", out  # EAGAIN from RLIMIT_NPROC
    assert int(started) <= 32
    assert processes_of_uid(int(uid)) == []  # the sleeping children died with the sandbox
    await still_works(executor, limits)


async def test_shell_fork_bomb_is_contained(executor: LocalExecutor, limits: Limits) -> None:
    bomb_limits = evolve(limits, timeout=2, max_processes=32)
    for bomb in (":(){ :|:& };:", ":(){ :|:& };:; sleep 5"):  # returning at once, or not
        t = time.monotonic()
        out = await executor.execute(req(f"echo $UID; {bomb}", bomb_limits, "bash"))
        assert time.monotonic() - t < 6
        uid = int(out.stdout.split()[0])
        assert processes_of_uid(uid) == [], out
    await still_works(executor, limits)


async def test_background_processes_do_not_outlive_the_call(
    executor: LocalExecutor, limits: Limits
) -> None:
    code = (
        "import os, subprocess, time\n"
        "subprocess.Popen(['sleep', '300'])\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "subprocess.Popen(['bash', '-c', 'nohup sleep 300 >/dev/null 2>&1 & disown'])\n"
        "if os.fork() == 0:\n"  # classic double-fork daemon
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 3)\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print(os.getuid(), len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    t = time.monotonic()
    out = await executor.execute(req(code, limits))
    uid, nprocs = map(int, out.stdout.split())
    assert nprocs >= 6 and out.exit_code == 0  # they were running...
    assert time.monotonic() - t < 5  # ...the call did not wait for them...
    assert processes_of_uid(uid) == []  # ...and none survived it
    await still_works(executor, limits)


async def test_signals_cannot_reach_the_server(executor: LocalExecutor, limits: Limits) -> None:
    code = (
        "import json, os, signal\nres = {}\n"
        "server = int(os.environ['SERVER_PID'])\n"
        "for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):\n"
        "    try:\n"
        "        os.kill(server, sig)\n"
        "        res[sig.name] = 'SENT'\n"
        "    except OSError as e:\n"
        "        res[sig.name] = type(e).__name__\n"
        "for target in (os.getppid(), 1):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGTERM)\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    os.kill(-1, signal.SIGKILL)\n"  # everything it may signal
        "except OSError:\n"
        "    pass\n"
        "print(json.dumps(res), flush=True)\n"
    )
    out = await executor.execute(req(code, limits, env={"SERVER_PID": str(os.getpid())}))
    res = json.loads(out.stdout)
    assert set(res.values()) == {"ProcessLookupError"}, res  # not even visible
    assert os.getppid() > 0  # we (the server) are obviously still here
    await still_works(executor, limits)


async def test_ptrace_cannot_reach_outside(executor: LocalExecutor, limits: Limits) -> None:
    code = (
        "import ctypes, json, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "PTRACE_ATTACH = 16\nres = {}\n"
        "r = libc.ptrace(PTRACE_ATTACH, int(os.environ['SERVER_PID']), 0, 0)\n"
        "res['server'] = (r, ctypes.get_errno())\n"
        "status = open('/proc/self/status').read()\n"
        "res['caps'] = [l for l in status.splitlines() if l.startswith('Cap')]\n"
        "res['nnp'] = 'NoNewPrivs:\\t1' in status\n"
        "res['seccomp'] = 'Seccomp:\\t2' in status\n"
        "res['pid1'] = open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode()\n"
        "res['pid1_fds'] = sorted(os.readlink(f'/proc/1/fd/{fd}').split(':')[0] "
        "for fd in os.listdir('/proc/1/fd'))\n"
        "r = libc.ptrace(PTRACE_ATTACH, 1, 0, 0)\n"
        "res['attach_pid1'] = (r, ctypes.get_errno())\n"
        "child = os.fork()\n"
        "if child == 0:\n    import time; time.sleep(5); os._exit(0)\n"
        "r = libc.ptrace(PTRACE_ATTACH, child, 0, 0)\n"
        "res['attach_child'] = (r, ctypes.get_errno())\n"
        "buf = ctypes.create_string_buffer(8)\n"
        "class iovec(ctypes.Structure):\n"
        "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "iov = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)\n"
        "r = libc.process_vm_readv(child, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0)\n"
        "res['vm_read_child'] = (r, ctypes.get_errno())\n"
        "os.kill(child, 9); os.waitpid(child, 0)\n"
        "print(json.dumps(res))\n"
    )
    out = await executor.execute(req(code, limits, env={"SERVER_PID": str(os.getpid())}))
    res = json.loads(out.stdout)
    # EPERM: ptrace is refused outright (seccomp); the server's pid is not even visible
    # in there either (test_signals_cannot_reach_the_server)
    assert res["server"] == [-1, 1]
    # "pid 1" is the sandbox's own bubblewrap init (same unprivileged uid): tracing it
    # gains nothing; it holds no descriptor to anything outside.
    assert res["pid1"] == "/usr/bin/bwrap"
    assert set(res["pid1_fds"]) <= {"pipe", "anon_inode", "/dev/null"}, res
    assert all(line.split()[1] == "0000000000000000" for line in res["caps"]), res
    assert res["nnp"] and res["seccomp"]
    # and no process of the sandbox can be traced or read by another (seccomp: EPERM)
    assert res["attach_pid1"] == [-1, 1] and res["attach_child"] == [-1, 1], res
    assert res["vm_read_child"] == [-1, 1], res
    await still_works(executor, limits)


async def test_setuid_binaries_grant_nothing(executor: LocalExecutor, limits: Limits) -> None:
    code = (
        "import json, os, stat, subprocess\nres = {'suid': []}\n"
        "for d in ('/usr/bin', '/usr/sbin', '/usr/lib'):\n"
        "    for root, _, files in os.walk(d):\n"
        "        for f in files:\n"
        "            p = os.path.join(root, f)\n"
        "            try:\n"
        "                if os.lstat(p).st_mode & stat.S_ISUID: res['suid'].append(p)\n"
        "            except OSError: pass\n"
        "def run(*argv):\n"
        "    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)\n"
        "    return [r.returncode, (r.stdout + r.stderr)[-200:]]\n"
        "res['mount'] = run('mount', '-t', 'tmpfs', 'none', '/tmp')\n"
        "res['su'] = run('su', '-c', 'id -u', 'root')\n"
        "res['unshare'] = run('unshare', '-U', '-r', 'id', '-u')\n"
        "res['chroot'] = run('/usr/sbin/chroot', '/', 'true')\n"
        "res['id'] = run('id', '-u')\n"
        "res['mnt_opts'] = [l.split()[5] for l in open('/proc/self/mountinfo')"
        " if l.split()[4] == '/usr']\n"
        "print(json.dumps(res))\n"
    )
    out = await executor.execute(req(code, limits))
    assert out.exit_code == 0, out.stderr
    res = json.loads(out.stdout)
    assert "/usr/bin/mount" in res["suid"] and "/usr/bin/su" in res["suid"]  # present...
    for name in ("mount", "su", "unshare", "chroot"):
        assert res[name][0] != 0, (name, res[name])  # ...but useless
    uid = res["id"][1].strip()
    assert int(uid) >= executor.settings.uid_base
    assert {"ro", "nosuid", "nodev"} <= set(res["mnt_opts"][0].split(","))
    await still_works(executor, limits)


# ------------------------------------------------------------------------- memory


async def test_memory_bombs_hit_the_limit(executor: LocalExecutor, limits: Limits) -> None:
    small = evolve(limits, memory=128 * MiB)
    bombs = {
        "python": "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))",
        "javascript": "const a = []; while (true) a.push(Buffer.alloc(16 * 2**20, 1));",
        "ruby": "a = []\nloop { a << ('x' * (16 * 2**20)) }",
        "c": (
            "#include <stdlib.h>\n#include <string.h>\n#include <stdio.h>\n"
            "int main(void){ size_t n = 0; for (;;) { char *p = malloc(16 << 20);"
            ' if (!p) { printf("refused after %zu MiB\\n", n * 16); return 1; }'
            " memset(p, 1, 16 << 20); n++; } }"
        ),
    }
    for language, code in bombs.items():
        out = await executor.execute(req(code, small, language))
        assert out.exit_code != 0 and not out.timed_out, (language, out)
        # V8 gets RLIMIT_DATA = memory and 1 GiB more address space it never touches.
        assert out.memory_usage < 128 * MiB + 64 * MiB, (language, out.memory_usage)
    await still_works(executor, limits)


async def test_memory_outside_rlimits_is_refused(executor: LocalExecutor, limits: Limits) -> None:
    code = (
        "import ctypes, json, mmap, os\nlibc = ctypes.CDLL(None, use_errno=True)\nres = {}\n"
        "try:\n"
        "    os.memfd_create('bomb')\n"
        "    res['memfd'] = 'CREATED'\n"
        "except OSError as e:\n"
        "    res['memfd'] = e.errno\n"
        "res['shmget'] = (libc.shmget(0, 64 << 20, 0o1000 | 0o600), ctypes.get_errno())\n"
        "res['msgget'] = (libc.msgget(0, 0o1000 | 0o600), ctypes.get_errno())\n"
        "try:\n"
        "    m = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_SHARED)\n"
        "    res['shared_map'] = 'MAPPED'\n"
        "except OSError as e:\n"
        "    res['shared_map'] = e.errno\n"
        "print(json.dumps(res))\n"
    )
    res = json.loads((await executor.execute(req(code, limits))).stdout)
    assert res == {"memfd": 1, "shmget": [-1, 1], "msgget": [-1, 1], "shared_map": 12}, res
    await still_works(executor, limits)


# ------------------------------------------------------------------------- disk


async def test_disk_fill_is_bounded(executor: LocalExecutor, limits: Limits) -> None:
    quota = evolve(limits, max_disk=8 * MiB, max_file_size=64 * MiB)
    code = (
        "import json, os\nres = {}\nblock = b'x' * 2**20\n"
        "for d in ('/work', '/tmp', '/dev/shm'):\n"
        "    written = 0\n"
        "    try:\n"
        "        with open(d + '/fill', 'wb') as f:\n"
        "            for _ in range(64):\n"
        "                f.write(block); f.flush(); written += 1\n"
        "    except OSError as e:\n"
        "        res[d] = [written, e.errno]\n"
        "    else:\n"
        "        res[d] = [written, 0]\n"
        "    os.remove(d + '/fill') if d != '/work' else None\n"
        "n = 0\n"
        "try:\n"
        "    for n in range(100000):\n"
        "        open(f'/tmp/f{n}', 'w').close()\n"
        "except OSError as e:\n"
        "    res['inodes'] = [n, e.errno]\n"
        "print(json.dumps(res))\n"
    )
    res = json.loads((await executor.execute(req(code, quota))).stdout)
    for d in ("/work", "/tmp", "/dev/shm"):
        written, err = res[d]
        assert err == 28 and written <= 8, (d, res)  # ENOSPC at the quota
    assert res["inodes"][1] == 28 and res["inodes"][0] < 5000  # nr_inodes bound
    big_file = evolve(limits, max_file_size=1 * MiB)
    out = await executor.execute(req("open('/work/f', 'wb').write(b'x' * (2 * 2**20))", big_file))
    assert out.signal == 25 or "File too large" in out.stderr, out  # SIGXFSZ / EFBIG
    await asyncio.sleep(0.2)
    # The scratches of finished executions are gone: only the warm pool's and the
    # prepared (empty, unused) ones are still mounted.
    live = {m for m in mounts_under(executor.settings.runtime_dir) if "/x" in m}
    pooled = {str(b.scratch.root) for q in executor._pool.values() for b in q}  # noqa: SLF001
    prepared = {str(p.scratch.root) for p in executor._prepared}  # noqa: SLF001
    assert live == pooled | prepared
    assert len(prepared) <= executor.settings.prepared_scratches
    assert len(pooled) <= executor.settings.warm_pool_size * len(executor._pool)  # noqa: SLF001
    await still_works(executor, limits)


# ------------------------------------------------------------------------- time & output


async def test_runaway_output_and_sleeping_past_the_timeout(
    executor: LocalExecutor, limits: Limits
) -> None:
    t = time.monotonic()
    flood = await executor.execute(
        req("import sys\nwhile True: sys.stdout.write('z' * 65536)", evolve(limits, max_output=MiB))
    )
    assert flood.stdout_truncated and len(flood.stdout) == MiB and flood.signal == 9
    assert time.monotonic() - t < 5
    both: ExecutionOutcome = await executor.execute(
        req("yes out & yes err >&2", evolve(limits, max_output=100_000), "bash")
    )
    assert both.stdout_truncated or both.stderr_truncated
    t = time.monotonic()
    slow = await executor.execute(
        req("echo $UID; sleep 30 & sleep 30", evolve(limits, timeout=1), "bash")
    )
    assert slow.timed_out and slow.signal == 9 and time.monotonic() - t < 5
    assert processes_of_uid(int(slow.stdout)) == []
    await still_works(executor, limits)


async def test_stdin_flood_does_not_block_the_server(
    executor: LocalExecutor, limits: Limits
) -> None:
    # The program never reads stdin; a big stdin must not wedge the call.
    out = await executor.execute(req("print('ignored stdin')", limits, stdin="s" * (8 * MiB)))
    assert out.stdout == "ignored stdin\n"
    await still_works(executor, limits)


async def test_runtime_dir_is_not_left_mounted_after_close(runtime_dir: Path) -> None:
    # Runs after the module's executor tests above (same runtime dir); the executor
    # fixture is still open here, so only check that nothing escaped its instance dir.
    assert all(Path(m).is_relative_to(runtime_dir) for m in mounts_under(runtime_dir))
