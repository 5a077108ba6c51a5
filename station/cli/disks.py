"""`station disks [adopt|retire]`: the store disks' identities and whether each is used."""

from __future__ import annotations

from pathlib import Path

import click

from station.cli.common import config_option, load, open_catalog
from station.store.disks import Store
from station.store.identity import DiskBook, DiskIdentityError, read_marker


@click.group(invoke_without_command=True)
@config_option
@click.pass_context
def disks(ctx: click.Context, config_path: str | None) -> None:
    """The store disks: each one's identity (the UUID of its marker) and whether it is used."""
    if ctx.invoked_subcommand is not None:
        return
    config = load(config_path)
    catalog = open_catalog(config)
    book = DiskBook(catalog, config.station.id, folder_disks=config.store.folder_disks)
    known = book.known()
    for d in Store(config.store.disks, config.store.min_free_mb).disks:
        try:
            marker = read_marker(d.path) if d.path.is_dir() else None
        except DiskIdentityError as e:
            marker, why = None, str(e)
        else:
            why = "" if marker and marker.uuid in known else "not taken into use"
        ident = marker.uuid if marker else "-"
        click.echo(f"{d.path}\t{ident}\t{why or 'in use'}")
    for ident, where in known.items():
        if where.startswith("(moved) "):  # replaced, or moved away from every path
            click.echo(f"-\t{ident}\tnot here (`station disks retire {ident}` if lost for good)")


@disks.command("adopt")
@click.argument("path", type=click.Path(path_type=Path))
@config_option
@click.option("--by", default="administrator", show_default=True)
def disks_adopt(path: Path, config_path: str | None, by: str) -> None:
    """Take a new or replaced disk into use at its configured PATH (logged)."""
    config = load(config_path)
    disk = next((d for d in Store(config.store.disks, 0).disks if d.path == path), None)
    if disk is None:
        raise click.ClickException(f"{path} is not one of store.disks")
    try:
        ident = DiskBook(
            open_catalog(config), config.station.id, folder_disks=config.store.folder_disks
        ).adopt(disk, by)
    except DiskIdentityError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{path}: taken into use as disk {ident}")


@disks.command("retire")
@click.argument("disk_uuid")
@config_option
@click.option("--by", default="administrator", show_default=True)
def disks_retire(disk_uuid: str, config_path: str | None, by: str) -> None:
    """A disk that is not here is lost for good: its files are marked lost (logged), and
    those still on their recorders are collected again at the next docking."""
    config = load(config_path)
    try:
        n = DiskBook(open_catalog(config), config.station.id).retire(disk_uuid, by)
    except DiskIdentityError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"disk {disk_uuid} retired: {n} file(s) marked lost with it")
