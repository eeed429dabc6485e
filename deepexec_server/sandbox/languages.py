"""The languages the sandbox backends know: how to detect them and how to run them.

Interpreted languages (python, javascript, ruby, bash) are started through a tiny
*bootstrap* given on the interpreter's command line: it says it is up (one byte,
``R``, on its control socket), blocks reading the caller's environment variables
(``NAME=value`` entries separated by NUL) from that socket until EOF, applies them,
then runs the program file exactly like ``interpreter file`` would.
The same bootstrap serves cold starts (the control data is already waiting in the
socket when the interpreter starts) and the warm pool (written when a request
arrives), so both paths behave identically. Python's bootstrap is compiled once per
executor by the sandbox's own interpreter (:func:`precompile_bootstrap`) and handed
over marshalled in a sealed memfd, which saves compiling it at every start.
Observable details, identical for cold and warm runs:

* python: the program ends as under the bare interpreter (non-daemon threads joined,
  atexit callbacks run, files left open flushed, the same exit status and messages),
  then the process exits without tearing every module down (os._exit: ~3 ms of CPU
  less per run; an object's ``__del__`` that needs a module already torn down at a
  bare interpreter's exit may run where it would have failed there). The objects of
  the interpreter's start-up are frozen (``gc.freeze()``): collections, the final one
  included, look only at the program's objects (the final one took ~0.8 ms of a
  ``print(1)`` run, most of its tail). A program that inspects the collector sees it:
  ``gc.get_freeze_count()`` is not 0, and ``gc.get_objects()`` and
  ``gc.get_referrers()`` leave the frozen start-up objects out (``gc.unfreeze()`` puts
  them back). The interpreter starts with ``-I -S`` (isolated, no site module): the bootstrap
  sets the search path the same interpreter's site makes (found once by
  :func:`precompile_bootstrap`; the user's site-packages under ``HOME``, with its
  ``.pth`` files, when it exists) and site's builtins (``exit``, ``quit``, ``help``,
  ``copyright``, ``credits``, ``license``); the host's site customisation
  (``sitecustomize``, ``usercustomize``, import lines of the system's ``.pth`` files)
  does not run: host code, ~2 ms of every start. Interpreters that multiprocessing
  starts (``spawn``, ``forkserver``) inherit the flags, as they inherit any: they get
  the parent's search path, not site's builtins. The program is
  compiled as the interpreter compiles a script (exec of its source, caught by an
  audit hook before it runs, then named after its file): the same code objects as
  ``compile(source, path, "exec")``, without that builtin's one-time set-up of the
  ast module (~1 ms). The hook stays installed, idle, for the program's lifetime.
  ``sys.argv == [program]``, ``sys.path[0]`` is the work dir (modules in the
  work dir are importable, as in a REPL or notebook), stdout is line-buffered (as
  on a terminal); ``PYTHONPATH`` set by the caller is honoured, other ``PYTHON*``
  start-up variables are not (the interpreter is already running).
* javascript: run as the CommonJS main module (``require.main === module``).
* ruby: ``$0 == __FILE__ ==`` the program, ``$stdout.sync = true``.
* bash: ``exec /usr/bin/bash program`` once the environment is applied.

Compiled languages (c, cpp) compile inside the sandbox first (``/sandbox`` writable
for that step only) and run the binary in a second sandbox; a small extra
translation unit makes ``stdout`` line-buffered, as on a terminal, so output streams.
"""

from __future__ import annotations

import ast
import asyncio
import fcntl
import os
import re
from collections.abc import Callable, Sequence

import attrs
from attrs import define

from .base import LanguageInfo

__all__ = [
    "ALIASES",
    "C_INIT_NAME",
    "C_INIT_SOURCE",
    "LANGUAGE_SPECS",
    "LanguageSpec",
    "detect_languages",
    "precompile_bootstrap",
    "resolve_language",
    "sealed_memfd",
]

