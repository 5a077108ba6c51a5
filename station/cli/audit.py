"""`station audit verify` and `station events`: the tamper-evident system log."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click

from station import eventlog
from station.catalog.admin import verify_event_chain
from station.cli.common import config_option, load, open_catalog
from station.store.disks import MARKER


@click.group()
def audit() -> None:
    """The tamper-evident system log."""


@audit.command("verify")
@config_option
def audit_verify(config_path: str | None) -> None:
    """Check the event chain; exit 1 if an entry was edited, inserted or deleted."""
    config = load(config_path)
    cat = open_catalog(config)
    problems = verify_event_chain(cat)
    problems += eventlog.verify_anchors(cat, config.store.disks, config.station.id)
    for p in problems:
        click.echo(p)
    if problems:
        sys.exit(1)
    if not any((Path(d) / MARKER).is_file() for d in config.store.disks):
        click.echo("no store disk in use here: the log's end was not checked against an anchor")
    click.echo("event chain intact")


@click.command()
@config_option
@click.option("--after", type=int, default=0, help="only events after this id")
@click.option("--kind", default=None, help="event kinds, comma-separated")
@click.option("--serial", default=None)
@click.option("--officer-no", default=None)
@click.option("--actor", default=None)
@click.option("--since", type=click.DateTime(), default=None)
@click.option("--until", type=click.DateTime(), default=None)
@click.option("--text", default=None, help="words in the message")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text")
def events(
    config_path: str | None,
    after: int,
    kind: str | None,
    serial: str | None,
    officer_no: str | None,
    actor: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    text: str | None,
    limit: int,
    fmt: str,
) -> None:
    """Search and export the system log."""
    items = eventlog.search(
        open_catalog(load(config_path)),
        after=after,
        kind=kind,
        serial=serial,
        officer_no=officer_no,
        actor=actor,
        text=text,
        limit=limit,
        since=since.astimezone() if since else None,
        until=until.astimezone() if until else None,
    )
    if fmt == "json":
        click.echo(json.dumps(items, ensure_ascii=False, indent=2))
    elif fmt == "csv":
        click.echo(eventlog.to_csv(items), nl=False)
    else:
        for e in items:
            where = " ".join(
                f"{k}={e[k]}"
                for k in ("port", "serial", "officer_no", "file_id")
                if e[k] is not None
            )
            click.echo(
                f"{e['id']:>7} {e['at']} {e['kind']:<22} {e['actor']:<10} {where} {e['message']}"
            )
