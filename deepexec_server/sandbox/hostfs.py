"""Host-side file system work for the local backend: size-limited tmpfs mounts.

Every writable place a sandbox sees is a tmpfs mounted *on the host* by the server
(which runs as root) with ``size=`` (the disk quota) and ``nr_inodes=`` (so empty
files cannot eat kernel memory without bound), then bind-mounted into the sandbox:

* per execution, a *scratch* tmpfs holding ``work/`` (``/work``: a fresh dir, or the
  session dir bind-mounted there), ``tmp/`` (``/tmp``), ``shm/`` (``/dev/shm``),
  ``prog/`` (``/sandbox``: the program file, read-only to the program) and ``etc/``
  (the synthetic ``/etc/passwd`` and ``group``, which name the sandbox uid). Its quota
  is the request's ``max_disk``, shared by all of them (for a session, by all but
  ``/work``). Unmounting it (lazily) destroys everything at once, whatever the
  program left.
* per session, a tmpfs mounted on the session directory itself on first use (quota
  ``max_disk``, resized when a later request asks for another size), kept until
  :func:`release_session_dir` unmounts it.

The read-only rest of a sandbox's file system is one *system root* per executor
(:func:`build_sysroot`): a small tmpfs holding the directory skeleton (``/etc``,
``/dev``, the mount points), copies of the public ``/etc`` pieces (files and
directory trees), the device nodes and a read-only bind mount of ``/usr``; it is
made read-only once built. Every sandbox mounts it as its root in one recursive bind
(bubblewrap re-reads the mount table after each bind it makes, so one bind of a
prepared tree costs a fraction of the twenty it replaces), then binds its scratch on
top. :func:`sysroot_stale` tells when a host file it copied or bound has been
changed or replaced since (package upgrade, ``ldconfig``), so that the executor
builds a fresh one.

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

from attrs import define

__all__ = [
    "ETC_HOSTS",
    "MountError",
    "Scratch",
    "SysrootSpec",
    "adapt_scratch",
    "bind_mount",
    "build_sysroot",
    "chown_tree",
    "destroy_tree",
    "ensure_session_dir",
    "is_mountpoint",
    "make_scratch",
    "make_shared_mount",
    "mount_tmpfs",
    "mounts_under",
    "release_session_dir",
    "remove_tree",
    "resize_tmpfs",
    "sysroot_stale",
    "unmount",
    "write_new_file",
]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MS_RELATIME = 0x200000
MNT_DETACH = 0x2

#: per-mount options of /proc/self/mountinfo -> mount flags (kept when remounting)
_MOUNT_OPTION_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}

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


def _mount_table() -> Iterator[tuple[str, str, int]]:
    """(mount point, fs type, per-mount flags) of every mount in this namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            flags = 0
            for opt in parts[5].split(","):
                flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
            yield _unescape(parts[4]), parts[sep + 1], flags


def _mounts() -> Iterator[tuple[str, str]]:
    """(mount point, fs type) of every mount in this process's namespace."""
    for point, kind, _ in _mount_table():
        yield point, kind


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

    def __init__(self, root: Path, uid: int, size: int = 0) -> None:
        self.root = root
        self.uid = uid
        #: the quota (bytes) of the tmpfs
        self.size = size
        self.work = root / "work"
        self.tmp = root / "tmp"
        self.shm = root / "shm"
        self.prog = root / "prog"
        self.etc = root / "etc"

    def destroy(self, *, keep_mount_point: bool = False) -> None:
        """Unmount the tmpfs (freeing all its content) and remove the mount point (or,
        with ``keep_mount_point``, leave it: an empty directory, for another scratch)."""
        unmount(self.root)
        if keep_mount_point:
            return
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
#: the sandbox's /etc/hosts (in the system root: the same for every sandbox)
ETC_HOSTS = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _mount(
    source: str | Path | None,
    target: Path,
    flags: int,
    fstype: str | None = None,
    data: str | None = None,
) -> None:
    src = os.fsencode(source) if source is not None else None
    kind = fstype.encode() if fstype is not None else None
    opts = data.encode() if data is not None else None
    if _libc.mount(src, os.fsencode(target), kind, flags, opts) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount {source} on {target}: {os.strerror(err)}")


def bind_mount(source: Path, target: Path) -> None:
    """Bind-mount ``source`` on ``target`` (both must exist)."""
    rc = _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"bind {source} on {target}: {os.strerror(err)}")


def make_shared_mount(target: Path) -> None:
    """Make the directory ``target`` a mount of its own (a bind onto itself) with shared
    propagation: whatever is mounted below it later shows up in its slave copies too
    (see the minimal mount namespace in :mod:`.local`). Unmounting ``target`` undoes it.
    """
    _mount(target, target, MS_BIND)
    _mount(None, target, MS_SHARED)