_PY_BOOT_DEF = r"""
def _deepexec_boot(fd, path, wd, site_paths=None):
    import os, sys  # locals: the globals of this code are __main__'s, cleared below

    if site_paths is not None:
        # Started with -I -S: do what the site module's start-up does that a program
        # sees, without running the host's site customisation (sitecustomize,
        # usercustomize, the import lines of .pth files: host code, ~2 ms of every
        # start). site_paths is sys.path as the same interpreter's site made it
        # (precompile_bootstrap); the builtins are site's own.
        import builtins, _sitebuiltins

        base = sys.path[:]
        extra_site = [p for p in site_paths if p not in base]
        eof = "Ctrl-D (i.e. EOF)"
        builtins.quit = _sitebuiltins.Quitter("quit", eof)
        builtins.exit = _sitebuiltins.Quitter("exit", eof)
        builtins.copyright = _sitebuiltins._Printer("copyright", sys.copyright)
        builtins.credits = _sitebuiltins._Printer(
            "credits",
            "    Thanks to CWI, CNRI, BeOpen.com, Zope Corporation and a cast of thousands\n"
            "    for supporting Python development.  See www.python.org for more information.",
        )
        here = getattr(sys, "_stdlib_dir", None) or os.path.dirname(os.__file__)
        builtins.license = _sitebuiltins._Printer(
            "license",
            "See https://www.python.org/psf/license/",
            ["LICENSE.txt", "LICENSE"],
            [os.path.join(here, os.pardir), here, os.curdir],
        )
        builtins.help = _sitebuiltins._Helper()

    # The program is compiled the way the interpreter compiles a script or -c: through
    # exec() of its source, which skips the one-time set-up of the ast module's types
    # that builtin compile() pays on its first call (~1 ms). An audit hook takes the
    # compiled code object as the "exec" event announces it, before any of it runs;
    # the file name is then set on it and on every nested code object, which gives
    # exactly what compile(source, path, "exec") gives. Where that does not work
    # (checked on a harmless statement first), builtin compile() is used.
    class Compiled(BaseException):
        pass

    armed, caught = [False], []

    def hook(event, args, armed=armed, caught=caught, Compiled=Compiled):
        if armed[0] and event == "exec":
            armed[0] = False
            caught.append(args[0])
            raise Compiled

    def renamed(code, name):
        consts = tuple(
            renamed(c, name) if isinstance(c, type(code)) else c for c in code.co_consts
        )
        return code.replace(co_filename=name, co_consts=consts)

    def compile_file(source, name):
        if hook_works:
            armed[0] = True
            try:
                exec(source, {})
            except Compiled:
                return renamed(caught.pop(), name)
            except BaseException:
                pass  # a syntax error: compile() reports it under the program's name
            finally:
                armed[0] = False
        return compile(source, name, "exec")

    ours = (sys._getframe().f_code, compile_file.__code__)
    sys.addaudithook(hook)
    armed[0] = True
    try:
        exec(b"0", {})
    except Compiled:
        pass
    armed[0] = False
    hook_works = bool(caught) and caught.pop().co_filename == "<string>"
    if not hook_works:
        compile("", "<string>", "exec")  # pay the set-up now, before "R"
    # Every object alive now (the interpreter's start-up, this bootstrap) goes to gc's
    # permanent generation: the collection at the program's end then looks only at what
    # the program made (~0.8 ms less on every run's critical path).
    import gc
    gc.freeze()
    os.write(fd, b"R")
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    for item in b"".join(chunks).split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            os.environ[os.fsdecode(key)] = os.fsdecode(value)
    sys.argv[:] = [path]
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if site_paths is None:
        sys.path[0:1] = [wd, *extra]
    else:
        # the user's site-packages, as site adds it: when it exists, before the system's
        user = []
        home = os.environ.get("HOME")
        if home:
            version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
            user_site = os.path.join(home, ".local", "lib", version, "site-packages")
            if os.path.isdir(user_site):
                import site

                saved = sys.path[:]
                site.addsitedir(user_site)  # its .pth files too: the user's own
                user = [p for p in sys.path if p not in saved]
        sys.path[:] = [wd, *extra, *base, *user, *extra_site]
    sys.stdout.reconfigure(line_buffering=True)
    with open(path, "rb") as f:
        source = f.read()
    g = sys.modules["__main__"].__dict__
    builtins = g["__builtins__"]
    g.clear()
    g.update(__name__="__main__", __doc__=None, __package__=None, __loader__=None,
             __spec__=None, __file__=path, __cached__=None, __builtins__=builtins)
    status = 0
    try:
        exec(compile_file(source, path), g)
    except SystemExit as e:  # as the interpreter itself handles it
        if e.code is None:
            status = 0
        elif isinstance(e.code, int):
            status = e.code & 0xFF
        else:
            try:
                print(e.code, file=sys.stderr)
            except BaseException:
                pass
            status = 1
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code in ours:  # the bootstrap's frames
            tb = tb.tb_next
        e = e.with_traceback(tb)
        sys.excepthook(type(e), e, e.__traceback__)
        status = 1
    # What the interpreter's shutdown does that a program can observe, in its order:
    # wait for non-daemon threads, run atexit callbacks, drop __main__'s objects (an
    # open file is flushed and closed), collect garbage, flush stdout and stderr. Then
    # end at once, skipping the teardown of every module and object (~3 ms of CPU, as
    # much as the rest of a short program's run; daemon threads end as they would).
    try:
        threading = sys.modules.get("threading")
        if threading is not None and hasattr(threading, "_shutdown"):
            threading._shutdown()
        import atexit
        atexit._run_exitfuncs()
        g.clear()
        import gc
        gc.collect()
    except SystemExit as e:  # sys.exit() in an atexit callback or a thread join
        status = e.code & 0xFF if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120  # as the interpreter does when stdout cannot be flushed
    os._exit(status)
"""
_PY_BOOT = _PY_BOOT_DEF + "_deepexec_boot(%(fd)d, %(path)r, %(wd)r)\n"

