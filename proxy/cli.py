"""The `mcp-fastproxy` command: `serve` and `check`; every flag is also a PROXY_* variable."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Final

import click
from click.core import ParameterSource

from . import __version__
from .config import (
    CONFIG_ENV,
    SETTING_INFO,
    ConfigError,
    Origin,
    SettingInfo,
    Settings,
    load,
)

# Flags and variables reach proxy.config as the strings typed, which converts and checks
# them (and names the flag or variable when one is bad); the metavar still says what to type.
_METAVARS: Final[Mapping[type, str]] = {int: "INTEGER", float: "SECONDS"}


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


def load_settings(ctx: click.Context, config: str | None, values: dict[str, Any]) -> Settings:
    """Merge defaults < file < env < flags and validate; an error names the flag, the
    PROXY_* variable or the file and key the bad value came from."""
    given: dict[str, tuple[Origin, Any]] = {}
    for name, value in values.items():
        if value is None or value == ():
            continue
        source = ctx.get_parameter_source(name)
        if source is ParameterSource.COMMANDLINE:
            given[name] = ("flag", value)
        elif source is ParameterSource.ENVIRONMENT:
            given[name] = ("env", value)
    return load(config or None, given)


@click.group()
@click.version_option(__version__, prog_name="mcp-fastproxy")
def main() -> None:
    """mcp-fastproxy: a fast gateway and reverse proxy for MCP servers."""


@main.command()
@click.option("--config", "config", envvar=CONFIG_ENV, help="YAML configuration file.")
@_settings_options
@click.pass_context
def serve(ctx: click.Context, /, config: str | None, **values: Any) -> None:
    """Serve the gateway."""
    try:
        settings = load_settings(ctx, config, values)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    from .server import run  # noqa: PLC0415 - Granian is imported only to serve

    run(settings)


@main.command()
@click.argument("config", required=False)
@_settings_options
@click.pass_context
def check(ctx: click.Context, /, config: str | None, **values: Any) -> None:
    """Validate a configuration (file, PROXY_* variables and flags) without serving."""
    config = config or os.environ.get(CONFIG_ENV)
    try:
        settings = load_settings(ctx, config, values)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    for backend in settings.backends:
        prefix = f" (prefix {backend.prefix})" if backend.prefix else ""
        click.echo(f"backend {backend.name}{prefix}: {', '.join(backend.replicas)}")
    click.echo(
        f"ok: http://{settings.host}:{settings.port}{settings.path}, "
        f"{settings.workers} worker(s), session store {settings.store_kind}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
