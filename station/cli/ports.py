"""`station ports show|learn`: the cabinet's docking ports and their USB topology."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click

from station.cli.common import config_option, load
from station.devices.portlearn import LearnError, learn, udev_events, write_port_map
from station.ingest.priority import LinkScheduler
from station.runtime import make_bus


@click.group()
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
    config = load(config_path)
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
    config = load(config_path)
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