#: Prints the marshalled code object of the source on stdin, compiled as ``-c`` would.
_PY_MARSHAL = (
    "import marshal, sys\n"
    "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.read(), '<string>', 'exec')))"
)

#: The python command line once the bootstrap is precompiled (see
#: :func:`precompile_bootstrap`): it loads the code object from a sealed memfd (the
#: marshalled code, then the source, used should the interpreter be replaced by
#: another version while the server runs), closes it and calls the bootstrap.
_PY_BOOT_FROM_FD = (
    "import marshal, os, sys\n"
    "d = os.pread(%(code_fd)d, %(size)d, 0)\n"
    "os.close(%(code_fd)d)\n"
    "if sys.implementation.cache_tag == %(tag)r:\n"
    "    exec(marshal.loads(d[:%(code_len)d]))\n"
    "    _deepexec_boot(%(fd)d, %(path)r, %(wd)r, %(site_paths)r)\n"
    "else:\n"
    "    import site\n"
    "    site.main()\n"
    "    sys.path.insert(0, '')\n"
    "    exec(d[%(code_len)d:].decode())\n"
    "    _deepexec_boot(%(fd)d, %(path)r, %(wd)r)\n"
)

_JS_BOOT = r"""
"use strict";
{
  const fs = require("fs");
  fs.writeSync(%(fd)d, "R");
  const data = fs.readFileSync(%(fd)d);
  fs.closeSync(%(fd)d);
  for (const item of data.toString("utf8").split("\0")) {
    if (!item) continue;
    const i = item.indexOf("=");
    process.env[item.slice(0, i)] = item.slice(i + 1);
  }
  process.argv[1] = %(path)s;
  require("module").runMain();
}
"""

_RB_BOOT = r"""
$stdout.sync = true
$stderr.sync = true
io = IO.new(%(fd)d)
io.write("R")
io.flush
data = io.read
io.close
data.split("\0").each do |item|
  next if item.empty?
  key, value = item.split("=", 2)
  ENV[key] = value || ""
end
$0 = %(path)s
begin
  load $0
rescue SystemExit, SignalException
  raise
rescue Exception => e
  bt = e.backtrace
  e.set_backtrace(bt.reject { |line| line.start_with?("-e:") }) if bt
  raise e
end
"""

_SH_BOOT = (
    "printf R >&%(fd)d; while IFS= read -r -d '' kv; do export \"$kv\"; done <&%(fd)d; "
    "exec %(fd)d<&-; exec %(bash)s %(path)s"
)

#: File name of the extra translation unit below, in ``/sandbox``.
C_INIT_NAME = ".deepexec_init.c"

#: Compiled with every C/C++ program: line-buffered stdout, as on a terminal.
C_INIT_SOURCE = (
    "#include <stdio.h>\n"
    "__attribute__((constructor)) static void deepexec_line_buffered_stdout(void)\n"
    "{ setvbuf(stdout, NULL, _IOLBF, 0); }\n"
)


def _js_string(value: str) -> str:
    import json

    return json.dumps(value)


