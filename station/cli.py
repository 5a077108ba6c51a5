"""The `station` command (CONTRACT.md, "Commands")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from station.config import ConfigError, StationConfig, load_config
from station.quietlog import RepeatFilter
from station.store import MARKER

log = logging.getLogger("station")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    repeats = RepeatFilter()  # one storm of one error must not flood the journal
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)


def _config(path: str | None) -> StationConfig:
    from station import accounts

    try:
        config = load_config(path)
    except ConfigError as e:
        raise StationError(str(e)) from None
    accounts.configure(config.accounts)  # the PIN policy of `station users ...`
    return config


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="configuration file (default: $STATION_CONFIG)",
)


class StationError(click.ClickException):
    """Bad configuration: the message names the key and the file; exit status 2."""

    exit_code = 2


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def cli(verbose: bool) -> None:
    """Collection station for body-worn recorders."""
    _setup_logging(verbose)


def run_station(config: StationConfig, extra: Any = None, path: str | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT; `extra(station, stop)` runs beside it.

    SIGHUP re-reads the configuration file `path` and applies what can change live
    (API tokens, registration mode, retention, thresholds): tokens rotate without a restart.
    """
    from station.runtime import Station
    from station.webserve import listeners

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        station = Station(config)
        if where := path or os.environ.get("STATION_CONFIG"):
            station.config_path = Path(where)

        def reload() -> None:
            try:
                new = load_config(path)
            except ConfigError as e:
                log.error("configuration not reloaded: %s", e)
                return
            for section in station.reload(new):
                log.warning("[%s] changed: it takes effect after a restart", section)
            log.info("configuration reloaded from %s", path)

        if path or os.environ.get("STATION_CONFIG"):
            loop.add_signal_handler(signal.SIGHUP, reload)
        side = asyncio.create_task(extra(station, stop)) if extra else None
        try:
            return await station.run(stop, lambda: listeners(station))
        finally:
            if side:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)

    if not asyncio.run(main()):
        log.error("the station stopped without being asked to: exit status 1")
        sys.exit(1)


@cli.command()
@config_option
def run(config_path: str | None) -> None:
    """Run the station daemon."""
    run_station(_config(config_path), path=config_path)


@cli.command()
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default="./station-data",
    show_default=True,
    help="folder for the demo's disks, bus and catalog",
)
@click.option("--port", type=int, default=8080, show_default=True, help="UI/API port")
@click.option(
    "--interval",
    type=float,
    default=6.0,
    show_default=True,
    help="seconds between recorder dockings",
)
def demo(data: str, port: int, interval: float) -> None:
    """A whole station with simulated recorders docking by themselves."""
    from station.demo import DEMO_ADMIN, DEMO_SECURITY, prepare_demo, recorder_traffic

    config, token = prepare_demo(Path(data).resolve(), port)
    click.echo(f"demo station: UI on http://127.0.0.1:{port}/  (data in {Path(data).resolve()})")
    click.echo(f"API token: {token}   config: {Path(data).resolve() / 'station.toml'}")
    click.echo(
        "file console: http://127.0.0.1:{}/ui/console  administrator {} PIN {}, "
        "security administrator (accounts) {} PIN {}".format(port, *DEMO_ADMIN, *DEMO_SECURITY)
    )
    run_station(config, lambda st, stop: recorder_traffic(st, stop, interval))


# --- the simulated bus -------------------------------------------------------------------


@cli.group()
def sim() -> None:
    """Simulated recorders on a simulated bus."""


@sim.command("dock")
@click.argument("port", type=click.IntRange(1, 32))
@click.option("--bus", type=click.Path(file_okay=False), required=True)
@click.option("--serial", default="A000001", show_default=True)
@click.option("--officer-no", default="000001", show_default=True)
@click.option("--officer-name", default="")
@click.option("--unit-no", default="")
@click.option("--unit-name", default="")
@click.option("--files", type=click.IntRange(0, 100000), default=5, show_default=True)
@click.option("--imp", type=click.IntRange(0, 100000), default=1, show_default=True)
@click.option(
    "--size-mb",
    type=click.FloatRange(0, 1e6),
    default=2.0,
    show_default=True,
    help="about this size for each video",
)
@click.option("--read-mb-s", type=click.FloatRange(0.01, 1e5), default=None)
@click.option("--password", default="000000", show_default=True)
@click.option("--battery", type=click.IntRange(0, 100), default=80, show_default=True)
@click.option("--clock-offset-s", type=float, default=0.0, show_default=True)
@click.option("--id-code", default="ZFY01", show_default=True)
@click.option("--seed", type=int, default=0)
@click.option(
    "--from",
    "from_path",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="dock a recorder folder kept aside by `sim undock` instead of a new one",
)
def sim_dock(port: int, bus: str, from_path: str | None, seed: int, **fields: Any) -> None:
    """Build a simulated recorder and dock it at PORT."""
    from station.sim.recorder import RecorderSpec, SimError, build_and_dock, dock

    try:
        if from_path:
            target = dock(Path(bus), port, Path(from_path))
        else:
            fields["battery_percent"] = fields.pop("battery")
            spec = RecorderSpec(**{k: v for k, v in fields.items()})
            target = build_and_dock(Path(bus), port, spec, seed)
    except SimError as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(target))


