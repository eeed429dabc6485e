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

Namespaces are per thread, and only one thread of the server ever enters one: a
long-lived helper thread that does nothing else. For each namespace it unshares its
network namespace, takes a descriptor of the new one, brings its loopback up and
moves itself back to the host's namespace (``setns``) before answering; should that
ever fail, the helper ends (with it, its hold on that namespace) and a fresh one
serves the next request. Every request is answered; a caller that gets no answer within
``REPLY_TIMEOUT`` seconds raises OSError, and the local backend then lets bubblewrap make
the namespaces. A thread started for every namespace (as before) cost about
0.1 ms of CPU more per sandbox here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import queue
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
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | _IFF_UP))


def _unshare() -> int:
    """Move the calling thread into a new network namespace with its loopback up and
    return a descriptor of it (the thread stays there: see :func:`_serve`)."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _loopback_up()
    except BaseException:
        os.close(fd)
        raise
    return fd


#: seconds new_netns waits for the helper thread's answer before it gives up
REPLY_TIMEOUT = 30.0

#: requests to the helper thread: the queue each answer goes to
_requests: queue.SimpleQueue[queue.SimpleQueue[int | BaseException]] = queue.SimpleQueue()
_helper_lock = threading.Lock()
_helper: threading.Thread | None = None


def _serve() -> None:
    """The helper thread: a namespace per request, back home after each. Every request
    gets an answer, whatever fails (a descriptor, the namespace, the way back)."""
    while True:
        reply = _requests.get()
        result: int | BaseException
        back = True
        try:
            # /proc/self is the main thread's: the host's network namespace
            home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException as exc:  # re-raised in the caller's thread
            reply.put(exc)
            continue
        try:
            result = _unshare()
        except BaseException as exc:
            result = exc
        finally:
            back = _libc.setns(home, CLONE_NEWNET) == 0
            try:
                os.close(home)
            except OSError:
                pass
            reply.put(result)
        if not back:  # cannot happen as root; this thread must not live on elsewhere
            return


def _ensure_helper() -> None:
    global _helper
    with _helper_lock:
        if _helper is None or not _helper.is_alive():
            _helper = threading.Thread(target=_serve, name="deepexec-netns", daemon=True)
            _helper.start()


def new_netns() -> int:
    """A new network namespace with its loopback up, as a close-on-exec descriptor.

    Made by the helper thread (see the module docstring), which returns to the host's
    namespace right after: no other thread of the server ever enters one. Needs root.
    """
    _ensure_helper()
    reply: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
    _requests.put(reply)
    waited = 0.0
    while True:
        try:
            result = reply.get(timeout=1.0)
            break
        except queue.Empty:
            waited += 1.0
            if waited >= REPLY_TIMEOUT:
                # a namespace takes milliseconds: rather a clear error (the caller then
                # lets bubblewrap make them) than a worker thread waiting for ever
                raise OSError(
                    errno.ETIMEDOUT, f"no network namespace made within {REPLY_TIMEOUT:g} s"
                ) from None
            _ensure_helper()  # it ended (see _serve) with this request still queued
    if isinstance(result, BaseException):
        raise result
    return result
