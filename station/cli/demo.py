"""`station demo`: a whole station with simulated recorders docking by themselves."""

from __future__ import annotations

from pathlib import Path

import click

from station.cli.run import run_station


@click.command()
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
    # PyAV and Pillow (generated footage) load only for the commands that make recorders
    from station.sim.demo import DEMO_ADMIN, DEMO_SECURITY, prepare_demo, recorder_traffic

    config, token = prepare_demo(Path(data).resolve(), port)
    click.echo(f"demo station: UI on http://127.0.0.1:{port}/  (data in {Path(data).resolve()})")
    click.echo(f"API token: {token}   config: {Path(data).resolve() / 'station.toml'}")
    click.echo(
        "file console: http://127.0.0.1:{}/ui/console  administrator {} PIN {}, "
        "security administrator (accounts) {} PIN {}".format(port, *DEMO_ADMIN, *DEMO_SECURITY)
    )
    run_station(config, lambda st, stop: recorder_traffic(st, stop, interval))
