"""`station sim dock|undock`: simulated recorders on a simulated bus (CONTRACT.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.group()
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
    # PyAV and Pillow (generated footage) load only for the commands that make recorders
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
    # PyAV and Pillow (generated footage) load only for the commands that make recorders
    from station.sim.recorder import SimError, undock

    try:
        click.echo(str(undock(Path(bus), port)))
    except SimError as e:
        raise click.ClickException(str(e)) from None
