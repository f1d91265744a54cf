"""Reload without a restart: what SIGHUP does, in the main process and in each worker.

The main process loads the configuration again from where it came (the file, the
``PROXY_*`` variables, the flags) and checks it (:class:`Reloads`). It is refused as a
whole, and the running one stays, when it fails validation or when it changes a setting
that cannot change while the gateway runs (the address, the workers, the store,
authentication…: every setting not marked ``live`` in :mod:`proxy.settings`); the log
line names why. A valid one becomes the next *generation*: it is written to the reload
file and every worker is sent :data:`RELOAD_SIGNAL`; each reads the file and applies it
(:meth:`proxy.app.ProxyApp.reconfigure`). Granian's own answer to SIGHUP, respawning
every worker, is never used: with the memory store every session would go with them.

The reload file also holds how many reloads were applied and refused (the main process
is its only writer), which ``/metrics`` shows from any worker; a worker that starts
later (Granian replaces one that died) starts from the file's generation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from .auth.settings import SettingsError
from .config import Settings
from .settings import SETTING_INFO

__all__ = (
    "RELOAD_FILE_ENV",
    "RELOAD_SIGNAL",
    "ReloadFile",
    "ReloadState",
    "Reloads",
    "changed_settings",
    "fixed_settings",
)

logger = logging.getLogger("proxy.server")

RELOAD_SIGNAL: signal.Signals = signal.SIGUSR2
"""What the main process sends each worker when a reloaded configuration is ready."""
RELOAD_FILE_ENV = "PROXY_RELOAD_FILE"
"""The variable that tells the workers where the reload file is."""


def changed_settings(running: Settings, new: Settings) -> list[str]:
    """The names of the settings whose value differs (never the values: some are secret
    references)."""
    return [
        f.name
        for f in dataclasses.fields(Settings)
        if getattr(running, f.name) != getattr(new, f.name)
    ]


def fixed_settings(changed: Iterable[str]) -> list[str]:
    """Those of `changed` that only a restart changes."""
    return [name for name in changed if not SETTING_INFO[name].live]


@dataclass(frozen=True, slots=True)
class ReloadState:
    """What the reload file holds."""

    generation: int
    """0 for the configuration the gateway started with, one more for each applied."""
    settings: str
    """That generation's settings, as ``PROXY_SETTINGS_JSON`` holds them."""
    applied: int = 0
    refused: int = 0


class ReloadFile:
    """The file through which the main process hands a configuration to its workers."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, state: ReloadState) -> None:
        """Replace the file whole (a worker never reads half of it)."""
        staging = self.path.with_suffix(".tmp")
        staging.write_bytes(orjson.dumps(dataclasses.asdict(state)))
        staging.chmod(0o600)  # it holds secret references, as the environment does
        os.replace(staging, self.path)

    def read(self) -> ReloadState | None:
        """The file's state (None when it is missing or not one)."""
        try:
            data = orjson.loads(self.path.read_bytes())
            return ReloadState(**data)
        except (OSError, orjson.JSONDecodeError, TypeError):
            return None


class Reloads:
    """The main process's side: checks each reloaded configuration, and writes those
    that apply to the reload file (the caller then signals every worker)."""

    def __init__(
        self, settings: Settings, load: Callable[[], Settings] | None, file: ReloadFile
    ) -> None:
        self.running = settings
        self.load = load
        self.file = file
        self.state = ReloadState(0, settings.to_env()["PROXY_SETTINGS_JSON"])
        file.write(self.state)

    def reload(self) -> Settings | None:
        """What SIGHUP does; the new settings when the workers are to apply them."""
        if self.load is None:
            logger.warning("reload: not available (the gateway was not started by the CLI)")
            return None
        try:
            new = self.load()
        except (SettingsError, OSError) as exc:
            self._refused(str(exc))
            return None
        changed = changed_settings(self.running, new)
        if not changed:
            logger.info("reload: the configuration is unchanged")
            return None
        fixed = fixed_settings(changed)
        if fixed:
            self._refused(
                f"{', '.join(fixed)} cannot change while the gateway runs (drain and start "
                "again to change them)"
            )
            return None
        text = new.to_env()["PROXY_SETTINGS_JSON"]
        self.state = dataclasses.replace(
            self.state,
            generation=self.state.generation + 1,
            settings=text,
            applied=self.state.applied + 1,
        )
        self.file.write(self.state)
        os.environ["PROXY_SETTINGS_JSON"] = text  # for a worker started from now on
        self.running = new
        logger.info(
            "reload: generation %d: %s changed; applying it in every worker",
            self.state.generation,
            ", ".join(changed),
        )
        return new

    def _refused(self, why: str) -> None:
        logger.error("reload refused, the running configuration stays: %s", why)
        self.state = dataclasses.replace(self.state, refused=self.state.refused + 1)
        with contextlib.suppress(OSError):
            self.file.write(self.state)


def render(state: ReloadState | None) -> bytes:
    """The reload figures for ``/metrics`` (the main process's, from the file)."""
    if state is None:
        return b""
    lines = [
        "# HELP proxy_config_generation The configuration's generation (0: as started; "
        "one more for each reload applied).",
        "# TYPE proxy_config_generation gauge",
        f"proxy_config_generation {state.generation}",
        "# HELP proxy_config_reloads_total Reloads (SIGHUP) by outcome: `applied`, or "
        "`refused` (the running configuration stays).",
        "# TYPE proxy_config_reloads_total counter",
        f'proxy_config_reloads_total{{outcome="applied"}} {state.applied}',
        f'proxy_config_reloads_total{{outcome="refused"}} {state.refused}',
    ]
    return ("\n".join(lines) + "\n").encode()