def _rb_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sh_word(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _first_version(text: str) -> str:
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else text.strip().splitlines()[0] if text.strip() else "unknown"


@define(frozen=True, kw_only=True)
class LanguageSpec:
    """How to detect and run one language.

    ``binary`` is an absolute path to the real runtime (never a shim on ``PATH``).
    For interpreted languages, ``bootstrap(fd, program, workdir, memory)`` returns the
    argv that waits for the control data on ``fd`` and then runs ``program``
    (``memory`` is the byte limit, for runtimes with a heap limit of their own). For compiled
    languages, ``compile_argv(source, init_source, output)`` returns the compiler argv.
    """

    id: str
    name: str
    file_extension: str
    binary: str
    version_argv: tuple[str, ...]
    compiled: bool = False
    bootstrap: Callable[[int, str, str, int], list[str]] | None = None
    compile_argv: Callable[[str, str, str], list[str]] | None = None
    #: Extra address space V8-like runtimes reserve but never touch (see Limits.memory).
    uses_rlimit_data: bool = False
    #: Descriptors the bootstrap reads (and closes), to be inherited under the same
    #: numbers; owned by whoever made this spec (see :func:`precompile_bootstrap`).
    boot_fds: tuple[int, ...] = ()

    def info(self, version: str) -> LanguageInfo:
        """The public description of this language with a detected version."""
        return LanguageInfo(
            id=self.id, name=self.name, version=version, file_extension=self.file_extension
        )


def _python_boot(binary: str) -> Callable[[int, str, str, int], list[str]]:
    def argv(fd: int, path: str, wd: str, memory: int) -> list[str]:
        return [binary, "-c", _PY_BOOT % {"fd": fd, "path": path, "wd": wd}]

    return argv


def _python_boot_from_fd(
    binary: str, code_fd: int, code_len: int, size: int, tag: str, site_paths: list[str]
) -> Callable[[int, str, str, int], list[str]]:
    def argv(fd: int, path: str, wd: str, memory: int) -> list[str]:
        params = {
            "code_fd": code_fd,
            "code_len": code_len,
            "size": size,
            "tag": tag,
            "fd": fd,
            "path": path,
            "wd": wd,
            "site_paths": site_paths,
        }
        # -I -S: isolated (no PYTHON* variables, no user site at start) and without the
        # site module, whose visible effects the bootstrap reproduces (see _PY_BOOT_DEF)
        return [binary, "-I", "-S", "-c", _PY_BOOT_FROM_FD % params]

    return argv


def sealed_memfd(name: str, data: bytes) -> int:
    """A close-on-exec memfd holding ``data``, sealed: nobody can change it any more,
    whatever descriptor or mapping they get to it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def precompile_bootstrap(spec: LanguageSpec) -> LanguageSpec:
    """``spec`` with a bootstrap precompiled by its own interpreter, when it has one.

    Only python's: its interpreter marshals the compiled bootstrap once, here, into a
    sealed memfd shared by every sandbox (``boot_fds``; the caller closes it when done
    with the spec), so that an interpreter starting loads a code object instead of
    compiling the bootstrap from its command line. Behaviour is unchanged (same code,
    same file name and line numbers). On any failure ``spec`` is returned as it is.
    """
    if spec.id != "python" or spec.bootstrap is None:
        return spec
    try:
        proc = await asyncio.create_subprocess_exec(
            spec.binary,
            "-I",
            "-c",
            _PY_MARSHAL + "\nsys.stderr.write(repr((sys.implementation.cache_tag, sys.path)))",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"LANG": "C.UTF-8"},
        )
        out, err = await asyncio.wait_for(proc.communicate(_PY_BOOT_DEF.encode()), timeout=15)
    except (OSError, TimeoutError):
        return spec
    if proc.returncode != 0 or not out:
        return spec
    try:
        tag, site_paths = ast.literal_eval(err.decode("utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, TypeError):
        return spec
    if not isinstance(tag, str) or not all(isinstance(p, str) for p in site_paths):
        return spec
    data = out + _PY_BOOT_DEF.encode()
    try:
        fd = sealed_memfd("deepexec-python-boot", data)
    except OSError:
        return spec
    bootstrap = _python_boot_from_fd(spec.binary, fd, len(out), len(data), tag, site_paths)
    return attrs.evolve(spec, bootstrap=bootstrap, boot_fds=(fd,))


def _node_boot(binary: str) -> Callable[[int, str, str, int], list[str]]:
    def argv(fd: int, path: str, wd: str, memory: int) -> list[str]:
        heap_mib = max(16, memory * 3 // 4 // (1 << 20))
        return [
            binary,
            f"--max-old-space-size={heap_mib}",
            "-e",
            _JS_BOOT % {"fd": fd, "path": _js_string(path)},
        ]

    return argv


def _ruby_boot(binary: str) -> Callable[[int, str, str, int], list[str]]:
    def argv(fd: int, path: str, wd: str, memory: int) -> list[str]:
        return [binary, "-e", _RB_BOOT % {"fd": fd, "path": _rb_string(path)}]

    return argv


def _bash_boot(binary: str) -> Callable[[int, str, str, int], list[str]]:
    def argv(fd: int, path: str, wd: str, memory: int) -> list[str]:
        script = _SH_BOOT % {"fd": fd, "bash": _sh_word(binary), "path": _sh_word(path)}
        return [binary, "-c", script]

    return argv


def _gcc(binary: str, std: str) -> Callable[[str, str, str], list[str]]:
    def argv(source: str, init: str, output: str) -> list[str]:
        return [binary, f"-std={std}", "-O2", "-pipe", "-o", output, source, init, "-lm"]

    return argv


LANGUAGE_SPECS: tuple[LanguageSpec, ...] = (
    LanguageSpec(
        id="python",
        name="Python",
        file_extension="py",
        binary="/usr/bin/python3",
        version_argv=("/usr/bin/python3", "--version"),
        bootstrap=_python_boot("/usr/bin/python3"),
    ),
    LanguageSpec(
        id="javascript",
        name="JavaScript (Node.js)",
        file_extension="js",
        binary="/usr/bin/node",
        version_argv=("/usr/bin/node", "--version"),
        bootstrap=_node_boot("/usr/bin/node"),
        uses_rlimit_data=True,
    ),
    LanguageSpec(
        id="bash",
        name="Bash",
        file_extension="sh",
        binary="/usr/bin/bash",
        version_argv=("/usr/bin/bash", "--version"),
        bootstrap=_bash_boot("/usr/bin/bash"),
    ),
    LanguageSpec(
        id="ruby",
        name="Ruby",
        file_extension="rb",
        binary="/usr/bin/ruby",
        version_argv=("/usr/bin/ruby", "--version"),
        bootstrap=_ruby_boot("/usr/bin/ruby"),
    ),
    LanguageSpec(
        id="c",
        name="C (GCC)",
        file_extension="c",
        binary="/usr/bin/gcc",
        version_argv=("/usr/bin/gcc", "-dumpfullversion"),
        compiled=True,
        compile_argv=_gcc("/usr/bin/gcc", "gnu17"),
    ),
    LanguageSpec(
        id="cpp",
        name="C++ (GCC)",
        file_extension="cpp",
        binary="/usr/bin/g++",
        version_argv=("/usr/bin/g++", "-dumpfullversion"),
        compiled=True,
        compile_argv=_gcc("/usr/bin/g++", "gnu++17"),
    ),
)

#: Other names accepted for a language id.
ALIASES: dict[str, str] = {
    "py": "python",
    "python3": "python",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "sh": "bash",
    "shell": "bash",
    "rb": "ruby",
    "c++": "cpp",
    "cxx": "cpp",
}


def resolve_language(language: str) -> str:
    """Map a language name or alias (case-insensitive) to its canonical id."""
    key = language.strip().lower()
    return ALIASES.get(key, key)


async def _version_of(spec: LanguageSpec) -> str | None:
    if not os.access(spec.binary, os.X_OK):
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.version_argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=15)
    except (OSError, TimeoutError):
        return None
    if proc.returncode != 0:
        return None
    return _first_version(out.decode("utf-8", "replace"))


async def detect_languages(
    specs: Sequence[LanguageSpec] = LANGUAGE_SPECS, enabled: Sequence[str] | None = None
) -> dict[str, tuple[LanguageSpec, LanguageInfo]]:
    """Run each runtime's ``--version`` once; return the present ones by id."""
    chosen = [s for s in specs if enabled is None or s.id in enabled]
    versions = await asyncio.gather(*(_version_of(s) for s in chosen))
    return {s.id: (s, s.info(v)) for s, v in zip(chosen, versions, strict=True) if v is not None}
