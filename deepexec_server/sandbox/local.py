"""The ``local`` backend: every execution in a fresh bubblewrap sandbox.

What a sandbox is (one per execution, never reused):

* **Identity.** The server (root) starts the launcher (:mod:`.launcher`), which sets
  the rlimits, drops to uid/gid ``U`` with no supplementary groups and execs
  bubblewrap with an *empty* environment; ``U`` is an unprivileged host uid leased
  for this sandbox alone (:mod:`.uids`). bubblewrap then
  runs unprivileged and builds a new user namespace (``--unshare-all`` or, with a
  prepared network namespace, every ``--unshare-*`` but ``net``; ``--unshare-user
  --disable-userns``): the program holds no capability, cannot create further
  namespaces, and ``no_new_privs`` is set (setuid binaries do not elevate; every
  mount is ``nosuid`` anyway).
* **Namespaces.** New pid, network (loopback only, nothing routes out), ipc, uts,
  cgroup and mount namespaces; ``--die-with-parent``; ``--new-session`` (no
  TIOCSTI). The network namespace is a fresh one made for this sandbox alone, by
  bubblewrap or ahead of time by the server (see *Cold starts*). The sandbox's pid 1
  is bubblewrap's reaper, whose environment is empty, so ``/proc/1/environ`` holds
  nothing of the server's.
* **File system.** Read-only: ``/usr`` (and the ``/bin``, ``/lib*`` symlinks or
  directories), a few public ``/etc`` files (alternatives, ld.so.cache, CA
  certificates, openssl.cnf, localtime, python3.x config) and a synthetic
  ``/etc/passwd``, ``group``, ``hosts``. The root is a read-only tmpfs: the
  executor's *system root* (:func:`.hostfs.build_sysroot`, built at start, rebuilt
  when a host file it holds is replaced), bound as ``/`` in one recursive bind.
  Writable: ``/work`` (cwd), ``/tmp`` and ``/dev/shm``, all size-limited tmpfs
  (:mod:`.hostfs`). ``/sandbox`` holds the program (read-only). Devices: null, zero,
  full, random, urandom only. A fresh ``/proc`` for the pid namespace. Nothing else
  of the host (no ``/root``, ``/home``, ``/work``, ``/run``, the server's state or
  source).
* **System calls.** A seccomp filter (:mod:`.seccomp`) refuses the few unprivileged
  calls that allocate memory no rlimit or quota counts (``memfd_create``, System V
  shared memory and message queues) or reach non-namespaced kernel surfaces
  (keyrings, bpf, perf, userfaultfd, io_uring).
* **Limits.** ``RLIMIT_CPU``, ``AS`` (JavaScript: ``DATA``), ``NPROC`` (+2 for
  bubblewrap's two processes), ``NOFILE``, ``FSIZE``, ``CORE=0``; wall-clock
  timeout and output cap enforced by the server (:mod:`.process`), which has the
  launcher SIGKILL bubblewrap's process group: the sandbox's pid 1 dies, and the
  kernel then kills every process of the pid namespace at once, whatever session or
  group they moved to. An execution returns only once the launcher has reaped them
  all; the uid is then swept (no process of it may remain) before reuse.

Warm pool: for interpreted languages, ``warm_pool_size`` sandboxes per language are
pre-started with the default limits, the interpreter running and blocked on its
control pipe (see :mod:`.languages`). A request without a session dir whose limits
(other than ``timeout`` and ``max_output``, which the server enforces) equal the
defaults takes one, writes its program into ``/sandbox`` and sends its environment;
the sandbox is used once and destroyed, and a replacement is started in the
background once the execution ends. Anything else (pool empty, other limits,
session dirs, compiled languages) runs cold. Measured here (bench/bench_sandbox.py):
a warm ``print(1)`` takes about 0.4x a bare ``python3 -c`` cold start, a cold one
about 1.3-1.45x (2 CPUs shared with other load; 1.5-1.75x before the changes below).

Cold starts (with or without a warm pool). What a cold ``print(1)`` costs beyond a
bare interpreter start, and what is done about it:

* *Prepared scratches.* ``prepared_scratches`` empty sandbox directories are kept
  ready, each with a uid leased for it alone, its scratch tmpfs mounted and laid
  out for that uid (:func:`.hostfs.make_scratch`: empty ``work``, ``tmp``, ``shm``,
  ``prog``, its ``etc/passwd`` and ``group``; default ``max_disk``, resized if the
  request asks another, a session dir bound on ``work`` if it has one) and a new
  network namespace (:mod:`.netns`; the launcher moves the sandbox into it, so
  bubblewrap need not make one: ~0.6 ms). No process runs in them and no program is
  in them until an execution takes one; each serves that one execution and is
  destroyed with it, exactly like a scratch made on demand; replacements are made
  once its result is out, and :meth:`LocalExecutor.close` destroys those left. This
  is not a warm interpreter: a server with ``warm_pool_size=0`` has them too. A
  destroyed scratch's tmpfs is unmounted (all its content gone) but its mount point,
  an empty directory of the instance dir, serves a later scratch: a ``mkdir`` and a
  ``rmdir`` on the host's file system per sandbox cost 0.1-0.25 ms of CPU here.
* *One root bind.* bubblewrap re-reads the whole mount table after every bind it
  makes, and every bubblewrap start copies, lists and unmounts every mount of its
  mount namespace (~40 us each here). So the read-only part of the file system is
  one prepared tree (the system root) bound in one go, holding copies of the
  ``/etc`` pieces rather than a mount for each: 7 binds per sandbox instead of
  about 25.
* *A minimal mount namespace.* The launcher starts bubblewrap in a mount namespace
  made once per executor (``launcher --mntns-holder``) holding only ``/usr``, the
  ``/bin``, ``/lib*`` links, ``ld.so.cache``, a ``/proc`` and the executor's instance
  dir (a slave copy of it: the instance dir is a shared mount, so every scratch
  mounted or unmounted there later shows up there too), not the host's mounts:
  what bubblewrap copies and scans no longer grows with the host's mount table. The
  system root is copied in as it is (mount flags do not propagate), so a new system
  root comes with a new namespace. What the sandbox sees is built by bubblewrap
  exactly as before; where the namespace cannot be made (or a sandbox fails in it
  at start), sandboxes start from the host's.
* *No event-loop round trip.* The environment is written to the control socket
  before the interpreter starts (it reads exactly the same bytes as a warm one).
* *Python's bootstrap* is compiled once per executor (see :mod:`.languages`).
* What remains: the launcher (~0.4 ms: an exec and a fork), bubblewrap itself
  (~2.5-3 ms of CPU: its exec and dynamic linking, namespaces, seven binds,
  ``/proc``, seccomp, pivot_root, its two processes' exits) and, for python, the
  compiler's one-time set-up in the bootstrap (~0.8 ms: ``compile()`` initialises
  the interpreter's AST types, which a bare ``python3 -c`` never does; the program
  must be compiled with its own file name, so this stays).

Session dirs: the first execution with a given ``workdir`` mounts a tmpfs of
``max_disk`` on it (:func:`.hostfs.ensure_session_dir`); executions of one session
are serialized, and before each the tree is handed to the new sandbox uid. Call
:meth:`LocalExecutor.release_workdir` when the session ends.

Exit statuses: bubblewrap reports a program killed by signal ``N`` as exit status
``128 + N``, so statuses 129..192 are reported as ``signal = status - 128`` with
``exit_code = None`` (as a shell would; a program calling ``exit(137)`` is therefore
reported as killed by SIGKILL).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import logging
import math
import os
import select
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
from attrs import define

from .base import (
    ExecutionOutcome,
    ExecutionRequest,
    Executor,
    LanguageInfo,
    Limits,
    OutputCallback,
    SandboxError,
    SandboxUnavailableError,
    UnsupportedLanguageError,
    validate_env,
)
from .hostfs import (
    ETC_HOSTS,
    Fingerprint,
    MountError,
    Scratch,
    SysrootSpec,
    adapt_scratch,
    build_sysroot,
    chown_tree,
    destroy_tree,
    ensure_session_dir,
    make_scratch,
    make_shared_mount,
    mount_tmpfs,
    release_session_dir,
    remove_tree,
    sysroot_stale,
    unmount,
    write_new_file,
)
from .languages import (
    C_INIT_NAME,
    C_INIT_SOURCE,
    LanguageSpec,
    detect_languages,
    precompile_bootstrap,
    resolve_language,
)
from .launcher import RLIMIT_CODES, build_launcher
from .netns import new_netns
from .process import (
    Launch,
    RawResult,
    Spawned,
    compile_and_run,
    control_channel,
    env_payload,
    run_outcome,
    send_what_fits,
    start,
    supervise,
)
from .seccomp import seccomp_filter
from .settings import SandboxSettings
from .uids import UidLease, UidPool, check_uid_range, sweep_uid

__all__ = ["LocalExecutor", "probe_local_sandbox"]

log = logging.getLogger(__name__)

#: The environment every program starts with; the caller's variables go on top.
BASE_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
}

#: Public, read-only pieces of the host's /etc that runtimes need.
ETC_BINDS: tuple[str, ...] = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/timezone",
    "/etc/nsswitch.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
)
DEVICES = ("null", "zero", "full", "random", "urandom")

#: Extra address space granted to V8, which reserves about 0.8 GiB it never touches.
V8_ADDRESS_SPACE = 1 << 30

_instance_counter = itertools.count()


def _etc_python_dirs() -> list[str]:
    try:
        return sorted(f"/etc/{n}" for n in os.listdir("/etc") if n.startswith("python3"))
    except OSError:
        return []


def _root_entries() -> list[str]:
    """bwrap options recreating /bin, /sbin, /lib* (symlinks on merged-/usr systems)."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    return args


