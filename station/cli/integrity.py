"""`station integrity record|check`: the installed code and configuration, as recorded."""

from __future__ import annotations

import sys

import click

from station.catalog.admin import log_event
from station.cli.common import config_file, config_option, load, open_catalog
from station.health import integrity as integ


@click.group()
def integrity() -> None:
    """The installed code and configuration against the install-time manifest."""


@integrity.command("record")
@config_option
@click.option("--by", default="installer", show_default=True, help="who (system log)")
def integrity_record(config_path: str | None, by: str) -> None:
    """Record what is installed now as the station's known state (install.sh runs it; an
    administrator runs it after looking at an `integrity` alarm)."""
    path = config_file(config_path)
    manifest = integ.default_manifest()
    try:
        before = integ.check(manifest, path).summary()
    except integ.ManifestError:
        before = "no manifest before"
    written = integ.write_manifest(manifest, path)
    config = load(str(path))
    if config.database_path.exists():
        log_event(
            open_catalog(config), "integrity_recorded", f"{manifest}: {len(written['files'])} "
            f"files and the configuration recorded ({before or 'nothing differed'})", actor=by,
        )  # fmt: skip
    click.echo(f"{manifest}: {len(written['files'])} files and {path} recorded")


@integrity.command("check")
@config_option
def integrity_check(config_path: str | None) -> None:
    """Compare with the manifest; exit 1 if anything differs."""
    try:
        found = integ.check(integ.default_manifest(), config_file(config_path))
    except integ.ManifestError as e:
        raise click.ClickException(str(e)) from None
    if found:
        click.echo(found.summary())
        sys.exit(1)
    click.echo("installed code and configuration as recorded")
