"""What every command module shares: the --config option, loading it, the catalog, errors."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from station import accounts
from station.catalog import Catalog
from station.config import ConfigError, StationConfig, load_config
from station.quietlog import RepeatFilter

log = logging.getLogger("station")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="configuration file (default: $STATION_CONFIG)",
)


class StationError(click.ClickException):
    """Bad configuration: the message names the key and the file; exit status 2."""

    exit_code = 2


def setup_logging(verbose: bool) -> None:
    """Plain lines on stderr (journald adds the time), one storm of one error logged once."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    repeats = RepeatFilter()  # one storm of one error must not flood the journal
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)


def load(path: str | None) -> StationConfig:
    """The configuration of --config (else $STATION_CONFIG); StationError when it is bad."""
    try:
        config = load_config(path)
    except ConfigError as e:
        raise StationError(str(e)) from None
    accounts.configure(config.accounts)  # the PIN policy of `station users ...`
    return config


def open_catalog(config: StationConfig) -> Catalog:
    """The station's catalog, its schema brought up to date."""
    catalog = Catalog(config.database_path)
    catalog.migrate()
    return catalog


def config_file(path: str | None) -> Path:
    """The configuration file's path: --config, else $STATION_CONFIG."""
    path = path or os.environ.get("STATION_CONFIG")
    if not path:
        raise StationError("no configuration: pass --config FILE or set STATION_CONFIG")
    return Path(path)