def resize_tmpfs(target: Path, size: int) -> None:
    """Set the quota (``size=``, ``nr_inodes=``) of the tmpfs mounted on ``target``."""
    mount_tmpfs(target, size, mode=0o711, remount=True)


def make_scratch(
    root: Path,
    uid: int,
    size: int,
    *,
    session_dir: Path | None,
    prog_writable: bool,
    existing: bool = False,
) -> Scratch:
    """Mount a fresh scratch tmpfs of ``size`` bytes on ``root`` and lay it out.

    With ``session_dir``, that directory is bind-mounted on ``work/`` (so the
    unprivileged bubblewrap finds it through world-traversable directories whatever
    the permissions on the way to the server's state dir); otherwise ``work/`` is a
    fresh directory of the scratch. ``prog_writable`` gives ``prog/`` to the sandbox
    uid (for a compile step); otherwise it stays root's, readable by the uid's group.
    Unmounting the scratch (:meth:`Scratch.destroy`) detaches the bind as well.
    ``existing``: ``root`` is already there, an empty directory that nothing is
    mounted on (the mount point a destroyed scratch left, see :meth:`Scratch.destroy`).
    """
    if not existing:
        root.mkdir(mode=0o711)
    try:
        mount_tmpfs(root, size, mode=0o711)
    except BaseException:
        root.rmdir()
        raise
    s = Scratch(root, uid, size)
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
    except BaseException:
        s.destroy()
        raise
    return s


@define(frozen=True, kw_only=True)
class SysrootSpec:
    """What :func:`build_sysroot` puts in a system root. Every path is absolute and
    names the same place on the host and in the sandbox."""

    #: host directories (or files) bind-mounted read-only, ``nosuid``, ``nodev``
    ro_binds: tuple[str, ...] = ()
    #: host files or directory trees copied (content, symlinks, permission bits without
    #: set-id, mtimes)
    copies: tuple[str, ...] = ()
    #: ``(path, target)`` symbolic links
    symlinks: tuple[tuple[str, str], ...] = ()
    #: character devices recreated with the host's numbers, mode 0666
    devices: tuple[str, ...] = ()
    #: ``(path, content)`` regular files, mode 0644
    files: tuple[tuple[str, bytes], ...] = ()
    #: empty directories (mount points of the sandbox's own mounts), mode 0755
    dirs: tuple[str, ...] = ()
    #: empty files (mount points of the sandbox's own file binds), mode 0644
    mount_points: tuple[str, ...] = ()


#: What identifies the host files a system root was built from (see sysroot_stale).
Fingerprint = tuple[tuple[str, object], ...]


def _fingerprint(spec: SysrootSpec) -> Fingerprint:
    out: list[tuple[str, object]] = []
    for path in spec.ro_binds:
        try:
            st = os.stat(path)
            out.append((path, (st.st_dev, st.st_ino)))
        except OSError:
            out.append((path, None))
    for path in spec.copies:
        try:
            st = os.stat(path)
            out.append((path, _identity(st)))
            if stat.S_ISDIR(st.st_mode):
                out += _tree_fingerprint(path)
        except OSError:
            out.append((path, None))
    return tuple(out)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)


def _tree_fingerprint(top: str) -> list[tuple[str, object]]:
    """Every directory and regular file below ``top`` (a symlink being replaced or
    retargeted changes its directory's mtime)."""
    out: list[tuple[str, object]] = []
    pending = [top]
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif not entry.is_file():
                    continue
                out.append((entry.path, _identity(entry.stat(follow_symlinks=False))))
    out.sort()
    return out


def _copy_in(source: str, target: Path) -> None:
    """Copy a host file, or a directory tree (directories, regular files and symlinks;
    anything else is left out), keeping permission bits (without set-id) and mtimes."""
    st = os.stat(source)
    mode = stat.S_IMODE(st.st_mode) & 0o777
    if stat.S_ISDIR(st.st_mode):
        target.mkdir(mode=0o700)
        with os.scandir(source) as it:
            for entry in it:
                child = target / entry.name
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), child)
                elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
                    _copy_in(entry.path, child)
    elif stat.S_ISREG(st.st_mode):
        with open(source, "rb") as f:
            write_new_file(target, f.read(), mode=0o600)
    else:
        return
    os.chmod(target, mode)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def sysroot_stale(spec: SysrootSpec, fingerprint: Fingerprint) -> bool:
    """Whether a host file or directory the root was built from has been replaced or
    changed since (a bound directory's content is live, a copy is not)."""
    return _fingerprint(spec) != fingerprint


