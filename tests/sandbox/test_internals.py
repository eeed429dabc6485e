"""Building blocks: uid leases and sweeps, the seccomp program, session tmpfs, launcher,
the system root, prepared network namespaces."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import queue
import stat
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from deepexec_server.sandbox.hostfs import (
    Fingerprint,
    SysrootSpec,
    bind_mount,
    build_sysroot,
    chown_tree,
    destroy_tree,
    ensure_session_dir,
    is_mountpoint,
    mounts_under,
    release_session_dir,
    remove_tree,
    sysroot_stale,
)
from deepexec_server.sandbox.launcher import build_launcher
from deepexec_server.sandbox.netns import new_netns
from deepexec_server.sandbox.seccomp import BLOCKED, seccomp_filter
from deepexec_server.sandbox.uids import UidPool, check_uid_range, processes_of_uid, sweep_uid

pytestmark = pytest.mark.timeout(30)

UID = 2_100_000_900  # inside the default sandbox range, far from what the tests lease


def test_uid_leases_are_exclusive_across_pools(tmp_path: Path) -> None:
    a = UidPool(tmp_path, UID, 3)
    b = UidPool(tmp_path, UID, 3)  # another executor sharing the lock dir
    leases = [a.try_lease(), b.try_lease(), a.try_lease()]
    assert all(lease is not None for lease in leases)
    uids = {lease.uid for lease in leases if lease is not None}
    assert uids == {UID, UID + 1, UID + 2}
    assert b.try_lease() is None and a.try_lease() is None  # range exhausted
    first = leases[0]
    assert first is not None
    a.release(first)
    again = b.try_lease()
    assert again is not None and again.uid == first.uid


def test_sweep_kills_every_process_of_a_uid() -> None:
    procs = [
        subprocess.Popen(["sleep", "60"], user=UID, group=UID, extra_groups=[]) for _ in range(3)
    ]
    try:
        assert sorted(processes_of_uid(UID)) == sorted(p.pid for p in procs)
        # sweep_uid waits for the zombies to be reaped: their parent (we) must wait().
        threads = [threading.Thread(target=p.wait) for p in procs]
        for t in threads:
            t.start()
        assert sweep_uid(UID) == 3
        for t in threads:
            t.join(5)
        assert processes_of_uid(UID) == []
        assert all(p.returncode == -9 for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_uid_range_must_not_hold_users() -> None:
    assert check_uid_range(1, 10) is not None  # daemon, bin, sys... are uids 1-3
    assert check_uid_range(2_100_000_000, 1024) is None


def test_seccomp_program_shape() -> None:
    prog = seccomp_filter("x86_64")
    assert prog is not None and len(prog) % 8 == 0
    insns = [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]
    assert insns[1][3] == 0xC000003E  # checks the architecture first
    jeqs = [k for code, _, _, k in insns if code == 0x15][1:]
    assert 319 in jeqs and 29 in jeqs and len(jeqs) == len(BLOCKED)  # memfd_create, shmget
    for i, (code, jt, _, _) in enumerate(insns):
        if code in (0x15, 0x35) and i > 1:  # every match jumps to a refusal
            assert insns[i + 1 + jt][0] == 0x06 and insns[i + 1 + jt][3] != 0x7FFF0000
    assert seccomp_filter("aarch64") is not None
    assert seccomp_filter("sparc64") is None


def test_session_dir_quota_mount_lifecycle() -> None:
    parent = Path(tempfile.mkdtemp(prefix="deepexec-test-"))
    try:
        d = parent / "s" / "work"
        d.mkdir(parents=True)
        (d / "before.txt").write_text("kept")
        ensure_session_dir(d, 2 * 2**20)
        assert is_mountpoint(d, "tmpfs") and (d / "before.txt").read_text() == "kept"
        assert not (parent / "s" / "work.pre-quota").exists()
        st = os.statvfs(d)
        assert st.f_blocks * st.f_frsize == 2 * 2**20
        ensure_session_dir(d, 4 * 2**20)  # a later request with a bigger quota
        st = os.statvfs(d)
        assert st.f_blocks * st.f_frsize == 4 * 2**20
        (d / "sub").mkdir()
        os.symlink("/etc/shadow", d / "sub" / "link")
        chown_tree(d, UID)
        assert os.lstat(d / "sub" / "link").st_uid == UID
        assert os.stat("/etc/shadow").st_uid == 0  # the link was not followed
        release_session_dir(d)
        assert not is_mountpoint(d) and list(d.iterdir()) == []
    finally:
        release_session_dir(parent / "s" / "work")
        subprocess.run(["rm", "-rf", str(parent)], check=False)


def test_launcher_reports_exact_peak_rss_and_wait_status(tmp_path: Path) -> None:
    launcher = build_launcher(tmp_path)
    assert build_launcher(tmp_path) == launcher  # built once per source version
    r, w = os.pipe()
    code = (
        "b = bytearray(50 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\nraise SystemExit(7)"
    )
    t = time.monotonic()
    subprocess.run(
        [str(launcher), str(w), "-1", "-a", "--", "/usr/bin/python3", "-c", code],
        pass_fds=(w,),
        check=True,
    )
    os.close(w)
    status, rss_kib = map(int, os.read(r, 100).split())
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 7
    assert 50 * 1024 < rss_kib < 90 * 1024  # the program's peak, not this process's
    assert time.monotonic() - t < 10


def test_sysroot_is_read_only_and_notices_replaced_host_files(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "dir" / "sub").mkdir(parents=True)
    (host / "dir" / "sub" / "f").write_text("in a copied tree")
    os.symlink("sub/f", host / "dir" / "link")
    (host / "file").write_text("copied")
    (host / "bound").mkdir()
    (host / "bound" / "b").write_text("bound")
    spec = SysrootSpec(
        ro_binds=(str(host / "bound"),),
        copies=(str(host / "file"), str(host / "dir")),
        symlinks=(("/etc/localtime", "/usr/share/zoneinfo/UTC"),),
        devices=("/dev/null",),
        files=(("/etc/hosts", b"127.0.0.1 localhost\n"),),
        dirs=("/proc", "/tmp"),
        mount_points=("/etc/passwd",),
    )
    root = tmp_path / "root"
    fingerprint = build_sysroot(root, spec)
    try:
        mirror = root / str(host).lstrip("/")
        assert (mirror / "file").read_text() == "copied"
        assert (mirror / "dir" / "sub" / "f").read_text() == "in a copied tree"
        assert os.readlink(mirror / "dir" / "link") == "sub/f"
        assert (mirror / "bound" / "b").read_text() == "bound"
        assert os.readlink(root / "etc" / "localtime") == "/usr/share/zoneinfo/UTC"
        assert (root / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
        assert stat.S_ISCHR(os.stat(root / "dev" / "null").st_mode)
        assert os.stat(root / "dev" / "null").st_rdev == os.stat("/dev/null").st_rdev
        for target in (root / "new", mirror / "bound" / "new", root / "etc" / "new"):
            with pytest.raises(OSError) as err:
                target.write_text("x")
            assert err.value.errno == errno.EROFS
        assert not sysroot_stale(spec, fingerprint)
        (host / "bound" / "b").write_text("changed")  # a bound directory is live
        assert (mirror / "bound" / "b").read_text() == "changed"
        assert not sysroot_stale(spec, fingerprint)
        (host / "dir" / "sub" / "f").write_text("changed")  # copies are not: noticed
        assert sysroot_stale(spec, fingerprint)
        fingerprint = _rebuilt(root, spec)
        (host / "dir" / "link").unlink()
        os.symlink("elsewhere", host / "dir" / "link")
        assert sysroot_stale(spec, fingerprint)
        fingerprint = _rebuilt(root, spec)
        os.rename(host / "file", host / "old")
        (host / "file").write_text("replaced")
        assert sysroot_stale(spec, fingerprint)
    finally:
        assert destroy_tree(root)
    assert not root.exists() and not mounts_under(tmp_path)
    assert (host / "bound" / "b").read_text() == "changed"  # never deleted through


def _rebuilt(root: Path, spec: SysrootSpec) -> Fingerprint:
    assert destroy_tree(root)
    return build_sysroot(root, spec)


def test_remove_tree_never_deletes_through_a_mount(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("host data")
    tree = tmp_path / "tree"
    (tree / "a" / "bind").mkdir(parents=True)
    (tree / "a" / "mine").write_text("ours")
    bind_mount(keep, tree / "a" / "bind")
    assert remove_tree(tree)
    assert not tree.exists()
    assert (keep / "precious").read_text() == "host data"


def test_prepared_network_namespace_has_only_loopback_up(tmp_path: Path) -> None:
    fd = new_netns()
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") != os.readlink("/proc/self/ns/net")
        launcher = build_launcher(tmp_path)
        r, w = os.pipe()
        code = (
            "import os, socket\n"
            "print(os.readlink('/proc/self/ns/net'), socket.if_nameindex())\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "socket.create_connection(s.getsockname()).close(); print('loopback up')\n"
            "print(sorted(os.listdir('/proc/self/fd')))\n"
        )
        out = subprocess.run(
            [str(launcher), str(w), str(UID), "-a", "-n", str(fd), "--"]
            + ["/usr/bin/python3", "-c", code],
            pass_fds=(w, fd),
            capture_output=True,
            text=True,
            check=True,
        )
        os.close(w)
        assert os.read(r, 100).split()[0] == b"0", out.stderr
        os.close(r)
        ns, names = out.stdout.splitlines()[0].split(" ", 1)
        assert ns == os.readlink(f"/proc/self/fd/{fd}") and names == "[(1, 'lo')]"
        assert out.stdout.splitlines()[1] == "loopback up"
        assert str(fd) not in out.stdout.splitlines()[2]  # the launcher closed it
    finally:
        os.close(fd)


def test_no_thread_of_the_server_stays_in_a_prepared_network_namespace() -> None:
    """The helper thread that makes the namespaces goes back to the host's after each;
    several made at once (from several threads) are all distinct."""
    host = os.readlink("/proc/self/ns/net")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        fds = list(pool.map(lambda _: new_netns(), range(8)))
    try:
        made = {os.readlink(f"/proc/self/fd/{fd}") for fd in fds}
        assert len(made) == 8 and host not in made
        threads = os.listdir("/proc/self/task")
        assert {os.readlink(f"/proc/self/task/{t}/ns/net") for t in threads} == {host}
    finally:
        for fd in fds:
            os.close(fd)


def test_the_namespace_helper_answers_and_lives_on_when_closing_a_descriptor_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing its descriptor of the host's namespace fails once (as when another thread
    closed that number already): the request is still answered, and the next one too."""
    from deepexec_server.sandbox import netns

    failed: list[int] = []

    class FlakyOs:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def close(fd: int) -> None:
            os.close(fd)
            if not failed:
                failed.append(fd)
                raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(netns, "os", FlakyOs())
    first = new_netns()
    second = new_netns()
    try:
        assert failed
        host = os.readlink("/proc/self/ns/net")
        made = {os.readlink(f"/proc/self/fd/{fd}") for fd in (first, second)}
        assert len(made) == 2 and host not in made
    finally:
        os.close(first)
        os.close(second)


def test_new_netns_gives_up_with_a_clear_error_when_no_answer_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deepexec_server.sandbox import netns

    monkeypatch.setattr(netns, "REPLY_TIMEOUT", 1.0)
    monkeypatch.setattr(netns, "_requests", queue.SimpleQueue())  # no helper serves it
    monkeypatch.setattr(netns, "_ensure_helper", lambda: None)
    started = time.monotonic()
    with pytest.raises(OSError, match="no network namespace made within 1 s") as raised:
        new_netns()
    assert raised.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - started < 10
