"""`station catalog rebuild|verify`: the catalog against the disks (docs/recovery)."""

from __future__ import annotations

import sys

import click

from station.catalog import Catalog
from station.catalog.db import CatalogBusy, lock_exclusive
from station.cli.common import config_option, load, open_catalog
from station.store.recovery import move_aside, rebuild, verify


@click.group()
def catalog() -> None:
    """The catalog: rebuild it from the disks, verify it against them."""


@catalog.command("rebuild")
@config_option
@click.option("--no-hash", is_flag=True, help="trust the sidecars' hashes (faster)")
def catalog_rebuild(config_path: str | None, no_hash: bool) -> None:
    """Recreate the catalog from the disks alone (the old one is kept aside)."""
    config = load(config_path)
    path = config.database_path
    try:
        lock_exclusive(path)  # held until this command ends
    except CatalogBusy as e:
        raise click.ClickException(str(e)) from None
    if path.exists():
        click.echo(f"old catalog kept as {move_aside(path)}")
    cat = Catalog(path)
    cat.migrate()
    report = rebuild(cat, list(config.store.disks), check_hashes=not no_hash)
    for line in report.lines():
        if not line.startswith("adopted"):
            click.echo(line)
    click.echo(f"{len(report.adopted)} file(s) catalogued from the disks")
    if report.quarantined or report.mismatched or report.errors:
        sys.exit(1)


@catalog.command("verify")
@config_option
def catalog_verify(config_path: str | None) -> None:
    """Re-hash every stored file against the catalog; exit 1 on any mismatch."""
    report = verify(open_catalog(load(config_path)))
    for line in report.lines():
        click.echo(line)
    click.echo(
        f"{report.checked} file(s) checked, {len(report.mismatched)} mismatched, "
        f"{len(report.missing)} missing"
    )
    if report.mismatched or report.missing:
        sys.exit(1)
