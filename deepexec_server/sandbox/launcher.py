"""A tiny C launcher between the server and each sandbox, built once at start.

Why not start bubblewrap directly from Python: ``ru_maxrss`` of a process starts at
the resident size of the process it was forked from, so anything forked from the
server reports at least the server's own RSS as its peak. The launcher is exec'd
(small), *forks* the real command (whose RSS accounting therefore starts near zero)
and reports the exact peak RSS of everything it reaped. It also:

* sets the rlimits and drops to the sandbox uid (``setgroups(0)``, ``setresgid``,
  ``setresuid``) in the child, before exec; this replaces ``prlimit`` + ``setpriv``
  (two execs) with one fork;
* puts the child in a process group of its own and, on ``SIGTERM``, SIGKILLs that
  group (the server's way to kill a sandbox while keeping the launcher alive to
  report);
* is a child subreaper: bubblewrap's outer process does not wait for its inner pid 1,
  which is therefore re-parented to the launcher and reaped here (no zombie left to
  the host's init, and its rusage, which includes the sandboxed program's, counted);
  with ``-a`` it waits for every descendant (they all die with the pid namespace);
  without, it SIGKILLs the child's group once the child exits (insecure backend);
* with ``-n FD``, moves the child into the network namespace ``FD`` refers to (and
  closes ``FD``) before dropping privileges: a namespace the server made in advance
  (see :mod:`.netns`), so that bubblewrap need not create one;
* with ``-m FD``, likewise into the mount namespace ``FD`` refers to: the minimal one
  ``launcher --mntns-holder ROOT INSTANCE READY_FD`` builds (``/usr``, ``/bin`` and
  ``/lib*``, ``ld.so.cache``, a ``/proc``, an empty ``/tmp`` for bubblewrap's staging
  mount and the executor's instance directory, a slave of the host's), so that
  bubblewrap copies, lists and unmounts a handful of mounts rather than all of the
  host's (see :mod:`.local`, *Cold starts*);
* dies with its parent (``PR_SET_PDEATHSIG``), and so does its child.

Protocol: ``launcher STATUS_FD UID|-1 [-a] [-n NETNS_FD] [-m MNTNS_FD]
[-r RESOURCE:SOFT:HARD]... -- PROGRAM ARG...`` (or ``launcher --mntns-holder ROOT
INSTANCE READY_FD``, which writes ``R`` to READY_FD once its namespace is built, then
waits to be killed).
On exit it writes ``"<wait status of the child> <max ru_maxrss KiB>\\n"`` to STATUS_FD.
The child gets an empty environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["LAUNCHER_SOURCE", "RLIMIT_CODES", "build_launcher"]

#: ``-r`` resource numbers (Linux, all architectures Debian ships).
RLIMIT_CODES = {
    "cpu": 0,
    "fsize": 1,
    "data": 2,
    "core": 4,
    "nproc": 6,
    "nofile": 7,
    "as": 9,
}

LAUNCHER_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child = -1;

static void on_term(int sig) {
    (void)sig;
    if (child > 0) kill(-child, SIGKILL);
}

/* Close every descriptor >= 3 but keep: two close_range calls (Linux >= 5.9) rather
   than a thousand close calls racing the child for the CPU. */
static void close_others(int keep) {
#ifdef SYS_close_range
    int ok = keep < 3 ? syscall(SYS_close_range, 3, ~0U, 0) == 0
        : (keep == 3 || syscall(SYS_close_range, 3, keep - 1, 0) == 0)
          && syscall(SYS_close_range, keep + 1, ~0U, 0) == 0;
    if (ok) return;
#endif
    for (int fd = 3; fd < 1024; fd++) if (fd != keep) close(fd);
}

static void fail(const char *what) {
    dprintf(2, "deepexec-launcher: %s: %s\n", what, strerror(errno));
    _exit(127);
}

/* mkdir -p, every component 0755 */
static void make_dirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) { errno = ENAMETOOLONG; fail("path"); }
    memcpy(buf, path, n + 1);
    for (size_t k = 1; k <= n; k++) {
        if (buf[k] == '/' || buf[k] == '\0') {
            char c = buf[k];
            buf[k] = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) fail(buf);
            buf[k] = c;
        }
    }
}

static void bind_into(const char *host, int readonly) {
    /* host is absolute; the target is the same path below the current directory */
    const char *rel = host + 1;
    struct stat st;
    if (stat(host, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        make_dirs(rel);
    } else {
        int fd = open(rel, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) fail(rel);
        close(fd);
    }
    if (mount(host, rel, NULL, MS_BIND | MS_REC, NULL) != 0) fail(host);
    unsigned long ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
    if (readonly && mount(NULL, rel, NULL, ro, NULL) != 0) fail(host);
}

/* --mntns-holder ROOT INSTANCE READY_FD: a mount namespace holding only what
   bubblewrap needs to start (/usr, /bin and /lib*, ld.so.cache, a /proc) and the
   executor's instance directory, a slave of the host's so that every mount made
   there later (scratches, system roots) shows up; then wait to be killed. */
static int mntns_holder(char **argv) {
    const char *root = argv[2], *inst = argv[3];
    int ready = atoi(argv[4]);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail("prctl");
    if (unshare(CLONE_NEWNS) != 0) fail("unshare");
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) fail("make / a slave");
    if (mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=65536") != 0)
        fail("tmpfs");
    if (chdir(root) != 0) fail("chdir");
    bind_into("/usr", 1);
    static const char *const tops[] = { "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32" };
    for (size_t k = 0; k < sizeof tops / sizeof tops[0]; k++) {
        char target[4096];
        ssize_t len = readlink(tops[k], target, sizeof target - 1);
        if (len >= 0) {
            target[len] = '\0';
            if (symlink(target, tops[k] + 1) != 0) fail(tops[k]);
        } else {
            bind_into(tops[k], 1);
        }
    }
    make_dirs("tmp"); /* bubblewrap mounts its staging tmpfs on /tmp */
    make_dirs("etc");
    bind_into("/etc/ld.so.cache", 1);
    make_dirs("proc");
    if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) fail("proc");
    bind_into(inst, 0);
    if (syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot_root");
    if (umount2(".", MNT_DETACH) != 0) fail("umount");
    if (chdir("/") != 0) fail("chdir /");
    if (write(ready, "R", 1) != 1) fail("ready");
    close(ready);
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "--mntns-holder") == 0) return mntns_holder(argv);
    if (argc < 5) { dprintf(2, "deepexec-launcher: bad usage\n"); return 127; }
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail("prctl");
    if (getppid() != parent) return 127;
    int status_fd = atoi(argv[1]);
    long uid = atol(argv[2]);
    int wait_all = 0, netns_fd = -1, mntns_fd = -1, i = 3;
    struct { int res; struct rlimit lim; } limits[16];
    int nlimits = 0;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) { i++; break; }
        if (strcmp(argv[i], "-a") == 0) { wait_all = 1; continue; }
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) { netns_fd = atoi(argv[++i]); continue; }
        if (strcmp(argv[i], "-m") == 0 && i + 1 < argc) { mntns_fd = atoi(argv[++i]); continue; }
        if (strcmp(argv[i], "-r") == 0 && i + 1 < argc && nlimits < 16) {
            unsigned long long soft, hard; int res;
            if (sscanf(argv[++i], "%d:%llu:%llu", &res, &soft, &hard) != 3) {
                dprintf(2, "deepexec-launcher: bad limit %s\n", argv[i]); return 127;
            }
            limits[nlimits].res = res;
            limits[nlimits].lim.rlim_cur = soft;
            limits[nlimits].lim.rlim_max = hard;
            nlimits++;
            continue;
        }
        dprintf(2, "deepexec-launcher: bad argument %s\n", argv[i]); return 127;
    }
    if (i >= argc) { dprintf(2, "deepexec-launcher: no program\n"); return 127; }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) fail("subreaper");

    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);

    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
        sa.sa_handler = SIG_DFL;
        sigaction(SIGTERM, &sa, NULL);
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (setpgid(0, 0) != 0) fail("setpgid");
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail("prctl");
        close(status_fd);
        if (netns_fd >= 0) {
            if (setns(netns_fd, CLONE_NEWNET) != 0) fail("setns");
            close(netns_fd);
        }
        if (mntns_fd >= 0) {
            if (setns(mntns_fd, CLONE_NEWNS) != 0) fail("setns mnt");
            close(mntns_fd);
            if (chdir("/") != 0) fail("chdir");
        }
        for (int k = 0; k < nlimits; k++)
            if (setrlimit(limits[k].res, &limits[k].lim) != 0) fail("setrlimit");
        if (uid >= 0) {
            if (setgroups(0, NULL) != 0) fail("setgroups");
            if (setresgid((gid_t)uid, (gid_t)uid, (gid_t)uid) != 0) fail("setresgid");
            if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) fail("setresuid");
        }
        char *envp[] = { NULL };
        execve(argv[i], &argv[i], envp);
        fail(argv[i]);
    }
    child = pid;
    sigprocmask(SIG_SETMASK, &old, NULL);
    /* Hold no copy of the sandbox's pipes: their EOF must mean the sandbox is gone. */
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) { dup2(devnull, 0); dup2(devnull, 1); dup2(devnull, 2); }
    close_others(status_fd);

    int child_status = 0;
    long maxrss = 0;
    for (;;) {
        int st;
        struct rusage ru;
        pid_t got = wait4(-1, &st, 0, &ru);
        if (got < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing left */
        }
        if (ru.ru_maxrss > maxrss) maxrss = ru.ru_maxrss;
        if (got == pid) {
            child_status = st;
            child = -1;
            if (!wait_all) { kill(-pid, SIGKILL); break; }
        }
    }
    dprintf(status_fd, "%d %ld\n", child_status, maxrss);
    return 0;
}
"""