@sim.command("undock")
@click.argument("port", type=click.IntRange(1, 32))
@click.option("--bus", type=click.Path(file_okay=False), required=True)
def sim_undock(port: int, bus: str) -> None:
    """Unplug the recorder at PORT; print where its folder was kept."""
    from station.sim.recorder import SimError, undock

    try:
        click.echo(str(undock(Path(bus), port)))
    except SimError as e:
        raise click.ClickException(str(e)) from None


# --- status --------------------------------------------------------------------------------


def _api_get(config: StationConfig, path: str, **params: Any) -> Any:
    from station.support import api_base

    url = api_base(config) + path
    headers = {"Authorization": f"Bearer {config.api.tokens[0]}"} if config.api.tokens else {}
    try:
        # straight to the station, never through a proxy from the environment
        r = httpx.get(url, params=params, headers=headers, timeout=10, trust_env=False)
    except httpx.HTTPError as e:
        raise click.ClickException(f"the station daemon is not answering at {url}: {e}") from None
    if r.status_code != 200:
        raise click.ClickException(f"{url}: HTTP {r.status_code} {r.text[:200]}")
    return r.json()


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def status(config_path: str | None, as_json: bool) -> None:
    """The station's status (the same data as GET /api/v1/status)."""
    data = _api_get(_config(config_path), "/api/v1/status")
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    st = data["station"]
    click.echo(
        f"{st['id']} {st['name']}  {st['time']}  mode={st['mode']}  "
        f"network={'online' if data['network']['online'] else 'offline'}"
    )
    for d in data["disks"]:
        click.echo(
            f"  disk {d['path']}: {d['free_bytes'] / 1e9:.1f} GB free of "
            f"{d['total_bytes'] / 1e9:.1f} GB {'(active) ' if d['active'] else ''}"
            f"{d['health']}"
        )
    for s in data["slots"]:
        rec = s["recorder"] or {}
        click.echo(
            f"  port {s['port']}: {s['state']:<12} {rec.get('serial', ''):<8} "
            f"{rec.get('officer_no', ''):<8} {s['files_done']}/{s['files_total']} files "
            f"{s['error'] or ''}"
        )
    for a in data["alarms"]:
        click.echo(f"  ALARM {a['severity']} {a['code']}: {a['message']}")


# --- recorders and files -------------------------------------------------------------------


def _catalog(config: StationConfig) -> Any:
    from station.catalog import Catalog

    catalog = Catalog(config.database_path)
    catalog.migrate()
    return catalog


@cli.group()
def recorders() -> None:
    """Registered and pending recorders."""


@recorders.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def recorders_list(config_path: str | None, as_json: bool) -> None:
    """Every recorder the station has seen."""
    from station.daemon import list_recorders

    rows = list_recorders(_catalog(_config(config_path)))
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
    from station.registration import RegistrationError, approve

    catalog = _catalog(_config(config_path))
    try:
        r = approve(catalog, serial, officer_no=officer_no, by=by)
    except RegistrationError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{r.serial} registered")


