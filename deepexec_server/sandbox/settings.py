"""Server-wide sandbox settings: limit defaults and maxima, backend choice, pools.

=====================  ============  ==========  ==========================================
Limit (``Limits``)     Default       Maximum     Enforced by (local backend)
=====================  ============  ==========  ==========================================
``timeout``            10 s          300 s       wall clock, measured by the server; kill
``cpu_time``           10 s          300 s       ``RLIMIT_CPU``
``memory``             256 MiB       2 GiB       ``RLIMIT_AS`` (JavaScript: ``RLIMIT_DATA``
                                                 + V8 heap limit, ``RLIMIT_AS`` + 1 GiB)
``max_processes``      64            512         ``RLIMIT_NPROC`` on a uid of its own
                                                 (counts threads)
``max_open_files``     256           4096        ``RLIMIT_NOFILE``
``max_file_size``      16 MiB        1 GiB       ``RLIMIT_FSIZE``
``max_output``         1 MiB         16 MiB      bytes kept per stream; more = killed
``max_disk``           64 MiB        1 GiB       ``size=``/``nr_inodes=`` of the work
                                                 dir's tmpfs (see ``Limits.max_disk``)
=====================  ============  ==========  ==========================================

Other settings:

=========================  ========================  ======================================
Setting                    Default                   Meaning
=========================  ========================  ======================================
``backend``                ``"local"``               ``local`` (bubblewrap), ``e2b``, or
                                                     ``subprocess-insecure``
``allow_insecure``         ``False``                 let ``local`` fall back to plain
                                                     subprocesses where bubblewrap cannot
                                                     run (development only; loud warning)
``warm_pool_size``         ``1``                     pre-started sandboxes per warm
                                                     language (0 disables the pool). One
                                                     is enough to halve a lone request's
                                                     latency (bench/bench_sandbox.py) and
                                                     costs an idle interpreter per
                                                     language (python ~9 MiB, node ~40)
``prepared_scratches``     ``2``                     empty sandboxes kept ready for cold
                                                     starts, warm pool or not: a leased
                                                     uid, its mounted scratch tmpfs and a
                                                     network namespace each, no process
                                                     (0 disables; see the local backend)
``max_concurrency``        ``max(2, 2 * cpus)``      sandboxes running at once; further
                                                     executions wait for a slot
``uid_base``/``uid_count`` ``2_100_000_000``/1024    host uids for sandboxes (one each)
``runtime_dir``            ``/run/deepexec-sandbox`` where scratch tmpfs mounts and the
                                                     launcher live; every directory on the
                                                     way must be world-searchable
                                                     (bubblewrap runs as the sandbox uid)
``uid_lock_dir``           ``/run/deepexec-sandbox-  one lock file per uid in use, shared by
                           uids``                    every executor on the machine
``warm_languages``         ``("python", "bash")``    languages with a warm pool (None: all
                                                     interpreted ones; keeps an idle server
                                                     under 80 MB: a warm node is ~40 MB)
``languages``              ``None`` (all present)    restrict to these language ids
``e2b_api_key``            ``None``                  server-wide E2B key used when a request
                                                     brings none (never logged)
``e2b_template``           ``None``                  E2B sandbox template (SDK default)
=========================  ========================  ======================================

The server clamps the limits of each request with :meth:`SandboxSettings.clamp`
(values above the maximum become the maximum, missing ones the default); executors
obey the :class:`~deepexec_server.sandbox.base.Limits` they are given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs
from attrs import define, field

from .base import Limits

__all__ = ["DEFAULT_LIMITS", "MAX_LIMITS", "SandboxSettings"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: The defaults of the table above.
DEFAULT_LIMITS = Limits(
    timeout=10.0,
    cpu_time=10.0,
    memory=256 * MiB,
    max_processes=64,
    max_open_files=256,
    max_file_size=16 * MiB,
    max_output=1 * MiB,
    max_disk=64 * MiB,
)

#: The maxima of the table above.
MAX_LIMITS = Limits(
    timeout=300.0,
    cpu_time=300.0,
    memory=2 * GiB,
    max_processes=512,
    max_open_files=4096,
    max_file_size=1 * GiB,
    max_output=16 * MiB,
    max_disk=1 * GiB,
)

BACKENDS = ("local", "e2b", "subprocess-insecure")


def _default_concurrency() -> int:
    return max(2, 2 * (os.cpu_count() or 1))


def _check_backend(_inst: object, _attr: object, value: str) -> None:
    if value not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {value!r}; expected one of {BACKENDS}")


@define(frozen=True, kw_only=True)
class SandboxSettings:
    """Sandbox configuration (see the module docstring for every field)."""

    backend: str = field(default="local", validator=_check_backend)
    allow_insecure: bool = False
    defaults: Limits = DEFAULT_LIMITS
    maxima: Limits = MAX_LIMITS
    warm_pool_size: int = 1
    #: languages that get a warm pool (None: every interpreted language); python and bash
    #: by default, which keeps an idle server under 80 MB (a warm node alone is ~40 MB)
    warm_languages: tuple[str, ...] | None = ("python", "bash")
    #: empty sandboxes (uid + scratch tmpfs + network namespace, no process) kept ready
    #: for cold starts
    prepared_scratches: int = 2
    max_concurrency: int = field(factory=_default_concurrency)
    uid_base: int = 2_100_000_000
    uid_count: int = 1024
    runtime_dir: Path = Path("/run/deepexec-sandbox")
    uid_lock_dir: Path = Path("/run/deepexec-sandbox-uids")
    bwrap_path: str = "/usr/bin/bwrap"
    languages: tuple[str, ...] | None = None
    e2b_api_key: str | None = field(default=None, repr=False)
    e2b_template: str | None = None

    def __attrs_post_init__(self) -> None:
        if (
            self.warm_pool_size < 0
            or self.prepared_scratches < 0
            or self.max_concurrency < 1
            or self.uid_count < 1
        ):
            raise ValueError(
                "warm_pool_size >= 0, prepared_scratches >= 0, max_concurrency >= 1, uid_count >= 1"
            )

    def default_limits(self) -> Limits:
        """The limits used for a request that specifies none."""
        return self.clamp({})

    def clamp(self, requested: Mapping[str, float | int | None] | Limits) -> Limits:
        """Fill missing limits with the defaults and cap every limit at its maximum.

        ``requested`` maps :class:`Limits` field names to values (``None`` or absent =
        default); unknown names raise :class:`ValueError`; non-positive values too.
        """
        if isinstance(requested, Limits):
            requested = attrs.asdict(requested)
        names = {f.name for f in attrs.fields(Limits)}
        unknown = set(requested) - names
        if unknown:
            raise ValueError(f"unknown limits: {sorted(unknown)}")
        values: dict[str, float | int] = {}
        for name in names:
            asked = requested.get(name)
            default = getattr(self.defaults, name)
            maximum = getattr(self.maxima, name)
            value = default if asked is None else asked
            if isinstance(value, bool) or value <= 0:
                raise ValueError(f"limit {name} must be positive, got {value!r}")
            capped = min(value, maximum)
            values[name] = float(capped) if name in ("timeout", "cpu_time") else int(capped)
        return Limits(**values)  # type: ignore[arg-type]
