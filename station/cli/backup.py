"""`station config export|import`: back up and restore the station's settings."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from station import support
from station.cli.common import StationError, config_file, config_option
from station.config import ConfigError


@click.group("config")
def config_group() -> None:
    """Back up and restore the station's settings."""


@config_group.command("export")
@config_option
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="the backup to write (default: station-settings-<id>-<time>.tar.gz here; - for stdout)",
)
def config_export(config_path: str | None, out_path: str | None) -> None:
    """Back up the configuration file and the settings changed on the screen.

    The backup holds the API tokens and device passwords: keep it safe.
    """
    path = config_file(config_path)
    try:
        data, backup = support.export_settings(path)
    except ConfigError as e:
        raise StationError(str(e)) from None
    if error := backup.manifest.get("ui_settings_error"):
        click.echo(f"warning: the screen's settings are not in the backup: {error}", err=True)
    if out_path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    out = Path(out_path or support.default_name("settings", backup.config.station.id))
    try:
        support.write_private(out, data)
    except OSError as e:
        raise click.ClickException(f"could not write {out}: {e}") from None
    click.echo(str(out))


@config_group.command("import")
@click.argument("backup", type=click.Path(dir_okay=False, allow_dash=True))
@config_option
@click.option("--dry-run", is_flag=True, help="check the backup, show what would change")
@click.option("--by", default="cli", show_default=True, help="who restores it (system log)")
@click.option(
    "--force",
    is_flag=True,
    help="restore a file that is not signed with this station's backup.key (logged as forced)",
)
def config_import(
    backup: str, config_path: str | None, dry_run: bool, by: str, force: bool
) -> None:
    """Restore settings from BACKUP (from `config export`, or a bare TOML file; - for stdin).

    Nothing is written unless all of it is valid, and signed with this station's backup
    key (`backup.key` beside the configuration) or forced with --force.
    """
    path = config_file(config_path)
    try:
        data = sys.stdin.buffer.read() if backup == "-" else Path(backup).read_bytes()
    except OSError as e:
        raise StationError(f"{backup}: {e.strerror or e}") from None
    source = "<stdin>" if backup == "-" else backup
    try:
        result = support.import_settings(
            data, path, source=source, dry_run=dry_run, by=by, force=force
        )
    except ConfigError as e:
        raise StationError(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"could not write {path}: {e}") from None
    station_id = result.config.station.id
    verb = "would change" if dry_run else "changed"
    if result.untrusted:
        click.echo(
            f"warning: {result.untrusted}"
            + ("" if force else ": it would be refused without --force"),
            err=True,
        )
    if result.new_file:
        click.echo(f"{path}: new configuration for station {station_id}")
    else:
        click.echo(
            f"{path}: station {station_id}; {verb}: {', '.join(result.changed) or 'nothing'}"
        )
    if result.ui_settings is not None:
        click.echo(
            f"screen settings {'to restore' if dry_run else 'restored'}: "
            + (", ".join(sorted(result.ui_settings)) or "none changed from the file")
        )
    if dry_run:
        click.echo("dry run: nothing written")
        return
    if result.backup_path is not None:
        click.echo(f"the previous configuration is kept as {result.backup_path}")
    click.echo("restart the station to apply it: systemctl restart station")
