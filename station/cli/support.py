"""`station diagnose`: the support bundle (docs/deploy.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from station import support
from station.cli.common import StationError, config_option
from station.config import ConfigError


@click.command("diagnose")
@config_option
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="the bundle to write (default: station-support-<id>-<time>.tar.gz here)",
)
@click.option("--events", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--journal-lines", type=click.IntRange(1, 1_000_000), default=2000, show_default=True)
def diagnose_command(
    config_path: str | None, out_path: str | None, events: int, journal_lines: int
) -> None:
    """Write a support bundle: versions, settings without secrets, logs, alarms, disks, ports.

    Also when the configuration is invalid (the bundle then says what is wrong).
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one status request: not news
    try:
        config, invalid = support.load_for_diagnose(config_path)
    except ConfigError as e:
        raise StationError(str(e)) from None
    out = Path(out_path or support.default_name("support", config.station.id))
    try:
        written = support.diagnose(
            config, out, invalid=invalid, events=events, journal_lines=journal_lines
        )
    except OSError as e:
        raise click.ClickException(f"could not write {out}: {e}") from None
    if invalid is not None:
        click.echo(f"warning: {invalid.error}", err=True)
    click.echo(str(written))