def _parents(root: Path, path: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return target


def _remount_tree(target: Path, add: int, *, drop: int = 0) -> None:
    """Remount ``target`` and every mount below it with ``add`` flags (keeping theirs)."""
    base = os.path.realpath(target)
    points = [
        (point, flags)
        for point, _, flags in _mount_table()
        if point == base or point.startswith(base + "/")
    ]
    for point, flags in points:
        _mount(None, Path(point), MS_BIND | MS_REMOUNT | ((flags | add) & ~drop))


def build_sysroot(root: Path, spec: SysrootSpec, *, size: int = 64 << 20) -> Fingerprint:
    """Build a system root on ``root`` (created here; see the module docstring).

    A ``nosuid`` tmpfs (it holds the device nodes, so it is not ``nodev``) is mounted
    on ``root`` and filled as ``spec`` says, the binds are made read-only, ``nosuid``
    and ``nodev``, then the tmpfs itself is made read-only. Returns the fingerprint of
    the host files used (for :func:`sysroot_stale`). Remove it with
    :func:`destroy_tree`.
    """
    root.mkdir(mode=0o755)
    try:
        _mount("tmpfs", root, MS_NOSUID, "tmpfs", f"size={size},nr_inodes=65536,mode=755")
    except BaseException:
        root.rmdir()
        raise
    try:
        fingerprint = _fingerprint(spec)
        old_umask = os.umask(0o022)
        try:
            for path in spec.dirs:
                _parents(root, path).mkdir(mode=0o755, exist_ok=True)
            for path, content in spec.files:
                write_new_file(_parents(root, path), content)
            for path in spec.mount_points:
                write_new_file(_parents(root, path), b"")
            for path in spec.copies:
                _copy_in(path, _parents(root, path))
            for path, link in spec.symlinks:
                os.symlink(link, _parents(root, path))
            for path in spec.devices:
                st = os.stat(path)
                if not stat.S_ISCHR(st.st_mode):
                    raise OSError(errno.ENODEV, f"{path} is not a character device")
                target = _parents(root, path)
                try:
                    os.mknod(target, stat.S_IFCHR | 0o666, st.st_rdev)
                    os.chmod(target, 0o666)
                except PermissionError:  # no CAP_MKNOD (a container): bind the host's
                    write_new_file(target, b"")
                    _mount(path, target, MS_BIND)
                    _remount_tree(target, MS_NOSUID, drop=MS_RDONLY | MS_NODEV)
            for path in spec.ro_binds:
                target = _parents(root, path)
                if os.path.isdir(path):
                    target.mkdir(mode=0o755)
                else:
                    write_new_file(target, b"")
                _mount(path, target, MS_BIND | MS_REC)
                _remount_tree(target, MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            os.umask(old_umask)
        # Read-only: the superblock, then the mount (copied locked into each sandbox).
        _mount("tmpfs", root, MS_REMOUNT | MS_RDONLY | MS_NOSUID, "tmpfs")
        _mount(None, root, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    except BaseException:
        destroy_tree(root)
        raise
    return fingerprint


def _unmount_all(root: Path) -> None:
    """Unmount everything at or below ``root``, deepest first, again while unmounting
    reveals mounts that were hidden below others (a few rounds at most)."""
    for _ in range(8):
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            unmount(Path(point))


def destroy_tree(root: Path) -> bool:
    """Unmount everything at or below ``root`` (deepest first), then remove ``root``.

    Never deletes through a mount: if anything is still mounted below ``root``
    afterwards (a bind of a host directory, say), nothing is removed and ``False`` is
    returned; so is it when files that are not ours remain.
    """
    _unmount_all(root)
    if mounts_under(root):
        return False
    try:
        root.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def remove_tree(root: Path) -> bool:
    """Unmount everything below ``root``, then delete it recursively; refuses (returns
    ``False``) while any mount remains below it, so that no host directory bound there
    can ever be deleted through it."""
    _unmount_all(root)
    if mounts_under(root):
        return False
    shutil.rmtree(root, ignore_errors=True)
    return not os.path.lexists(root)


def adapt_scratch(s: Scratch, size: int, *, session_dir: Path | None, prog_writable: bool) -> None:
    """Turn a scratch :func:`make_scratch` laid out with the defaults (no session dir,
    ``prog/`` not writable) into the one these arguments would have made: resize its
    tmpfs, bind the session dir on ``work/``, give ``prog/`` to the uid. Only for a
    scratch no sandbox has used yet."""
    if size != s.size:
        resize_tmpfs(s.root, size)
        s.size = size
    if session_dir is not None:
        bind_mount(session_dir, s.work)
    if prog_writable:
        os.chown(s.prog, s.uid, s.uid)
        s.prog.chmod(0o700)


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