@cli.group()
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
    from zoneinfo import ZoneInfo

    from station.daemon import list_files
    from station.retention import CentralCheck

    config = _config(config_path)
    tz = ZoneInfo(config.station.timezone) if config.station.timezone else None
    central = CentralCheck(  # the forwarder's own checks are the daemon's to know
        platform=config.platform.enabled and config.platform.upload_content,
        forward=config.forward.enabled,
    )
    data = list_files(
        _catalog(config),
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


@cli.group()
def catalog() -> None:
    """The catalog: rebuild it from the disks, verify it against them."""


@catalog.command("rebuild")
@config_option
@click.option("--no-hash", is_flag=True, help="trust the sidecars' hashes (faster)")
def catalog_rebuild(config_path: str | None, no_hash: bool) -> None:
    """Recreate the catalog from the disks alone (the old one is kept aside)."""
    from station.catalog import Catalog
    from station.catalog.db import CatalogBusy, lock_exclusive
    from station.recovery import move_aside, rebuild

    config = _config(config_path)
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
    from station.recovery import verify

    report = verify(_catalog(_config(config_path)))
    for line in report.lines():
        click.echo(line)
    click.echo(
        f"{report.checked} file(s) checked, {len(report.mismatched)} mismatched, "
        f"{len(report.missing)} missing"
    )
    if report.mismatched or report.missing:
        sys.exit(1)


@cli.group(invoke_without_command=True)
@config_option
@click.pass_context
def disks(ctx: click.Context, config_path: str | None) -> None:
    """The store disks: each one's identity (the UUID of its marker) and whether it is used."""
    if ctx.invoked_subcommand is not None:
        return
    from station.disks import DiskBook, DiskIdentityError, read_marker
    from station.store import Store

    config = _config(config_path)
    catalog = _catalog(config)
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
    from station.disks import DiskBook, DiskIdentityError
    from station.store import Store

    config = _config(config_path)
    disk = next((d for d in Store(config.store.disks, 0).disks if d.path == path), None)
    if disk is None:
        raise click.ClickException(f"{path} is not one of store.disks")
    try:
        ident = DiskBook(
            _catalog(config), config.station.id, folder_disks=config.store.folder_disks
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
    from station.disks import DiskBook, DiskIdentityError

    config = _config(config_path)
    try:
        n = DiskBook(_catalog(config), config.station.id).retire(disk_uuid, by)
    except DiskIdentityError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"disk {disk_uuid} retired: {n} file(s) marked lost with it")


@cli.group()
def audit() -> None:
    """The tamper-evident system log."""


@audit.command("verify")
@config_option
def audit_verify(config_path: str | None) -> None:
    """Check the event chain; exit 1 if an entry was edited, inserted or deleted."""
    from station.catalog.db import verify_chain
    from station.eventlog import verify_anchors

    config = _config(config_path)
    cat = _catalog(config)
    with cat.read() as s:
        problems = verify_chain(s)
    problems += verify_anchors(cat, config.store.disks, config.station.id)
    for p in problems:
        click.echo(p)
    if problems:
        sys.exit(1)
    if not any((Path(d) / MARKER).is_file() for d in config.store.disks):
        click.echo("no store disk in use here: the log's end was not checked against an anchor")
    click.echo("event chain intact")


@cli.group()
def integrity() -> None:
    """The installed code and configuration against the install-time manifest."""


@integrity.command("record")
@config_option
@click.option("--by", default="installer", show_default=True, help="who (system log)")
def integrity_record(config_path: str | None, by: str) -> None:
    """Record what is installed now as the station's known state (install.sh runs it; an
    administrator runs it after looking at an `integrity` alarm)."""
    from station import integrity as integ
    from station.catalog.db import append_event

    path = _config_file(config_path)
    manifest = integ.default_manifest()
    try:
        before = integ.check(manifest, path).summary()
    except integ.ManifestError:
        before = "no manifest before"
    written = integ.write_manifest(manifest, path)
    config = _config(str(path))
    if config.database_path.exists():
        cat = _catalog(config)
        with cat.write() as s:
            append_event(
                s, "integrity_recorded", f"{manifest}: {len(written['files'])} files and the "
                f"configuration recorded ({before or 'nothing differed'})", actor=by,
            )  # fmt: skip
    click.echo(f"{manifest}: {len(written['files'])} files and {path} recorded")


@integrity.command("check")
@config_option
def integrity_check(config_path: str | None) -> None:
    """Compare with the manifest; exit 1 if anything differs."""
    from station import integrity as integ

    try:
        found = integ.check(integ.default_manifest(), _config_file(config_path))
    except integ.ManifestError as e:
        raise click.ClickException(str(e)) from None
    if found:
        click.echo(found.summary())
        sys.exit(1)
    click.echo("installed code and configuration as recorded")


@cli.group()
def retention() -> None:
    """Retention: what expires, what is overwritten, what is kept."""


def _sweeper(config: StationConfig) -> Any:
    from station.disks import DiskBook
    from station.retention import DiskFacts, RetentionSweeper, retention_rules
    from station.store import Store

    catalog = _catalog(config)
    store = Store(config.store.disks, config.store.min_free_mb)
    book = DiskBook(catalog, config.station.id, folder_disks=config.store.folder_disks)
    disks = [DiskFacts(str(d.path), *d.usage()) for d in store.disks if book.identify(d) is None]
    return RetentionSweeper(catalog, retention_rules(config)), disks


@retention.command("preview")
@config_option
@click.option("--json", "as_json", is_flag=True)
def retention_preview(config_path: str | None, as_json: bool) -> None:
    """What the next sweep would delete, and how much space it frees."""
    from station.catalog import StoredFile

    sweeper, disks = _sweeper(_config(config_path))
    plan = sweeper.plan(disks)
    with sweeper.catalog.read() as s:

        def describe(ids: list[int]) -> list[dict[str, Any]]:
            out = []
            for i in ids:
                f = s.get(StoredFile, i)
                out.append(
                    {
                        "id": i,
                        "path": str(Path(f.disk) / f.rel_path),
                        "size": f.size,
                        "level": f.level,
                        "collected_at": f.collected_at.isoformat(),
                    }
                )
            return out

        data = {
            "expired": describe(plan.expired),
            "overwrite": describe(plan.overwrite),
            "review": describe(plan.review),
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
    from station.catalog.models import utcnow
    from station.clock import clock_synchronized
    from station.clockguard import ClockGuard

    config = _config(config_path)
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
    from station.catalog.models import utcnow
    from station.clockguard import ClockGuard

    config = _config(config_path)
    now = utcnow()
    ClockGuard(_catalog(config), config.retention.max_clock_jump_days).confirm(now, by=by)
    click.echo(f"clock confirmed: {now.isoformat(timespec='seconds')}; retention resumes")


@retention.command("untrusted")
@config_option
def retention_untrusted(config_path: str | None) -> None:
    """Files collected under a clock that could not be believed (never deleted by age)."""
    from sqlalchemy import select

    from station.catalog import StoredFile

    catalog = _catalog(_config(config_path))
    with catalog.read() as s:
        rows = s.scalars(
            select(StoredFile).where(
                StoredFile.clock_untrusted.is_(True), StoredFile.deleted_at.is_(None)
            )
        ).all()
        for f in rows:
            click.echo(f"{f.id:>7} {f.collected_at.isoformat()} {Path(f.disk) / f.rel_path}")
    click.echo(f"{len(rows)} file(s)")


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
    from station.annotations import AnnotationError, annotate

    try:
        annotate(
            _catalog(_config(config_path)), file_id, by=by, legal_hold=case_no or "", admin=True
        )
    except AnnotationError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"file {file_id}: " + (f"held for case {case_no}" if case_no else "released"))


@cli.command()
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
    since: Any,
    until: Any,
    text: str | None,
    limit: int,
    fmt: str,
) -> None:
    """Search and export the system log."""
    from station import eventlog

    items = eventlog.search(
        _catalog(_config(config_path)),
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


@cli.group()
def alarms() -> None:
    """Alarms: list, history, acknowledge."""


@alarms.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="the history, not only raised alarms")
def alarms_list(config_path: str | None, show_all: bool) -> None:
    """Raised alarms (or all, newest first)."""
    from station.alarms import AlarmBook

    for a in AlarmBook(_catalog(_config(config_path))).history(active_only=not show_all):
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
    from station.alarms import AlarmBook

    if not AlarmBook(_catalog(_config(config_path))).acknowledge(alarm_id, by):
        raise click.ClickException(f"no raised alarm {alarm_id}")
    click.echo(f"alarm {alarm_id} acknowledged by {by}")


