"""A small seccomp filter for sandboxed programs (given to bubblewrap's ``--seccomp``).

rlimits and size-limited tmpfs bound most of what a program can consume, but a few
unprivileged system calls allocate kernel or shared memory no rlimit counts, or
reach kernel subsystems that are not namespaced. They fail with ``EPERM``:

==========================  ================================================================
System calls                Why
==========================  ================================================================
``memfd_create``,           anonymous files: their pages are in no tmpfs quota and count in
``memfd_secret``            ``RLIMIT_AS`` only while mapped (``NOFILE`` x ``FSIZE`` bytes)
``shmget``, ``msgget``      System V shared memory / message queues: segments and queued
                            messages outlive the process that made them, unbounded by rlimits
``keyctl``, ``add_key``,    kernel keyrings are not namespaced
``request_key``
``bpf``, ``perf_event_open``,  large, historically vulnerable kernel surfaces
``userfaultfd``,
``io_uring_*``
``ptrace``,                 reading or steering another process of the sandbox (its
``process_vm_readv``,       bubblewrap init runs as the same uid): nothing a program run
``process_vm_writev``       here needs
==========================  ================================================================

System calls of a foreign ABI (i386 via ``int 0x80``, x32 on x86-64) fail with
``ENOSYS``: the filter only knows the native numbers. POSIX shared memory
(``/dev/shm``, quota'd) and everything else is allowed. Supported: x86-64 and
aarch64; on other architectures :func:`seccomp_filter` returns ``None`` and
sandboxes run without the filter.
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["BLOCKED", "seccomp_filter"]

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_X32_SYSCALL_BIT = 0x40000000

#: Per machine: (AUDIT_ARCH value, {syscall name: number}).
_TABLES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "shmget": 29,
            "ptrace": 101,
            "msgget": 68,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "perf_event_open": 298,
            "memfd_create": 319,
            "bpf": 321,
            "userfaultfd": 323,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "io_uring_register": 427,
            "memfd_secret": 447,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "ptrace": 117,
            "msgget": 186,
            "shmget": 194,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "perf_event_open": 241,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "memfd_create": 279,
            "bpf": 280,
            "userfaultfd": 282,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "memfd_secret": 447,
        },
    ),
}

#: The system calls the filter refuses (names).
BLOCKED: frozenset[str] = frozenset(_TABLES["x86_64"][1])


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The compiled classic-BPF program (``struct sock_filter[]``) for this machine."""
    machine = machine or platform.machine()
    if machine not in _TABLES:
        return None
    arch, table = _TABLES[machine]
    numbers = sorted(table.values())
    # Layout: 0 ld arch; 1 jeq arch; 2 ret ENOSYS; 3 ld nr; [x32 check]; jeqs; allow; deny.
    x32 = machine == "x86_64"
    first_check = 4
    n_checks = len(numbers) + (1 if x32 else 0)
    allow_at = first_check + n_checks
    deny_at = allow_at + 1
    prog = [
        _insn(_BPF_LD_W_ABS, 0, 0, 4),
        _insn(_BPF_JEQ_K, 1, 0, arch),
        _insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
        _insn(_BPF_LD_W_ABS, 0, 0, 0),
    ]
    index = first_check
    if x32:  # -> the ENOSYS return after the EPERM one
        prog.append(_insn(_BPF_JGE_K, deny_at + 1 - index - 1, 0, _X32_SYSCALL_BIT))
        index += 1
    for nr in numbers:
        prog.append(_insn(_BPF_JEQ_K, deny_at - index - 1, 0, nr))
        index += 1
    prog.append(_insn(_BPF_RET_K, 0, 0, _RET_ALLOW))
    prog.append(_insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.EPERM))
    prog.append(_insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS))
    return b"".join(prog)
