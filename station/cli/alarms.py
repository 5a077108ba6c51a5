"""`station alarms list|ack`: raised alarms and their history."""

from __future__ import annotations

import click

from station.cli.common import config_option, load, open_catalog
from station.health.alarms import AlarmBook


@click.group()
def alarms() -> None:
    """Alarms: list, history, acknowledge."""


@alarms.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="the history, not only raised alarms")
def alarms_list(config_path: str | None, show_all: bool) -> None:
    """Raised alarms (or all, newest first)."""
    for a in AlarmBook(open_catalog(load(config_path))).history(active_only=not show_all):
        state = "cleared" if a.cleared_at else ("acknowledged" if a.acked_at else "raised")
        click.echo(
            f"{a.id:>5} {a.severity:<8} {a.code:<22} {state:<12} x{a.count} "
            f"since {a.since}  {a.message}"
        )


@alarms.command("ack")
@click.argument("alarm_id", type=int)
@config_option
@click.option("--by", required=True, help="who acknowledges")
def alarms_ack(alarm_id: int, config_path: str | None, by: str) -> None:
    """Acknowledge a raised alarm."""
    if not AlarmBook(open_catalog(load(config_path))).acknowledge(alarm_id, by):
        raise click.ClickException(f"no raised alarm {alarm_id}")
    click.echo(f"alarm {alarm_id} acknowledged by {by}")