def build_launcher(directory: Path) -> Path:
    """Compile the launcher into ``directory`` (once per source version) and return it.

    Raises :class:`RuntimeError` when no C compiler is available or it fails.
    """
    digest = hashlib.sha256(LAUNCHER_SOURCE.encode()).hexdigest()[:12]
    target = directory / f"deepexec-launcher-{digest}"
    if os.access(target, os.X_OK):
        return target
    cc = shutil.which("gcc", path="/usr/bin:/bin") or shutil.which("cc", path="/usr/bin:/bin")
    if cc is None:
        raise RuntimeError("a C compiler (gcc) is needed to build the sandbox launcher")
    directory.mkdir(parents=True, exist_ok=True)
    src = directory / f".launcher-{digest}-{os.getpid()}.c"
    tmp = directory / f".launcher-{digest}-{os.getpid()}"
    src.write_text(LAUNCHER_SOURCE)
    try:
        errors = ""
        for extra in (["-static"], []):
            r = subprocess.run(
                [cc, "-O2", "-Wall", *extra, "-o", str(tmp), str(src)],
                capture_output=True,
                text=True,
                check=False,
                env={"PATH": "/usr/bin:/bin", "LANG": "C"},
            )
            if r.returncode == 0:
                break
            errors = r.stderr
        else:
            raise RuntimeError(f"building the sandbox launcher failed: {errors.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        src.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return target
