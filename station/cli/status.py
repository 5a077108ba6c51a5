"""`station status`: what the running daemon says (GET /api/v1/status)."""

from __future__ import annotations

import json
from typing import Any

import click
import httpx

from station.cli.common import config_option, load
from station.config import StationConfig
from station.support import api_base


def api_get(config: StationConfig, path: str, **params: Any) -> Any:
    """GET `path` of the station's own API; ClickException when it does not answer 200."""
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


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def status(config_path: str | None, as_json: bool) -> None:
    """The station's status (the same data as GET /api/v1/status)."""
    data = api_get(load(config_path), "/api/v1/status")
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