def sysroot_spec() -> SysrootSpec:
    """What every sandbox's read-only root holds (see the module docstring).

    ``/usr`` is bound (as are ``/bin``, ``/lib*`` where they are directories, not
    symlinks); the public ``/etc`` pieces are copied (a few hundred kilobytes, kept
    current by :meth:`LocalExecutor._check_sysroot`): every mount in the host's table
    is copied, listed and unmounted again by each bubblewrap start, about 40 us each
    here, so the root adds two (its tmpfs and ``/usr``). Mount points for the
    sandbox's own mounts (``/proc``, ``/tmp``, ``/work``, ``/sandbox``, ``/dev/shm``,
    ``/etc/passwd``, ``/etc/group``) are left empty.
    """
    binds = ["/usr"]
    copies: list[str] = []
    links: list[tuple[str, str]] = [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            links.append((host, os.readlink(host)))
        elif os.path.isdir(host):
            binds.append(host)
    for path in (*ETC_BINDS, *_etc_python_dirs()):
        if os.path.isdir(path) or os.path.isfile(path):
            copies.append(path)
    if os.path.islink("/etc/localtime"):
        links.append(("/etc/localtime", os.readlink("/etc/localtime")))
    elif os.path.isfile("/etc/localtime"):
        copies.append("/etc/localtime")
    return SysrootSpec(
        ro_binds=tuple(binds),
        copies=tuple(copies),
        symlinks=tuple(links),
        devices=tuple(f"/dev/{d}" for d in DEVICES),
        files=(("/etc/hosts", ETC_HOSTS.encode()),),
        dirs=("/proc", "/tmp", "/work", "/sandbox", "/dev/shm"),
        mount_points=("/etc/passwd", "/etc/group"),
    )


def rlimits_for(limits: Limits, *, data_limit: bool) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` for ``limits``: soft = hard, except CPU (SIGXCPU at the
    soft limit, SIGKILL one second later). ``NPROC`` gets +2 for bubblewrap's own two
    processes; ``data_limit`` selects ``RLIMIT_DATA`` (+ a roomy ``RLIMIT_AS``) for V8."""
    cpu = max(1, math.ceil(limits.cpu_time))
    r = RLIMIT_CODES
    out = [
        (r["cpu"], cpu, cpu + 1),
        (r["nproc"], limits.max_processes + 2, limits.max_processes + 2),
        (r["nofile"], limits.max_open_files, limits.max_open_files),
        (r["fsize"], limits.max_file_size, limits.max_file_size),
        (r["core"], 0, 0),
    ]
    if data_limit:
        out += [
            (r["data"], limits.memory, limits.memory),
            (r["as"], limits.memory + V8_ADDRESS_SPACE, limits.memory + V8_ADDRESS_SPACE),
        ]
    else:
        out.append((r["as"], limits.memory, limits.memory))
    return out


#: seconds between the end of an execution and the start of its warm replacement
_REFILL_DELAY = 0.02

#: seconds between two checks that the host files in the system root are current
_SYSROOT_CHECK_S = 1.0

#: bubblewrap's --unshare-all without --unshare-net (the sandbox has a prepared one)
_UNSHARE_ALL_BUT_NET = [
    "--unshare-user",
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-uts",
    "--unshare-cgroup-try",
]


def _warm_key(limits: Limits) -> tuple[float | int, ...]:
    """The limits a pre-started sandbox is bound to (not timeout/max_output)."""
    return (
        limits.cpu_time,
        limits.memory,
        limits.max_processes,
        limits.max_open_files,
        limits.max_file_size,
        limits.max_disk,
    )


def _untraversable_parent(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others cannot search, if any."""
    p = Path(os.path.realpath(path))
    for d in [*reversed(p.parents), p]:
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def probe_local_sandbox(settings: SandboxSettings) -> str | None:
    """Check (synchronously) that this machine can run the local backend.

    Returns ``None`` when it can, else a sentence saying why not. Builds the launcher,
    mounts and unmounts a tmpfs, and runs one real sandbox (``/usr/bin/true`` as an
    unprivileged uid under bubblewrap).
    """
    if not sys.platform.startswith("linux"):
        return "the local sandbox needs Linux"
    if os.geteuid() != 0:
        return (
            "the local sandbox must run as root, to run sandboxed code under per-sandbox "
            "unprivileged uids"
        )
    if not os.access(settings.bwrap_path, os.X_OK):
        return f"{settings.bwrap_path} is missing (install it: scripts/install-system-deps.sh)"
    if not hasattr(os, "pidfd_open"):
        return "os.pidfd_open is unavailable (Linux >= 5.3 and Python >= 3.9 needed)"
    for knob, bad in (
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    ):
        try:
            with open(knob) as f:
                if f.read().strip() == bad:
                    return f"user namespaces are disabled ({knob} = {bad})"
        except OSError:
            pass
    reason = check_uid_range(settings.uid_base, settings.uid_count)
    if reason:
        return reason
    try:
        settings.runtime_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(settings.runtime_dir, 0o711)
        blocked = _untraversable_parent(settings.runtime_dir)
        if blocked is not None:
            return (
                f"runtime_dir {settings.runtime_dir} must be reachable by unprivileged "
                f"uids (bubblewrap runs as one), but {blocked} is not world-searchable"
            )
        launcher = build_launcher(settings.runtime_dir)
    except (OSError, RuntimeError) as exc:
        return str(exc)
    probe_dir = settings.runtime_dir / f".probe-{os.getpid()}"
    try:
        probe_dir.mkdir(exist_ok=True)
        mount_tmpfs(probe_dir, 1 << 20)
        unmount(probe_dir)
    except OSError as exc:
        return f"cannot mount a tmpfs (needed for disk quotas): {exc}"
    finally:
        try:
            probe_dir.rmdir()
        except OSError:
            pass
    pool = UidPool(settings.uid_lock_dir, settings.uid_base, settings.uid_count)
    lease = pool.try_lease()
    if lease is None:
        return "every sandbox uid is in use"
    status_r, status_w = os.pipe()
    argv = [
        str(launcher), str(status_w), str(lease.uid), "-a", "--",
        settings.bwrap_path, "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--clearenv", "--ro-bind", "/usr", "/usr",
        *_root_entries(), "--proc", "/proc", "--remount-ro", "/", "/usr/bin/true",
    ]  # fmt: skip
    try:
        r = subprocess.run(
            argv, env={}, capture_output=True, timeout=20, check=False, pass_fds=(status_w,)
        )
        os.close(status_w)
        report = os.read(status_r, 256).split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be run: {exc}"
    finally:
        os.close(status_r)
        try:
            os.close(status_w)
        except OSError:
            pass
        pool.release(lease)
    if r.returncode != 0 or not report or report[0] != b"0":
        err = r.stderr.decode("utf-8", "replace").strip()
        return f"bubblewrap cannot create a sandbox here ({report!r}): {err}"
    return None


@define(frozen=True, kw_only=True)
class _Command:
    launch: Launch
    bwrap_options: list[str]
    command: list[str]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _canonical(path: Path) -> Path:
    """The real path of a session dir (the key of its lock and its mount)."""
    return Path(os.path.realpath(path))


class _Sysroot:
    """A built system root, and how many sandboxes use it (started on it and not yet
    torn down): a replaced one is destroyed when its last user is gone."""

    def __init__(self, path: Path, spec: SysrootSpec, fingerprint: Fingerprint) -> None:
        self.path = path
        self.spec = spec
        self.fingerprint = fingerprint
        self.users = 0
        self.retired = False


class _Prepared:
    """A prepared scratch (see the module docstring): nothing runs in it yet."""

    def __init__(self, lease: UidLease, scratch: Scratch, netns: int | None) -> None:
        self.lease = lease
        self.scratch = scratch
        #: descriptor of a network namespace made for it (see :mod:`.netns`), if any
        self.netns = netns


class _Box:
    """One sandbox: a uid lease, a scratch tmpfs and (once started) its processes."""

    def __init__(
        self, lease: UidLease, scratch: Scratch, spec: LanguageSpec, netns: int | None = None
    ) -> None:
        self.lease = lease
        self.scratch = scratch
        self.spec = spec
        self.sp: Spawned | None = None
        self.key: tuple[float | int, ...] | None = None
        self.sysroot: _Sysroot | None = None
        #: a prepared network namespace for its first process tree (closed once used)
        self.netns = netns

    def close_netns(self) -> None:
        if self.netns is not None:
            os.close(self.netns)
            self.netns = None

    @property
    def uid(self) -> int:
        return self.lease.uid


class LocalExecutor(Executor):
    """Runs code under bubblewrap on this machine (see the module docstring).

    Bound to the event loop (and thread) that called :meth:`start`: the warm pool's
    processes are watched by that loop, and ``PR_SET_PDEATHSIG`` ties every sandbox to
    the thread that spawned it.
    """

    name = "local"

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._langs: dict[str, tuple[LanguageSpec, LanguageInfo]] = {}
        self._started = False
        self._closing = False
        self._instance_dir: Path | None = None
        self._instance_lock: int | None = None
        self._uids: UidPool | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._box_counter = itertools.count()
        self._boxes: set[_Box] = set()
        self._teardowns: set[asyncio.Task[None]] = set()
        self._pool: dict[str, deque[_Box]] = {}
        self._pool_wake: dict[str, asyncio.Event] = {}
        self._refills: list[asyncio.Task[None]] = []
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._sysroot: _Sysroot | None = None
        self._sysroots: list[_Sysroot] = []
        self._sysroot_counter = itertools.count()
        self._sysroot_checked = 0.0
        self._sysroot_task: asyncio.Future[None] | None = None
        self._prepared: deque[_Prepared] = deque()
        #: empty mount points destroyed scratches left, for new ones (see _retire_scratch)
        self._mount_points: deque[Path] = deque()
        self._prepare_scheduled = False
        self._preparing = 0
        self._netns_ok = True
        self._mntns: int | None = None
        self._inst_shared = False
        self._launcher: Path | None = None
        self._seccomp = seccomp_filter()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Check the machine, detect runtimes, run a smoke sandbox, fill the pool."""
        if self._started:
            return
        self._closing = False
        reason = await asyncio.to_thread(probe_local_sandbox, self.settings)
        if reason:
            raise SandboxUnavailableError(reason)
        self._setup_runtime_dir()
        try:
            self._launcher = await asyncio.to_thread(build_launcher, self.settings.runtime_dir)
        except RuntimeError as exc:
            await self.close()
            raise SandboxUnavailableError(str(exc)) from exc
        self._langs = await detect_languages(enabled=self.settings.languages)
        if not self._langs:
            await self.close()
            raise SandboxUnavailableError("no language runtime found (python3, node, ...)")
        for lang_id, (spec, info) in list(self._langs.items()):
            self._langs[lang_id] = (await precompile_bootstrap(spec), info)
        try:
            self._adopt_sysroot(await asyncio.to_thread(self._build_sysroot))
        except OSError as exc:
            await self.close()
            raise SandboxUnavailableError(f"cannot build the sandbox root: {exc}") from exc
        self._mntns = await asyncio.to_thread(self._make_mntns)
        self._started = True
        try:
            try:
                await self._smoke_test()
            except SandboxUnavailableError as exc:
                if self._mntns is None:
                    raise
                log.warning("sandboxes fail in the minimal mount namespace (%s); not using it", exc)
                os.close(self._mntns)
                self._mntns = None
                await self._smoke_test()
        except BaseException:
            await self.close()
            raise
        await self._fill_prepared()
        if self.settings.warm_pool_size > 0:
            warm = self.settings.warm_languages
            for spec, _ in self._langs.values():
                if spec.bootstrap is not None and (warm is None or spec.id in warm):
                    self._pool[spec.id] = deque()
                    self._pool_wake[spec.id] = asyncio.Event()
                    self._refills.append(asyncio.create_task(self._refill_loop(spec)))

    def _setup_runtime_dir(self) -> None:
        # absolute: the launcher runs bubblewrap from "/" of the minimal namespace
        root = Path(os.path.abspath(self.settings.runtime_dir))
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(root, 0o711)
        self._cleanup_stale_instances(root)
        name = f"i{os.getpid()}-{next(_instance_counter)}"
        # Locked under a temporary name first: cleanup only looks at "i*" entries, so
        # another executor starting now never sees this one unlocked.
        pending = root / f".new-{name}"
        pending.mkdir(mode=0o711)
        fd = os.open(pending / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        inst = root / name
        pending.rename(inst)
        self._instance_lock = fd
        self._instance_dir = inst
        # A shared mount of its own, while nothing is mounted in it yet (see _make_mntns).
        try:
            make_shared_mount(inst)
            self._inst_shared = True
        except OSError as exc:
            log.warning("no minimal mount namespace for sandboxes (%s)", exc)
        self._uids = UidPool(
            self.settings.uid_lock_dir, self.settings.uid_base, self.settings.uid_count
        )

    @staticmethod
    def _cleanup_stale_instances(root: Path) -> None:
        """Remove instance dirs (and their mounts) left by executors that died."""
        for entry in root.iterdir():
            if not entry.name.startswith("i") or not entry.is_dir():
                continue
            try:
                fd = os.open(entry / ".lock", os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # alive
                os.close(fd)
            if not remove_tree(entry):
                log.error("could not clean up %s: something is still mounted there", entry)

    async def _smoke_test(self) -> None:
        raw = await self.run_command(["/usr/bin/true"], timeout=30)
        if raw.wait_status != 0:
            raise SandboxUnavailableError(
                f"the smoke-test sandbox failed (status {raw.wait_status}): {raw.stderr.strip()}"
            )

    async def run_command(self, argv: Sequence[str], *, timeout: float = 30.0) -> RawResult:
        """Run ``argv`` (absolute program path) as is in a fresh sandbox, as a cold
        execution would run its interpreter (a prepared scratch when there is one, the
        default limits, no stdin): for the start-up smoke test and for benchmarks that
        measure a bare command in the sandbox."""
        spec = next(iter(self._langs.values()))[0]
        limits = self.settings.defaults
        box = await self._cold_box(spec, limits, None, prog_writable=False)
        try:
            cmd = self._command(box, limits, list(argv), writable_prog=False)
            sp = self._start(box, cmd)
            return await supervise(
                sp,
                stdin=None,
                timeout=timeout,
                max_output=65536,
                on_output=None,
                t0=time.monotonic(),
            )
        finally:
            await self._teardown(box)
            self._schedule_prepare()

    async def close(self) -> None:
        """Kill everything this executor started and remove its runtime directory."""
        self._closing = True
        for task in self._refills:
            task.cancel()
        await asyncio.gather(*self._refills, return_exceptions=True)
        self._refills.clear()
        for box in list(self._boxes):
            if box.sp is not None:
                box.sp.discard()
        for queue in self._pool.values():
            while queue:
                self._schedule_teardown(queue.popleft())
        while self._teardowns:
            await asyncio.gather(*list(self._teardowns), return_exceptions=True)
        if self._sysroot_task is not None:
            await asyncio.gather(self._sysroot_task, return_exceptions=True)
        while self._prepared:
            self._discard_prepared(self._prepared.popleft())
        for spec, _ in self._langs.values():
            for fd in spec.boot_fds:
                os.close(fd)
        self._langs = {
            k: (attrs.evolve(spec, boot_fds=()), info) for k, (spec, info) in self._langs.items()
        }
        for sysroot in self._sysroots:
            destroy_tree(sysroot.path)
        self._sysroots.clear()
        self._sysroot = None
        if self._mntns is not None:
            os.close(self._mntns)
            self._mntns = None
        if self._instance_dir is not None:
            if not remove_tree(self._instance_dir):
                log.error("could not remove %s: still mounted below", self._instance_dir)
            self._instance_dir = None
        self._mount_points.clear()
        if self._instance_lock is not None:
            os.close(self._instance_lock)
            self._instance_lock = None
        self._started = False

    def languages(self) -> list[LanguageInfo]:
        """Languages whose runtime answered ``--version`` at start."""
        return [info for _, info in self._langs.values()]

    # ----------------------------------------------------------------- building blocks

    async def _lease(self) -> UidLease:
        assert self._uids is not None
        return await self._uids.lease()

    def _make_scratch(
        self, lease: UidLease, size: int, session_dir: Path | None, *, prog_writable: bool
    ) -> Scratch:
        """A new scratch for ``lease``, mounted on a mount point an earlier one left
        (see :meth:`_retire_scratch`) if there is one, else on a new directory.
        Blocking (a few system calls), safe in a worker thread."""
        assert self._instance_dir is not None
        try:
            root, existing = self._mount_points.popleft(), True
        except IndexError:
            root, existing = self._instance_dir / f"x{next(self._box_counter)}", False
        return make_scratch(
            root,
            lease.uid,
            size,
            session_dir=session_dir,
            prog_writable=prog_writable,
            existing=existing,
        )

    def _retire_scratch(self, scratch: Scratch) -> None:
        """Destroy ``scratch`` (unmount its tmpfs: everything in it is gone), keeping its
        mount point, an empty directory of the instance dir, for a later scratch: a
        ``mkdir`` and ``rmdir`` on the host's (journalled) file system per sandbox cost
        ~0.1-0.25 ms of CPU here. Blocking, safe in a worker thread."""
        scratch.destroy(keep_mount_point=True)
        self._mount_points.append(scratch.root)

    def _new_box(
        self,
        lease: UidLease,
        spec: LanguageSpec,
        limits: Limits,
        session_dir: Path | None,
        *,
        prog_writable: bool,
    ) -> _Box:
        try:
            scratch = self._make_scratch(
                lease, limits.max_disk, session_dir, prog_writable=prog_writable
            )
        except BaseException:
            assert self._uids is not None
            self._uids.release(lease)
            raise
        box = _Box(lease, scratch, spec)
        self._boxes.add(box)
        return box

    async def _cold_box(
        self, spec: LanguageSpec, limits: Limits, session: Path | None, *, prog_writable: bool
    ) -> _Box:
        """A box for a cold start: a prepared scratch when there is one, else a new one."""
        assert self._uids is not None
        while self._prepared:
            prepared = self._prepared.popleft()
            try:
                if session is not None:
                    await asyncio.to_thread(chown_tree, session, prepared.lease.uid)
                adapt_scratch(
                    prepared.scratch,
                    limits.max_disk,
                    session_dir=session,
                    prog_writable=prog_writable,
                )
            except BaseException as exc:
                self._discard_prepared(prepared)
                if isinstance(exc, MountError):
                    log.warning("discarding a prepared scratch: %s", exc)
                    continue
                raise
            box = _Box(prepared.lease, prepared.scratch, spec, prepared.netns)
            self._boxes.add(box)
            return box
        lease = await self._lease()
        try:
            if session is not None:
                await asyncio.to_thread(chown_tree, session, lease.uid)
        except BaseException:
            self._uids.release(lease)
            raise
        return self._new_box(lease, spec, limits, session, prog_writable=prog_writable)

    # ----------------------------------------------------------------- prepared scratches

    def _schedule_prepare(self) -> None:
        """Prepare replacements a moment from now (after the result of the execution
        that took one has gone out), in a worker thread: mounting, and above all making
        a network namespace, can block for milliseconds in the kernel."""
        if (
            not self._prepare_scheduled
            and not self._closing
            and len(self._prepared) < self.settings.prepared_scratches
        ):
            self._prepare_scheduled = True
            asyncio.get_running_loop().call_later(_REFILL_DELAY, self._start_fill)

    def _start_fill(self) -> None:
        task = asyncio.ensure_future(self._fill_prepared())
        self._teardowns.add(task)  # close() waits for it like for a teardown
        task.add_done_callback(self._teardowns.discard)

    async def _fill_prepared(self) -> None:
        """Top up the prepared scratches (see the module docstring), each made in a worker
        thread."""
        try:
            # two top-ups may run at once (start() and one scheduled after a run): count
            # the scratches being made, so that they never make more than wanted
            while (
                not self._closing
                and len(self._prepared) + self._preparing < self.settings.prepared_scratches
            ):
                assert self._uids is not None
                lease = self._uids.try_lease()
                if lease is None:  # every uid is in use: executions lease on demand
                    return
                self._preparing += 1
                try:
                    prepared = await asyncio.to_thread(self._prepare_one, lease)
                finally:
                    self._preparing -= 1
                if prepared is None:
                    self._uids.release(lease)
                    return
                if self._closing:
                    self._discard_prepared(prepared)
                    return
                self._prepared.append(prepared)
        finally:
            self._prepare_scheduled = False

    def _prepare_one(self, lease: UidLease) -> _Prepared | None:
        """Mount and lay out a scratch for ``lease`` and make its network namespace
        (blocking, safe in a worker thread; None if the scratch cannot be made: the
        caller releases the lease, on the event loop)."""
        try:
            scratch = self._make_scratch(
                lease, self.settings.defaults.max_disk, None, prog_writable=False
            )
        except Exception:
            log.exception("could not prepare a sandbox scratch")
            return None
        netns = None
        if self._netns_ok:
            try:
                netns = new_netns()
            except OSError as exc:  # no CAP_SYS_ADMIN here, say: bwrap makes them
                self._netns_ok = False
                log.warning("cannot prepare network namespaces (%s); bwrap makes them", exc)
        return _Prepared(lease, scratch, netns)

    def _discard_prepared(self, prepared: _Prepared) -> None:
        try:
            if prepared.netns is not None:
                os.close(prepared.netns)
            self._retire_scratch(prepared.scratch)
        finally:
            assert self._uids is not None
            self._uids.release(prepared.lease)

    # ----------------------------------------------------------------- mount namespace

    def _make_mntns(self) -> int | None:
        """The minimal mount namespace sandboxes start from (see the module docstring),
        as a descriptor, or ``None`` (and a warning) if it cannot be made here.

        Blocking (a few milliseconds): run it in a worker thread, after the current
        system root is built. The instance dir is a shared mount (made so when it was
        created), so that its slave copy in the namespace sees every scratch mounted
        later. Mount
        *flags* set after a mount is made do not propagate, and a system root's binds
        are made read-only that way: so the namespace copies the system root as it is
        when it is made, and a new namespace is made with every new system root. The
        helper that builds it exits once the descriptor holds it.
        """
        assert self._instance_dir is not None and self._launcher is not None
        inst = self._instance_dir
        if not self._inst_shared:
            return None
        try:
            root = inst.parent / ".mntns-root"
            root.mkdir(mode=0o700, exist_ok=True)
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            try:
                helper = subprocess.Popen(
                    [str(self._launcher), "--mntns-holder", str(root), str(inst), str(ready_w)],
                    pass_fds=(ready_w,),
                    env={},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                os.close(ready_w)
                ready_w = -1
                try:
                    if not select.select([ready_r], [], [], 10.0)[0] or os.read(ready_r, 1) != b"R":
                        raise OSError(errno.EIO, "the mount namespace helper failed")
                    fd = os.open(f"/proc/{helper.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                finally:
                    helper.kill()
                    _, err = helper.communicate()
                if err:
                    log.debug("mount namespace helper: %s", err.decode(errors="replace"))
            finally:
                os.close(ready_r)
                if ready_w >= 0:
                    os.close(ready_w)
        except OSError as exc:
            log.warning("no minimal mount namespace for sandboxes (%s)", exc)
            return None
        return fd

    # ----------------------------------------------------------------- system root

    def _build_sysroot(self) -> _Sysroot:
        """Build a system root (some milliseconds of copying and mounting: run it in a
        worker thread); :meth:`_adopt_sysroot` makes it the current one."""
        assert self._instance_dir is not None
        spec = sysroot_spec()
        path = self._instance_dir / f"root-{next(self._sysroot_counter)}"
        return _Sysroot(path, spec, build_sysroot(path, spec))

    def _adopt_sysroot(self, sysroot: _Sysroot) -> None:
        self._sysroots.append(sysroot)
        current, self._sysroot = self._sysroot, sysroot
        self._sysroot_checked = time.monotonic()
        if current is not None:
            current.retired = True
            if current.users == 0:
                self._destroy_sysroot(current)

    def _check_sysroot(self) -> None:
        """Start building a new system root if a host file the current one holds was
        replaced (checked at most every ``_SYSROOT_CHECK_S``, after executions; the
        check itself takes well under a millisecond)."""
        current = self._sysroot
        self._sysroot_checked = time.monotonic()
        if self._closing or current is None or self._sysroot_task is not None:
            return
        if sysroot_spec() == current.spec and not sysroot_stale(current.spec, current.fingerprint):
            return
        self._sysroot_task = asyncio.ensure_future(self._rebuild_sysroot())

    async def _rebuild_sysroot(self) -> None:
        try:
            sysroot = await asyncio.to_thread(self._build_sysroot)
        except Exception:
            self._sysroot_task = None
            log.exception("could not rebuild the sandbox root; keeping the old one")
            return
        mntns = None
        if self._mntns is not None:  # with a copy of the new root (see _make_mntns)
            mntns = await asyncio.to_thread(self._make_mntns)
        self._sysroot_task = None
        if self._closing:
            if mntns is not None:
                os.close(mntns)
            await asyncio.to_thread(destroy_tree, sysroot.path)
            return
        log.info("host files changed: sandboxes now start on a fresh root")
        # Both at once: no sandbox may start on the new root from the old namespace.
        self._adopt_sysroot(sysroot)
        if self._mntns is not None:
            os.close(self._mntns)
        self._mntns = mntns

    def _destroy_sysroot(self, sysroot: _Sysroot) -> None:
        if destroy_tree(sysroot.path):
            self._sysroots.remove(sysroot)
        else:
            log.error("could not unmount the sandbox root %s", sysroot.path)

    def _release_sysroot(self, box: _Box) -> None:
        sysroot, box.sysroot = box.sysroot, None
        if sysroot is not None:
            sysroot.users -= 1
            if sysroot.retired and sysroot.users == 0 and sysroot in self._sysroots:
                self._destroy_sysroot(sysroot)

    # ----------------------------------------------------------------- commands

    def _command(
        self,
        box: _Box,
        limits: Limits,
        command: Sequence[str],
        *,
        writable_prog: bool,
        env: Mapping[str, str] | None = None,
    ) -> _Command:
        """launcher (rlimits, uid) + bwrap + ``command``; bwrap's options go through a
        memfd (``--args``), so the caller's environment never shows in a host ``ps``.

        The root is the system root, in one recursive bind: read-only already (its
        tmpfs and its binds were made so on the host, and a mount copied into the
        sandbox's user namespace cannot be made writable again: no ``--remount-ro``,
        which would also make it ``nodev`` and so break its device nodes); bubblewrap
        adds ``nosuid`` to every mount lacking it. Then ``/proc`` and the scratch's
        pieces on top."""
        s = box.scratch
        if box.sysroot is None:
            assert self._sysroot is not None
            box.sysroot = self._sysroot
            box.sysroot.users += 1
        # A prepared network namespace serves the box's first process tree only; the
        # launcher moves it there, and bubblewrap unshares all the other namespaces.
        netns, box.netns = box.netns, None
        unshare = _UNSHARE_ALL_BUT_NET if netns is not None else ["--unshare-all"]
        bw: list[str] = [
            *unshare,
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--hostname", "sandbox",
            "--dev-bind", str(box.sysroot.path), "/",
            "--proc", "/proc",
            "--ro-bind", str(s.etc / "passwd"), "/etc/passwd",
            "--ro-bind", str(s.etc / "group"), "/etc/group",
            "--bind", str(s.shm), "/dev/shm",
            "--bind", str(s.tmp), "/tmp",
            "--bind", str(s.work), "/work",
            "--bind" if writable_prog else "--ro-bind", str(s.prog), "/sandbox",
            "--chdir", "/work",
        ]  # fmt: skip
        for k, v in {**BASE_ENV, **(env or {})}.items():
            bw += ["--setenv", k, v]
        assert self._launcher is not None
        launch = Launch(
            launcher=str(self._launcher),
            uid=box.uid,
            rlimits=rlimits_for(limits, data_limit=box.spec.uses_rlimit_data and not writable_prog),
            wait_all=True,
            netns_fd=netns,
            mntns_fd=self._mntns,
        )
        return _Command(launch=launch, bwrap_options=bw, command=list(command))

    def _start(
        self,
        box: _Box,
        cmd: _Command,
        pass_fds: Sequence[int] = (),
        control: socket.socket | None = None,
        *,
        watch_ready: bool = True,
    ) -> Spawned:
        """Spawn ``cmd`` with bubblewrap's options in a memfd (``--args FD``)."""
        fds: list[int] = []
        try:
            fds.append(_memfd("bwrap-args", "".join(o + "\0" for o in cmd.bwrap_options).encode()))
            memfd = fds[0]
            options = []
            if self._seccomp is not None:
                fds.append(_memfd("seccomp", self._seccomp))
                options = ["--seccomp", str(fds[-1])]
            argv = [self.settings.bwrap_path, "--args", str(memfd), *options, "--", *cmd.command]
            sp = start(
                argv,
                launch=cmd.launch,
                pass_fds=[*fds, *pass_fds],
                control=control,
                watch_ready=watch_ready,
            )
        finally:
            for fd in fds:
                os.close(fd)
            if cmd.launch.netns_fd is not None:  # the launcher has its copy
                os.close(cmd.launch.netns_fd)
        box.sp = sp
        return sp

    def _schedule_teardown(self, box: _Box, *, delay: float = 0.0) -> None:
        task = asyncio.ensure_future(self._teardown(box, delay))
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def _teardown(self, box: _Box, delay: float = 0.0) -> None:
        """Kill and reap, unmount the scratch, sweep the uid, release it.

        ``delay`` (only for a sandbox whose program has already exited) lets the
        execution's result be delivered before the clean-up takes the event loop.
        """
        try:
            box.close_netns()
            if delay and not self._closing:
                await asyncio.sleep(delay)
            sp = box.sp
            if sp is not None:
                sp.discard()
                if not sp.exited.done():  # usually reaped already: no wait to set up
                    try:
                        await asyncio.wait_for(asyncio.shield(sp.exited), 10.0)
                    except TimeoutError:
                        log.error("sandbox %d did not exit after SIGKILL", sp.pid)
            # off the event loop: unmounting and removing the mount point can block for
            # milliseconds in the kernel (measured: a third of the loop's time under load)
            await asyncio.to_thread(self._retire_scratch, box.scratch)
            # Every process of the uid descends from the launcher's child (the uid is
            # leased to this sandbox alone and only that child switches to it), and the
            # launcher reaps all its descendants before reporting. Without a report (the
            # launcher itself was killed), scan the whole machine for stragglers.
            if sp is None or not sp.reported:
                found = await asyncio.to_thread(sweep_uid, box.uid)
                if found:
                    log.warning("killed %d leftover process(es) of sandbox uid %d", found, box.uid)
        finally:
            self._boxes.discard(box)
            self._release_sysroot(box)
            assert self._uids is not None
            self._uids.release(box.lease)

    # ----------------------------------------------------------------- warm pool

    async def _prestart(self, spec: LanguageSpec) -> _Box:
        limits = self.settings.defaults
        lease = await self._lease()
        box = self._new_box(lease, spec, limits, None, prog_writable=False)
        try:
            ctl_r, ctl = control_channel()
            try:
                assert spec.bootstrap is not None
                command = spec.bootstrap(
                    ctl_r, f"/sandbox/main.{spec.file_extension}", "/work", limits.memory
                )
                cmd = self._command(box, limits, command, writable_prog=False)
                self._start(box, cmd, [ctl_r, *spec.boot_fds], control=ctl)
            finally:
                os.close(ctl_r)
        except BaseException:
            await self._teardown(box)
            raise
        box.key = _warm_key(limits)
        return box

    async def _refill_loop(self, spec: LanguageSpec) -> None:
        queue = self._pool[spec.id]
        wake = self._pool_wake[spec.id]
        failures = 0
        while not self._closing:
            if len(queue) < self.settings.warm_pool_size:
                try:
                    box = await self._prestart(spec)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failures += 1
                    log.exception("could not pre-start a %s sandbox", spec.id)
                    await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                    continue
                failures = 0
                if self._closing:
                    self._schedule_teardown(box)
                    return
                queue.append(box)
                continue
            wake.clear()
            await wake.wait()

    def _take_warm(self, spec: LanguageSpec, limits: Limits) -> _Box | None:
        queue = self._pool.get(spec.id)
        if not queue or any(box.key != _warm_key(limits) for box in queue):
            return None
        while queue:
            box = queue.popleft()
            if self._healthy(box):
                # The replacement starts when this execution ends (see _execute): starting
                # it now would compete with this execution for the CPU and the loop.
                return box
            log.warning("discarding an unhealthy pre-started %s sandbox", spec.id)
            self._schedule_teardown(box)
        self._pool_wake[spec.id].set()
        return None

    async def wait_warm(self, timeout: float = 30.0) -> None:
        """Wait until every warm pool is full and each pre-started interpreter is up.

        For benchmarks, tests and a server that wants its first requests warm; raises
        :class:`TimeoutError` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                boxes = [box for q in self._pool.values() for box in q]
                full = all(len(q) >= self.settings.warm_pool_size for q in self._pool.values())
                if full and all(b.sp is not None and b.sp.ready.done() for b in boxes):
                    return
                await asyncio.sleep(0.005)

    @staticmethod
    def _healthy(box: _Box) -> bool:
        sp = box.sp
        if sp is None or not sp.alive or sp.stdout_r is None or sp.stderr_r is None:
            return False
        poller = select.poll()
        poller.register(sp.stdout_r, select.POLLIN)
        poller.register(sp.stderr_r, select.POLLIN)
        return not poller.poll(0)

    # ----------------------------------------------------------------- execution

    async def execute(
        self, req: ExecutionRequest, on_output: OutputCallback | None = None
    ) -> ExecutionOutcome:
        """Run ``req`` in a fresh sandbox (see :class:`~.base.Executor`)."""
        entry = self._langs.get(resolve_language(req.language))
        if entry is None:
            raise UnsupportedLanguageError(req.language)
        if not self._started or self._closing:
            raise SandboxError("the executor is not running")
        validate_env(req.env)
        spec = entry[0]
        async with self._slots:
            if req.workdir is None:
                return await self._execute(spec, req, on_output, None)
            session = _canonical(req.workdir)
            lock = self._session_locks.setdefault(str(session), asyncio.Lock())
            async with lock:
                await asyncio.to_thread(ensure_session_dir, session, req.limits.max_disk)
                return await self._execute(spec, req, on_output, session)

    async def _execute(
        self,
        spec: LanguageSpec,
        req: ExecutionRequest,
        on_output: OutputCallback | None,
        session: Path | None,
    ) -> ExecutionOutcome:
        limits = req.limits
        stdin = req.stdin.encode("utf-8", "surrogateescape") if req.stdin is not None else None
        code = req.code.encode("utf-8", "surrogateescape")
        program = f"main.{spec.file_extension}"
        box = None
        exited = False
        if session is None and not spec.compiled:
            box = self._take_warm(spec, limits)
        if box is None:
            box = await self._cold_box(spec, limits, session, prog_writable=spec.compiled)
        try:
            try:
                write_new_file(box.scratch.prog / program, code)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG):
                    raise ValueError("the program is larger than the disk quota") from None
                raise
            if spec.compiled:
                return await self._run_compiled(box, req, stdin, on_output)
            # The control data still to send once the pipes are read (None: all sent).
            pending: bytes | None = env_payload(req.env)
            if box.sp is None:  # cold
                ctl_r, ctl = control_channel()
                try:
                    # What fits the socket's buffer waits there before the interpreter
                    # starts: no event-loop round trip (the bootstrap reads exactly the
                    # same bytes); the rest, if any, once the pipes are being read.
                    assert pending is not None
                    pending = send_what_fits(ctl, pending)
                    assert spec.bootstrap is not None
                    command = spec.bootstrap(ctl_r, f"/sandbox/{program}", "/work", limits.memory)
                    cmd = self._command(box, limits, command, writable_prog=False)
                    t0 = time.monotonic()
                    sp = self._start(
                        box, cmd, [ctl_r, *spec.boot_fds], control=ctl, watch_ready=False
                    )
                except BaseException:
                    ctl.close()
                    raise
                finally:
                    os.close(ctl_r)
            else:
                sp = box.sp
                t0 = time.monotonic()
                # The waiting interpreter starts the program as soon as its control data
                # is there: send what the socket takes now, before any await (the pipes
                # hold the program's first output until they are read; an await here
                # would let other work of the event loop run first).
                if sp.control is not None:
                    assert pending is not None
                    pending = send_what_fits(sp.control, pending)

            raw = await supervise(
                sp,
                stdin=stdin,
                timeout=limits.timeout,
                max_output=limits.max_output,
                on_output=on_output,
                t0=t0,
                control=pending,
            )
            outcome = run_outcome(raw, via_bwrap=True, compile_output=None)
            exited = True
            return outcome
        finally:
            # a program that ended is cleaned up a moment later (its result goes out
            # first); one interrupted (canceled, failed) is killed at once
            self._schedule_teardown(box, delay=_REFILL_DELAY if exited else 0.0)
            self._schedule_prepare()
            if time.monotonic() - self._sysroot_checked >= _SYSROOT_CHECK_S:
                self._sysroot_checked = time.monotonic()
                asyncio.get_running_loop().call_later(_REFILL_DELAY, self._check_sysroot)
            wake = self._pool_wake.get(spec.id)
            if wake is not None:
                # Start the replacement a moment later: its set-up (mounts, fork/exec)
                # runs on the event loop and would otherwise delay delivering this
                # execution's result (measured: 2.4 ms -> 0.8 ms to a job subscriber).
                asyncio.get_running_loop().call_later(_REFILL_DELAY, wake.set)

    async def _run_compiled(
        self,
        box: _Box,
        req: ExecutionRequest,
        stdin: bytes | None,
        on_output: OutputCallback | None,
    ) -> ExecutionOutcome:
        spec, limits = box.spec, req.limits
        assert spec.compile_argv is not None
        write_new_file(box.scratch.prog / C_INIT_NAME, C_INIT_SOURCE.encode())
        command = spec.compile_argv(
            f"/sandbox/main.{spec.file_extension}", f"/sandbox/{C_INIT_NAME}", "/sandbox/main"
        )
        return await compile_and_run(
            lambda: self._start(box, self._command(box, limits, command, writable_prog=True)),
            lambda: self._start(
                box,
                self._command(box, limits, ["/sandbox/main"], writable_prog=False, env=req.env),
            ),
            limits=limits,
            stdin=stdin,
            on_output=on_output,
            via_bwrap=True,
        )

    async def release_workdir(self, workdir: Path) -> None:
        """Unmount a session dir's quota tmpfs (the session is over; its files are gone,
        the empty directory stays for the caller to remove)."""
        session = _canonical(workdir)
        lock = self._session_locks.pop(str(session), None)
        if lock is not None:
            async with lock:
                await asyncio.to_thread(release_session_dir, session)
        else:
            await asyncio.to_thread(release_session_dir, session)
