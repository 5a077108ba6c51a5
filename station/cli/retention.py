"""`station retention preview|sweep|resume|untrusted`: what expires, what is kept."""

from __future__ import annotations

import json
from typing import Any

import click

from station.catalog import Catalog
from station.catalog.admin import FileBrief, describe_files, untrusted_files
from station.catalog.models import utcnow
from station.cli.common import config_option, load, open_catalog
from station.config import StationConfig
from station.health.clock import clock_synchronized
from station.health.clockguard import ClockGuard
from station.retention.sweeper import DiskFacts, RetentionSweeper, retention_rules
from station.store.disks import Store
from station.store.identity import DiskBook


@click.group()
def retention() -> None:
    """Retention: what expires, what is overwritten, what is kept."""


def _sweeper(config: StationConfig) -> tuple[RetentionSweeper, list[DiskFacts]]:
    """The sweeper of this station, and the facts of its disks that are in use."""
    catalog = open_catalog(config)
    store = Store(config.store.disks, config.store.min_free_mb)
    book = DiskBook(catalog, config.station.id, folder_disks=config.store.folder_disks)
    disks = [DiskFacts(str(d.path), *d.usage()) for d in store.disks if book.identify(d) is None]
    return RetentionSweeper(catalog, retention_rules(config)), disks


def _describe(catalog: Catalog, ids: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "id": f.id,
            "path": str(f.path),
            "size": f.size,
            "level": f.level,
            "collected_at": f.collected_at.isoformat(),
        }
        for f in describe_files(catalog, ids)
    ]


@retention.command("preview")
@config_option
@click.option("--json", "as_json", is_flag=True)
def retention_preview(config_path: str | None, as_json: bool) -> None:
    """What the next sweep would delete, and how much space it frees."""
    sweeper, disks = _sweeper(load(config_path))
    plan = sweeper.plan(disks)
    data = {
        "expired": _describe(sweeper.catalog, plan.expired),
        "overwrite": _describe(sweeper.catalog, plan.overwrite),
        "review": _describe(sweeper.catalog, plan.review),
        "freed_bytes": plan.freed_bytes,
        "cannot_make_room": plan.cannot_make_room,
    }
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    for key, title in (
        ("expired", "expired, to delete"),
        ("overwrite", "oldest, to overwrite"),
        ("review", "protected and past their period: for review, kept"),
    ):
        click.echo(f"{title}: {len(data[key])}")
        for f in data[key]:
            click.echo(
                f"  {f['id']:>7} {f['level']:<9} {f['size']:>12} {f['collected_at']} {f['path']}"
            )
    click.echo(f"frees {plan.freed_bytes / 1e6:.1f} MB")
    for d in plan.cannot_make_room:
        click.echo(f"cannot make room on {d}: only protected files are left")


@retention.command("sweep")
@config_option
def retention_sweep(config_path: str | None) -> None:
    """Run a sweep now (the daemon also sweeps on its own)."""
    config = load(config_path)
    sweeper, disks = _sweeper(config)
    guard = ClockGuard(sweeper.catalog, config.retention.max_clock_jump_days)
    synced = clock_synchronized()
    guard.check_step(utcnow(), synced)  # files stamped before a clock step are marked first
    paused = guard.sweep_pause(utcnow(), synced)
    if paused:
        click.echo(f"deletion by age paused: {paused}")
    plan = sweeper.sweep(disks, paused=paused)
    click.echo(
        f"deleted {len(plan.delete)} file(s), freed {plan.freed_bytes / 1e6:.1f} MB; "
        f"{len(plan.review)} protected file(s) past their period kept for review"
    )


@retention.command("resume")
@config_option
@click.option("--by", default="administrator", show_default=True)
def retention_resume(config_path: str | None, by: str) -> None:
    """Confirm the station clock is right: deletion by age goes on from the time it shows."""
    config = load(config_path)
    now = utcnow()
    ClockGuard(open_catalog(config), config.retention.max_clock_jump_days).confirm(now, by=by)
    click.echo(f"clock confirmed: {now.isoformat(timespec='seconds')}; retention resumes")


@retention.command("untrusted")
@config_option
def retention_untrusted(config_path: str | None) -> None:
    """Files collected under a clock that could not be believed (never deleted by age)."""
    rows: list[FileBrief] = untrusted_files(open_catalog(load(config_path)))
    for f in rows:
        click.echo(f"{f.id:>7} {f.collected_at.isoformat()} {f.path}")
    click.echo(f"{len(rows)} file(s)")
