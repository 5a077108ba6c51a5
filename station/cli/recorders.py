"""`station recorders list|approve`: registered and pending recorders (S36)."""

from __future__ import annotations

import json

import click

from station.cli.common import config_option, load, open_catalog
from station.ingest.registration import RegistrationError, approve
from station.search import list_recorders


@click.group()
def recorders() -> None:
    """Registered and pending recorders."""


@recorders.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def recorders_list(config_path: str | None, as_json: bool) -> None:
    """Every recorder the station has seen."""
    rows = list_recorders(open_catalog(load(config_path)))
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['serial']:<10} {r['status']:<11} officer={r['officer_no'] or '-':<8} "
            f"reports={r['reported'].get('officer_no', '-'):<8} port={r['last_port']} "
            f"seen={r['last_seen_at']}"
        )


@recorders.command("approve")
@click.argument("serial")
@config_option
@click.option(
    "--officer-no",
    default=None,
    help="bind to this officer (default: the one the recorder reports)",
)
@click.option("--by", default="administrator", show_default=True, help="who approves")
def recorders_approve(
    serial: str, config_path: str | None, officer_no: str | None, by: str
) -> None:
    """Register a recorder held in manual mode (S36)."""
    catalog = open_catalog(load(config_path))
    try:
        r = approve(catalog, serial, officer_no=officer_no, by=by)
    except RegistrationError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{r.serial} registered")
