"""``deepexec`` command line: ``deepexec serve`` runs the reference server."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from . import __version__
from .settings import ServerSettings, SettingsError, load_settings

log = logging.getLogger("deepexec.server")


def _sandbox_settings(settings: ServerSettings) -> Any:
    from .sandbox import SandboxSettings

    kwargs: dict[str, Any] = {
        "backend": settings.sandbox,
        "allow_insecure": settings.allow_insecure,
    }
    if settings.warm_pool is not None:
        kwargs["warm_pool_size"] = settings.warm_pool
    e2b_key = os.environ.get("DEEPEXEC_SERVER_E2B_KEY")
    if e2b_key:
        kwargs["e2b_api_key"] = e2b_key
    return SandboxSettings(**kwargs)


def build_app(settings: ServerSettings) -> web.Application:
    """The application with the executor and providers the settings call for."""
    from .app import create_app
    from .providers.registry import providers_from_env
    from .sandbox import create_executor

    sandbox_settings = _sandbox_settings(settings)
    return create_app(
        settings,
        executor=create_executor(sandbox_settings),
        sandbox_settings=sandbox_settings,
        providers=providers_from_env(),
    )


class StartupError(Exception):
    """The server could not start; the message says why (shown without a traceback)."""


def _check_state_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise StartupError(f"cannot use the state dir {str(path)!r}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"cannot use the state dir {str(path)!r}: {exc.strerror or exc}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"cannot use the state dir {str(path)!r}: not writable")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one (at most 65536): every open event
    stream holds a connection, and every running sandbox a handful of pipes, so the usual
    soft 1024 could run out before the machine does. Sandboxes get their own, lower limit
    (``max_open_files``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT; then stop accepting, let running jobs finish within
    the grace period, re-queue the rest, and exit. Raises :class:`StartupError` when it can
    not start (state dir, sandbox, address), having stopped whatever it had started."""
    from .sandbox import SandboxError

    _check_state_dir(settings.state_dir)
    _raise_open_files_limit()
    app = build_app(settings)
    # a client that leaves cancels its request's handler: a direct execution's sandbox is
    # killed, a generation's provider stream closed (a job goes on: it is not the request's)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace,
        handler_cancellation=True,
    )
    try:
        await runner.setup()
    except (SandboxError, OSError) as exc:
        await runner.cleanup()
        raise StartupError(f"cannot start: {exc}") from None
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
    port = settings.port
    for address in runner.addresses:
        port = address[1]
        break
    if not settings.tokens and not _is_loopback(settings.host):
        log.warning(
            "listening on %s without API tokens: anyone who can reach this address can run "
            "code here (set --token, --tokens-file or DEEPEXEC_SERVER_TOKENS)",
            settings.host,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # only now: whoever reads this line may send SIGTERM at once
    print(f"DeepExec server {__version__} listening on http://{settings.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


@click.group()
@click.version_option(__version__, prog_name="deepexec")
def main() -> None:
    """DeepExec: sandboxed code execution and LLM text generation over the MCP protocol."""


@main.command("serve")
@click.option("--host", default=None, help="Bind address [DEEPEXEC_SERVER_HOST; 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port, 0 = any free [8787].")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Job database and session dirs [./.deepexec-state].",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    help="An API token clients must send as Bearer (repeatable).",
)
@click.option(
    "--tokens-file",
    type=click.Path(path_type=Path),
    default=None,
    help="A file of API tokens, one per line (keeps them out of ps).",
)
@click.option("--concurrency", type=int, default=None, help="Jobs run at once [cores].")
@click.option(
    "--sandbox",
    type=click.Choice(["local", "e2b"]),
    default=None,
    help="Execution backend [local].",
)
@click.option(
    "--allow-insecure",
    is_flag=True,
    default=None,
    help="Run code WITHOUT a sandbox where bubblewrap is unavailable.",
)
@click.option("--warm-pool", type=int, default=None, help="Warm sandboxes per language.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def serve_command(log_level: str, tokens: tuple[str, ...], **options: Any) -> None:
    """Run the reference server (settings: options > DEEPEXEC_SERVER_* > defaults)."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if tokens:
        options["tokens"] = ",".join(tokens)
    try:
        settings = load_settings(options)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
