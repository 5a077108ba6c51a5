"""`station files list|hold|release`: collected files, and legal holds on them."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import click

from station.cli.common import config_option, load, open_catalog
from station.retention.annotations import AnnotationError, annotate
from station.retention.sweeper import CentralCheck
from station.search import api_files


@click.group()
def files() -> None:
    """Collected files."""


@files.command("list")
@config_option
@click.option("--officer-no", default=None)
@click.option("--serial", default=None)
@click.option("--important", type=bool, default=None)
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True)
def files_list(
    config_path: str | None,
    officer_no: str | None,
    serial: str | None,
    important: bool | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Collected files, newest first."""
    config = load(config_path)
    tz = ZoneInfo(config.station.timezone) if config.station.timezone else None
    central = CentralCheck(  # the forwarder's own checks are the daemon's to know
        platform=config.platform.enabled and config.platform.upload_content,
        forward=config.forward.enabled,
    )
    data = api_files(
        open_catalog(config),
        tz,
        central=central,
        officer_no=officer_no,
        serial=serial,
        important=important,
        limit=limit,
        offset=offset,
    )
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    for f in data["items"]:
        click.echo(
            f"{f['id']:>6} {f['officer_no']:<8} {f['serial']:<8} {f['size']:>12} "
            f"{'IMP ' if f['important'] else '    '}{f['sha256'][:12]} {f['stored_path']}"
        )
    click.echo(f"{data['total']} file(s)")


@files.command("hold")
@click.argument("file_id", type=int)
@click.argument("case_no")
@config_option
@click.option("--by", default="administrator", show_default=True)
def files_hold(file_id: int, case_no: str, config_path: str | None, by: str) -> None:
    """Freeze a file under a legal hold (case number): nothing deletes it."""
    _set_hold(file_id, case_no, config_path, by)


@files.command("release")
@click.argument("file_id", type=int)
@config_option
@click.option("--by", default="administrator", show_default=True)
def files_release(file_id: int, config_path: str | None, by: str) -> None:
    """Lift a legal hold."""
    _set_hold(file_id, None, config_path, by)


def _set_hold(file_id: int, case_no: str | None, config_path: str | None, by: str) -> None:
    try:
        annotate(
            open_catalog(load(config_path)), file_id, by=by, legal_hold=case_no or "", admin=True
        )
    except AnnotationError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"file {file_id}: " + (f"held for case {case_no}" if case_no else "released"))
