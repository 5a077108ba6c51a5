"""The `station` command (CONTRACT.md, "Commands"): the group, and one module per command.

Each module holds one command or one group of them and stays thin: it reads the
options, calls the station's own functions and prints. `run.py` is the
composition root of `station run` (and of `station demo`).
"""

from __future__ import annotations

import sys

import click

from station.cli import (
    alarms,
    audit,
    backup,
    catalog,
    demo,
    disks,
    files,
    integrity,
    ports,
    recorders,
    retention,
    run,
    sim,
    status,
    support,
    users,
)
from station.cli.common import StationError, config_option, setup_logging
from station.cli.run import run_station
from station.config import ConfigError

__all__ = ["StationError", "cli", "config_option", "main", "run_station"]


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def cli(verbose: bool) -> None:
    """Collection station for body-worn recorders."""
    setup_logging(verbose)


for command in (
    run.run,
    demo.demo,
    sim.sim,
    status.status,
    recorders.recorders,
    files.files,
    catalog.catalog,
    disks.disks,
    audit.audit,
    audit.events,
    integrity.integrity,
    retention.retention,
    alarms.alarms,
    users.users,
    ports.ports,
    support.diagnose_command,
    backup.config_group,
):
    cli.add_command(command)


def main() -> None:
    """The installed `station` command."""
    try:
        cli(standalone_mode=True)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)