@cli.group()
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
    from station.accounts import AccountError, create_user

    try:
        create_user(_catalog(_config(config_path)), officer_no, pin, role=role, name=name, by="cli")
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
    from station.accounts import AccountError, enroll_totp, totp_uri

    config = _config(config_path)
    try:
        secret = enroll_totp(_catalog(config), officer_no, by=by, remove=remove)
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
    from station.accounts import AccountError, update_user

    try:
        update_user(_catalog(_config(config_path)), officer_no, by="cli", unlock=True)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{officer_no} unlocked")


@cli.group()
def ports() -> None:
    """The cabinet's physical docking ports."""


def _hub_facts(hub: str) -> str:
    """What the kernel says of a hub named like "1-1" (its product and speed), if here."""
    base = Path("/sys/bus/usb/devices") / hub
    facts = []
    for name, unit in (("product", ""), ("speed", " Mbit/s")):
        with contextlib.suppress(OSError):
            facts.append((base / name).read_text().strip() + unit)
    return ", ".join(facts)


@ports.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable")
def ports_show(config_path: str | None, as_json: bool) -> None:
    """The dock's USB topology: which ports share which hub and root port (one link)."""
    from station.ratelimit import LinkScheduler
    from station.runtime import make_bus

    config = _config(config_path)
    links = LinkScheduler(make_bus(config).links()).links
    rows = []
    for port in range(1, config.bus.ports + 1):
        link = next((x for x in links if port in x.ports), None)
        rows.append(
            {
                "port": port,
                "usb_path": config.bus.port_map.get(port)
                if config.bus.kind == "udev"
                else "simulated",
                "link": link.name if link else None,
                "hub": link.hub if link else None,
                "shared_with": [p for p in link.ports if p != port] if link else [],
                "link_mb_s": link.mb_s if link else None,
            }
        )
    if as_json:
        click.echo(json.dumps({"ports": rows, "link_scheduling": config.bus.link_scheduling}))
        return
    click.echo(f"{'port':<5} {'USB path':<32} {'link (root port)':<28} {'shares with':<12} MB/s")
    for r in rows:
        shared = ",".join(map(str, r["shared_with"])) or "-"
        mb_s = f"{r['link_mb_s']:g}" if r["link_mb_s"] else "-"
        click.echo(
            f"{r['port']:<5} {r['usb_path'] or '(not mapped)':<32} {r['link'] or 'own':<28} "
            f"{shared:<12} {mb_s}"
        )
    for link in links:
        facts = "" if config.bus.kind != "udev" else _hub_facts(link.hub)
        ports_ = ", ".join(map(str, link.ports))
        click.echo(
            f"link {link.name}: ports {ports_} behind {link.hub}"
            + (f" ({facts})" if facts else "")
            + (f", {link.mb_s:g} MB/s in all" if link.mb_s else "")
        )
    state = "on" if config.bus.link_scheduling else "off (bus.link_scheduling)"
    click.echo(f"scheduling per shared link: {state}")


