"""The `mcp-fastproxy` command: `serve` and `check`; every flag is also a PROXY_* variable."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Final

import click
from click.core import ParameterSource

from . import __version__
from .auth.settings import SettingsError
from .auth.validate import check_secrets, describe as describe_access
from .config import (
    CONFIG_ENV,
    SETTING_INFO,
    ConfigError,
    Origin,
    SettingInfo,
    Settings,
    load,
)
from .stdio.registry import missing_commands

# Flags and variables reach proxy.config as the strings typed, which converts and checks
# them (and names the flag or variable when one is bad); the metavar still says what to type.
_METAVARS: Final[Mapping[type, str]] = {int: "INTEGER", float: "SECONDS", bool: "BOOLEAN"}


def _help(info: SettingInfo) -> str:
    """The --help text of a setting: its help, plain (no markdown), and its default."""
    text = info.help
    if info.see:
        text += f" See '{info.see}' in the README."
    default = info.shown_default or "none"
    extra = ("repeatable; " if info.repeatable else "") + f"env var: {info.env}; default: {default}"
    # click's own layout ("[env var: ...; default: ...]"), written here because the option's
    # default must stay None (see load_settings).
    return f"{text}  [{extra}]".replace("`", "")


def _settings_options(func: Any) -> Any:
    """One option per setting of proxy.config.SETTING_INFO, in its order."""
    for info in reversed(tuple(SETTING_INFO.values())):  # click stacks the last first
        func = click.option(
            info.flag,
            info.key,
            default=None,  # None: not given, so that its source (flag, env, file) is known
            envvar=info.env,
            multiple=info.repeatable,
            metavar=_METAVARS.get(type(info.default), "TEXT"),
            help=_help(info),
        )(func)
    return func


def load_settings(
    ctx: click.Context, config: str | None, values: dict[str, Any], command: tuple[str, ...] = ()
) -> Settings:
    """Merge defaults < file < env < flags and validate; an error names the flag, the
    PROXY_* variable or the file and key the bad value came from. `command`: what
    followed ``--`` (a local server to run: the ``command`` setting)."""
    given: dict[str, tuple[Origin, Any]] = {}
    if command:
        given["command"] = ("flag", list(command))
    for name, value in values.items():
        if value is None or value == ():
            continue
        source = ctx.get_parameter_source(name)
        if source is ParameterSource.COMMANDLINE:
            given[name] = ("flag", value)
        elif source is ParameterSource.ENVIRONMENT:
            given[name] = ("env", value)
    return load(config or None, given)


def _loaded(
    ctx: click.Context, config: str | None, values: dict[str, Any], command: tuple[str, ...]
) -> Settings:
    """The settings, validated, with every secret reference resolved (a missing one is
    named, never shown) and every local server's program found; a problem ends the
    command with its message."""
    try:
        settings = load_settings(ctx, config, values, command)
        check_secrets(settings)
    except (ConfigError, SettingsError) as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    missing = missing_commands(settings)
    if missing:
        raise click.ClickException("invalid configuration: " + "; ".join(missing))
    return settings


@click.group()
@click.version_option(__version__, prog_name="mcp-fastproxy")
def main() -> None:
    """mcp-fastproxy: a fast gateway and reverse proxy for MCP servers."""


_COMMAND_LINE = click.argument(
    "command_line", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND [ARGS]...]"
)


@main.command()
@click.option("--config", "config", envvar=CONFIG_ENV, help="YAML configuration file.")
@_settings_options
@_COMMAND_LINE
@click.pass_context
def serve(
    ctx: click.Context, /, config: str | None, command_line: tuple[str, ...], **values: Any
) -> None:
    """Serve the gateway. After --, a local MCP server (stdio) to run as its one backend:
    mcp-fastproxy serve -- npx -y @modelcontextprotocol/server-everything"""
    settings = _loaded(ctx, config, values, command_line)
    from .server import PortInUse, run  # noqa: PLC0415 - Granian is imported only to serve

    def reload() -> Settings:
        """The configuration again, from the same file, variables and flags (SIGHUP)."""
        again = load_settings(ctx, config, values, command_line)
        check_secrets(again)
        return again

    try:
        run(settings, reload)
    except PortInUse as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("config", required=False)
@click.option(
    "--probe",
    is_flag=True,
    help="Also connect to every replica and speak MCP to it: say which protocol eras it "
    "speaks, or what answers instead.",
)
@_settings_options
@click.pass_context
def check(ctx: click.Context, /, config: str | None, probe: bool, **values: Any) -> None:
    """Validate a configuration (file, PROXY_* variables and flags) without serving.

    Without --probe nothing is contacted: an unreachable upstream, a wrong path or a Redis
    that refuses the login are not found until the gateway starts (or with --probe, for
    the upstreams).
    """
    config = config or os.environ.get(CONFIG_ENV)
    settings = _loaded(ctx, config, values, ())
    for backend in settings.backends:
        prefix = f" (prefix {backend.prefix})" if backend.prefix else ""
        click.echo(f"backend {backend.name}{prefix}: {backend.describe()}")
    for line in describe_access(settings):
        click.echo(line)
    from .fastpath import IMPLEMENTATION  # noqa: PLC0415 - what this install runs

    scanner = "compiled" if IMPLEMENTATION == "c" else "the pure-Python twin (no C compiler?)"
    click.echo(
        f"ok: http://{settings.host}:{settings.port}{settings.path}, "
        f"{settings.workers} worker(s), session store {settings.store_kind}, "
        f"envelope scanner {scanner}"
    )
    if probe and not _probe_all(settings):
        raise click.exceptions.Exit(1)


def _probe_all(settings: Settings) -> bool:
    """Print what answers at every replica; False when any is not a working MCP server."""
    import asyncio  # noqa: PLC0415 - only with --probe

    from .probe import Probe, probe_eras  # noqa: PLC0415
    from .stdio.registry import Bridges  # noqa: PLC0415
    from .upstream.registry import Upstreams  # noqa: PLC0415

    async def run() -> list[tuple[str, Probe]]:
        bridges = Bridges(settings)  # a local server is started to be asked
        await bridges.open()
        upstreams = Upstreams(settings, local=bridges.urls, peers=bridges.peers)
        try:
            return [
                (backend.name, await probe_eras(replica, settings.connect_timeout))
                for backend in upstreams.backends.values()
                for replica in backend.replicas
            ]
        finally:
            await upstreams.close()
            await bridges.close()

    healthy = True
    for backend, found in asyncio.run(run()):
        if found.problem is not None:
            healthy = False
            click.echo(f"backend {backend}: {found.url}: {found.problem}")
        else:
            server = f" ({found.server})" if found.server else ""
            click.echo(f"backend {backend}: {found.url}: MCP{server}, {', '.join(found.eras)}")
    return healthy


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
