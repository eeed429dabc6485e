"""Network namespaces made in advance, one per sandbox (never shared, never reused).

bubblewrap's ``--unshare-net`` creates the sandbox's network namespace and brings its
loopback up while the caller waits (about 0.6 ms here, the costliest namespace to
make). The local backend instead makes one ahead of time for each prepared scratch
(:mod:`.local`) with :func:`new_netns`, and the launcher moves the sandbox into it
(``-n FD``) before dropping privileges; bubblewrap then unshares every namespace but
that one. What the sandbox gets is the same: a network namespace of its own with
only a loopback interface, up (127.0.0.1 and ::1), and no route anywhere else. It
belongs to the host's user namespace, so the sandbox (which holds no capability
there) cannot reconfigure it either.

A namespace lives as long as a file descriptor or a process refers to it: the
server's descriptor is closed once the sandbox has started (or when a prepared one
is discarded), and the namespace goes away with the sandbox's last process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading

__all__ = ["new_netns"]

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | _IFF_UP))


def _make(out: list[int | BaseException]) -> None:
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _loopback_up()
        except BaseException:
            os.close(fd)
            raise
        out.append(fd)
    except BaseException as exc:  # re-raised in the caller's thread
        out.append(exc)


def new_netns() -> int:
    """A new network namespace with its loopback up, as a close-on-exec descriptor.

    Namespaces are per thread: it is made by a short-lived thread of its own, which
    ends right after (so no thread of the server ever runs in it). Needs root.
    """
    out: list[int | BaseException] = []
    worker = threading.Thread(target=_make, args=(out,), name="deepexec-netns", daemon=True)
    worker.start()
    worker.join()
    result = out[0] if out else RuntimeError("the network namespace helper did not run")
    if isinstance(result, BaseException):
        raise result
    return result
