"""Host-side file system work for the local backend: size-limited tmpfs mounts.

Every writable place a sandbox sees is a tmpfs mounted *on the host* by the server
(which runs as root) with ``size=`` (the disk quota) and ``nr_inodes=`` (so empty
files cannot eat kernel memory without bound), then bind-mounted into the sandbox:

* per execution, a *scratch* tmpfs holding ``work/`` (``/work``: a fresh dir, or the
  session dir bind-mounted there), ``tmp/`` (``/tmp``), ``shm/`` (``/dev/shm``),
  ``prog/`` (``/sandbox``: the program file, read-only to the program) and ``etc/``
  (the synthetic ``/etc/passwd``, ``group``, ``hosts``). Its quota is the request's
  ``max_disk``, shared by all of them (for a session, by all but ``/work``).
  Unmounting it (lazily) destroys everything at once, whatever the program left.
* per session, a tmpfs mounted on the session directory itself on first use (quota
  ``max_disk``, resized when a later request asks for another size), kept until
  :func:`release_session_dir` unmounts it.

All functions here are synchronous and fast (a few system calls); the tree walk that
hands a session dir to a new uid never follows symlinks (``os.fwalk`` with
``follow_symlinks=False`` and ``lchown`` relative to directory fds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MountError",
    "Scratch",
    "bind_mount",
    "chown_tree",
    "ensure_session_dir",
    "is_mountpoint",
    "make_scratch",
    "mount_tmpfs",
    "mounts_under",
    "release_session_dir",
    "unmount",
    "write_new_file",
]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(OSError):
    """A mount or unmount system call failed."""


def inode_budget(size: int) -> int:
    """``nr_inodes`` for a tmpfs of ``size`` bytes: one inode per 4 KiB, at least 1024."""
    return max(1024, size // 4096)


def mount_tmpfs(target: Path, size: int, *, mode: int = 0o755, remount: bool = False) -> None:
    """Mount (or, with ``remount``, resize) a ``nosuid,nodev`` tmpfs on ``target``."""
    opts = f"size={size},nr_inodes={inode_budget(size)},mode={mode:o}"
    flags = MS_NOSUID | MS_NODEV | (MS_REMOUNT if remount else 0)
    rc = _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, opts.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Lazily unmount ``target`` (``MNT_DETACH``); a path that is not mounted is fine."""
    rc = _libc.umount2(os.fsencode(target), MNT_DETACH)
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise MountError(err, f"umount {target}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts() -> Iterator[tuple[str, str]]:
    """(mount point, fs type) of every mount in this process's namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            yield _unescape(parts[4]), parts[sep + 1]


def is_mountpoint(path: Path, fstype: str | None = None) -> bool:
    """Whether ``path`` is a mount point (optionally of ``fstype``)."""
    target = os.path.realpath(path)
    for point, kind in _mounts():
        if point == target and (fstype is None or kind == fstype):
            return True
    return False


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (the order to unmount them)."""
    base = os.path.realpath(root)
    found = {p for p, _ in _mounts() if p == base or p.startswith(base + "/")}
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def write_new_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` exclusively (never following a symlink) and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class Scratch:
    """A per-execution tmpfs (see the module docstring). Create with :func:`make_scratch`."""

    def __init__(self, root: Path, uid: int) -> None:
        self.root = root
        self.uid = uid
        self.work = root / "work"
        self.tmp = root / "tmp"
        self.shm = root / "shm"
        self.prog = root / "prog"
        self.etc = root / "etc"

    def destroy(self) -> None:
        """Unmount the tmpfs (freeing all its content) and remove the mount point."""
        unmount(self.root)
        try:
            self.root.rmdir()
        except FileNotFoundError:
            pass


_ETC_GROUP = "root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n"
_ETC_PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "sandbox:x:{uid}:{uid}:sandbox:/work:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_ETC_HOSTS = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def bind_mount(source: Path, target: Path) -> None:
    """Bind-mount ``source`` on ``target`` (both must exist)."""
    rc = _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"bind {source} on {target}: {os.strerror(err)}")


def make_scratch(
    root: Path, uid: int, size: int, *, session_dir: Path | None, prog_writable: bool
) -> Scratch:
    """Mount a fresh scratch tmpfs of ``size`` bytes on ``root`` and lay it out.

    With ``session_dir``, that directory is bind-mounted on ``work/`` (so the
    unprivileged bubblewrap finds it through world-traversable directories whatever
    the permissions on the way to the server's state dir); otherwise ``work/`` is a
    fresh directory of the scratch. ``prog_writable`` gives ``prog/`` to the sandbox
    uid (for a compile step); otherwise it stays root's, readable by the uid's group.
    Unmounting the scratch (:meth:`Scratch.destroy`) detaches the bind as well.
    """
    root.mkdir(mode=0o711)
    try:
        mount_tmpfs(root, size, mode=0o711)
    except BaseException:
        root.rmdir()
        raise
    s = Scratch(root, uid)
    try:
        for d in (s.tmp, s.shm, s.work):
            d.mkdir(mode=0o700)
            os.chown(d, uid, uid)
        if session_dir is not None:
            bind_mount(session_dir, s.work)
        s.prog.mkdir(mode=0o750)
        os.chown(s.prog, uid if prog_writable else 0, uid)
        if prog_writable:
            s.prog.chmod(0o700)
        s.etc.mkdir(mode=0o755)
        write_new_file(s.etc / "passwd", _ETC_PASSWD.format(uid=uid).encode())
        write_new_file(s.etc / "group", _ETC_GROUP.format(uid=uid).encode())
        write_new_file(s.etc / "hosts", _ETC_HOSTS.encode())
    except BaseException:
        s.destroy()
        raise
    return s


def chown_tree(top: Path, uid: int) -> None:
    """Give ``top`` and everything below it to ``uid`` without following symlinks."""
    os.chown(top, uid, uid, follow_symlinks=False)
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        for name in dirnames + filenames:
            try:
                os.chown(name, uid, uid, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                pass


def _used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def ensure_session_dir(path: Path, size: int) -> None:
    """Make ``path`` a tmpfs of ``size`` bytes (the session's disk quota).

    First use: the directory is created if needed; content already there (say, files
    the server put in) is moved into the new tmpfs. Later uses with another ``size``
    resize the tmpfs (never below what is already stored: then the old size stays).
    """
    path = Path(os.path.realpath(path))
    if is_mountpoint(path, "tmpfs"):
        current = os.statvfs(path)
        if current.f_blocks * current.f_frsize != size and _used_bytes(path) <= size:
            try:
                mount_tmpfs(path, size, mode=0o700, remount=True)
            except MountError:
                pass
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(str(path))
    existing = os.listdir(path)
    if not existing:
        mount_tmpfs(path, size, mode=0o700)
        return
    aside = path.with_name(path.name + ".pre-quota")
    path.rename(aside)
    path.mkdir(mode=0o700)
    mount_tmpfs(path, size, mode=0o700)
    try:
        for name in existing:
            src = aside / name
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, path / name, symlinks=True)
            else:
                shutil.copy2(src, path / name, follow_symlinks=False)
    except BaseException:
        unmount(path)
        path.rmdir()
        aside.rename(path)
        raise
    shutil.rmtree(aside)


def release_session_dir(path: Path) -> None:
    """Unmount a session dir's tmpfs, destroying its content; the (now empty) directory
    itself stays for its owner to remove."""
    path = Path(os.path.realpath(path))
    while is_mountpoint(path):
        unmount(path)