@ports.command("learn")
@config_option
@click.option(
    "--ports",
    "count",
    type=click.IntRange(1, 32),
    default=None,
    help="how many ports (default: bus.ports)",
)
@click.option("--write", is_flag=True, help="store the map in the configuration file")
@click.option(
    "--wait-s",
    type=float,
    default=10.0,
    show_default=True,
    help="how long each prompt waits, six times, before giving up",
)
def ports_learn(config_path: str | None, count: int | None, write: bool, wait_s: float) -> None:
    """Walk through the ports, plugging a device into each, and learn their USB paths."""
    from station.portlearn import LearnError, learn, udev_events, write_port_map

    config = _config(config_path)
    try:
        mapping = learn(count or config.bus.ports, udev_events(wait_s), click.echo)
    except LearnError as e:
        raise click.ClickException(str(e)) from None
    click.echo("[bus.port_map]")
    for port, path in mapping.items():
        click.echo(f'"{port}" = "{path}"')
    if write:
        path = Path(config_path or os.environ["STATION_CONFIG"])
        backup = write_port_map(path, mapping)
        click.echo(f"written to {path} (the old file is {backup}); restart the station")


# --- support and settings backup (docs/deploy.md) ----------------------------------------------


def _config_file(path: str | None) -> Path:
    """The configuration file's path: --config, else $STATION_CONFIG."""
    path = path or os.environ.get("STATION_CONFIG")
    if not path:
        raise StationError("no configuration: pass --config FILE or set STATION_CONFIG")
    return Path(path)


@cli.command("diagnose")
@config_option
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="the bundle to write (default: station-support-<id>-<time>.tar.gz here)",
)
@click.option("--events", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--journal-lines", type=click.IntRange(1, 1_000_000), default=2000, show_default=True)
def diagnose_command(
    config_path: str | None, out_path: str | None, events: int, journal_lines: int
) -> None:
    """Write a support bundle: versions, settings without secrets, logs, alarms, disks, ports.

    Also when the configuration is invalid (the bundle then says what is wrong).
    """
    from station import support

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one status request: not news
    try:
        config, invalid = support.load_for_diagnose(config_path)
    except ConfigError as e:
        raise StationError(str(e)) from None
    out = Path(out_path or support.default_name("support", config.station.id))
    try:
        written = support.diagnose(
            config, out, invalid=invalid, events=events, journal_lines=journal_lines
        )
    except OSError as e:
        raise click.ClickException(f"could not write {out}: {e}") from None
    if invalid is not None:
        click.echo(f"warning: {invalid.error}", err=True)
    click.echo(str(written))


@cli.group("config")
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
    from station import support

    path = _config_file(config_path)
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
    from station import support

    path = _config_file(config_path)
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


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)
