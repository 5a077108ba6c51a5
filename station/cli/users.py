"""`station users add|totp|unlock`: accounts for the touchscreen and browsers."""

from __future__ import annotations

import click

from station.accounts import AccountError, create_user, enroll_totp, totp_uri, update_user
from station.cli.common import config_option, load, open_catalog


@click.group()
def users() -> None:
    """Accounts for the touchscreen and browsers (officer, administrator, auditor)."""


@users.command("add")
@click.argument("officer_no")
@config_option
@click.option(
    "--role",
    type=click.Choice(["officer", "administrator", "auditor", "security_admin", "audit_admin"]),
    default="officer",
    show_default=True,
)
@click.option("--name", default="", help="the person's name")
@click.password_option("--pin", prompt="PIN or password", help="at least 6 characters")
def users_add(officer_no: str, config_path: str | None, role: str, name: str, pin: str) -> None:
    """Create a user (the first ones here: --role administrator, --role security_admin
    (manages accounts), --role audit_admin (reads the log); one role per person)."""
    try:
        create_user(
            open_catalog(load(config_path)), officer_no, pin, role=role, name=name, by="cli"
        )
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{officer_no} ({role}) added")


@users.command("totp")
@click.argument("officer_no")
@config_option
@click.option("--remove", is_flag=True, help="take the account's second factor away")
@click.option("--by", default="administrator", show_default=True, help="who (system log)")
def users_totp(officer_no: str, config_path: str | None, remove: bool, by: str) -> None:
    """Give an account a TOTP second factor (RFC 6238): prints the otpauth:// URI and the
    secret for the person's authenticator app, on the station itself (logged)."""
    config = load(config_path)
    try:
        secret = enroll_totp(open_catalog(config), officer_no, by=by, remove=remove)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    if remove:
        click.echo(f"{officer_no}: second factor removed")
        return
    click.echo(f"{officer_no}: second factor enrolled; add it to the authenticator app:")
    click.echo(f"  {totp_uri(secret, officer_no, config.station.id)}")
    click.echo(f"  secret (typed in): {secret}")


@users.command("unlock")
@click.argument("officer_no")
@config_option
def users_unlock(officer_no: str, config_path: str | None) -> None:
    """End an account's lockout, from every source (logged)."""
    try:
        update_user(open_catalog(load(config_path)), officer_no, by="cli", unlock=True)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{officer_no} unlocked")
