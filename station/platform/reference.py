"""A small reference platform: the central side of docs/platform-protocol.md, for tests and demos.

`python -m station.platform.reference --data DIR --port 9000 --token T --signing-key K.pem`

A real HTTP server (FastAPI under uvicorn) keeping what stations push in a SQLite file
(`DIR/platform.db`, synchronous=FULL) and the footage under `DIR/files/`: it registers
stations, marks them offline when their heartbeats stop, deduplicates pushed entries by
(station, kind, key) and answers `duplicate` for one it has, hashes uploaded footage
(SHA-256 and SM3) before saying it holds it, serves versioned configurations, and signs
the commands an operator queues with its Ed25519 key. `/` lists its stations. The
`/admin` routes are the operator's (and the tests').

Why one module of about 550 lines: a test server, kept whole so that it can be run (and
read) as the central side in one file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import html
import json
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from station.platform import signing
from station.platform.protocol import (
    PREFIX,
    CentralFile,
    Command,
    Commands,
    ConfigVersion,
    Heartbeat,
    HeartbeatAnswer,
    Push,
    PushAnswer,
    PushResult,
    Registered,
    Registration,
)

OFFLINE_AFTER_HEARTBEATS = 3  # missed heartbeats before a station shows offline

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stations (
    station_id TEXT PRIMARY KEY, platform_id TEXT NOT NULL, name TEXT, fingerprint TEXT,
    software_version TEXT, ports INTEGER, registered_at TEXT, last_heartbeat_at REAL,
    heartbeat_s REAL, heartbeat TEXT, config_applied INTEGER, config_report TEXT
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, station_id TEXT NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, received_at TEXT NOT NULL,
    UNIQUE (station_id, kind, key)
);
CREATE TABLE IF NOT EXISTS files (
    station_id TEXT NOT NULL, file_id INTEGER NOT NULL, key TEXT NOT NULL, size INTEGER,
    sha256 TEXT, sm3 TEXT, path TEXT, received_at TEXT, PRIMARY KEY (station_id, file_id)
);
CREATE TABLE IF NOT EXISTS configs (
    station_id TEXT NOT NULL, version INTEGER NOT NULL, settings TEXT NOT NULL,
    created_at TEXT, PRIMARY KEY (station_id, version)
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT NOT NULL, station_id TEXT NOT NULL, envelope TEXT NOT NULL, created_at TEXT,
    receipt TEXT, seq INTEGER PRIMARY KEY AUTOINCREMENT
);
"""


_BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Store:
    """The platform's database (one connection, serialised: this is a reference, not a farm)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        (data / "files").mkdir(exist_ok=True)
        self.db = sqlite3.connect(
            data / "platform.db", check_same_thread=False, isolation_level=None
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()


class NewConfig(BaseModel):
    settings: dict[str, dict[str, Any]]


class NewCommand(BaseModel):
    kind: str
    args: dict[str, Any] = {}


def create_app(
    data: Path,
    token: str,
    signing_key: Path | None = None,
    *,
    ingest_mb_s: float | None = None,
) -> FastAPI:
    """The reference platform's app. `ingest_mb_s` slows uploads down (a slow WAN link)."""
    store = Store(data)
    key = signing.load_private(signing_key) if signing_key else None
    app = FastAPI(
        title="Body-camera platform: station protocol (reference platform)",
        version="1",
        description="The central platform's side of the station link: see "
        "docs/platform-protocol.md. Every route needs `Authorization: Bearer <token>`.",
        openapi_url=f"{PREFIX}/openapi.json",
    )
    app.state.store = store

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if authorization != f"Bearer {token}":
            raise HTTPException(401, "a valid bearer token is needed")

    Auth = Depends(authorised)

    def station_row(station_id: str) -> sqlite3.Row:
        rows = store.rows("SELECT * FROM stations WHERE station_id = ?", station_id)
        if not rows:
            raise HTTPException(404, f"station {station_id} is not registered")
        return rows[0]

    def newest_config(station_id: str) -> ConfigVersion:
        rows = store.rows(
            "SELECT version, settings FROM configs WHERE station_id = ? "
            "ORDER BY version DESC LIMIT 1",
            station_id,
        )
        if not rows:
            return ConfigVersion(version=0)
        return ConfigVersion(version=rows[0]["version"], settings=json.loads(rows[0]["settings"]))

    def waiting(station_id: str) -> list[Command]:
        rows = store.rows(
            "SELECT envelope FROM commands WHERE station_id = ? AND receipt IS NULL ORDER BY seq",
            station_id,
        )
        return [Command.model_validate_json(r["envelope"]) for r in rows]

    # --- the stations' side ------------------------------------------------------------

    @app.post(f"{PREFIX}/stations/register", dependencies=[Auth], response_model=Registered)
    def register(reg: Registration) -> Registered:
        """Register (or register again): the answer names the station as the platform knows it."""
        with store.tx() as db:
            row = db.execute(
                "SELECT platform_id FROM stations WHERE station_id = ?", (reg.station_id,)
            ).fetchone()
            pid = row["platform_id"] if row else f"P-{uuid.uuid4().hex[:12]}"
            db.execute(
                "INSERT INTO stations (station_id, platform_id, name, fingerprint, "
                "software_version, ports, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (station_id) DO UPDATE SET name = excluded.name, "
                "fingerprint = excluded.fingerprint, software_version = "
                "excluded.software_version, ports = excluded.ports",
                (reg.station_id, pid, reg.name, reg.fingerprint, reg.software_version,
                 reg.ports, _now()),
            )  # fmt: skip
        return Registered(platform_id=pid, config_version=newest_config(reg.station_id).version)

    @app.post(
        f"{PREFIX}/stations/{{station_id}}/heartbeat",
        dependencies=[Auth],
        response_model=HeartbeatAnswer,
    )
    def heartbeat(station_id: str, hb: Heartbeat, interval: float = 30.0) -> HeartbeatAnswer:
        """The short status; `interval` is the station's heartbeat period (for offline marking)."""
        station_row(station_id)
        with store.tx() as db:
            db.execute(
                "UPDATE stations SET last_heartbeat_at = ?, heartbeat = ?, heartbeat_s = ?, "
                "software_version = ? WHERE station_id = ?",
                (time.time(), hb.model_dump_json(), interval, hb.software_version, station_id),
            )
        return HeartbeatAnswer(
            config_version=newest_config(station_id).version,
            commands_waiting=len(waiting(station_id)),
        )

    @app.post(
        f"{PREFIX}/stations/{{station_id}}/push", dependencies=[Auth], response_model=PushAnswer
    )
    def push(station_id: str, batch: Push) -> PushAnswer:
        """Entries of one kind, in order; each answered accepted, duplicate or rejected."""
        station_row(station_id)
        results = []
        with store.tx() as db:
            for e in batch.entries:
                if batch.kind == "file" and not e.body.get("sha256"):
                    results.append(PushResult(key=e.key, result="rejected", reason="no sha256"))
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO entries (station_id, kind, key, seq, body, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (station_id, batch.kind, e.key, e.seq, json.dumps(e.body), _now()),
                )
                if cur.rowcount == 0:
                    results.append(PushResult(key=e.key, result="duplicate"))
                    continue
                results.append(PushResult(key=e.key, result="accepted"))
                if batch.kind == "receipt":
                    db.execute(
                        "UPDATE commands SET receipt = ? WHERE id = ? AND station_id = ?",
                        (json.dumps(e.body), e.body.get("command_id"), station_id),
                    )
                elif batch.kind == "report":
                    applied = e.body.get("version") if e.body.get("result") == "applied" else None
                    db.execute(
                        "UPDATE stations SET config_report = ?, config_applied = "
                        "COALESCE(?, config_applied) WHERE station_id = ?",
                        (json.dumps(e.body), applied, station_id),
                    )
        return PushAnswer(results=results)

    def central_file(station_id: str, file_id: int) -> CentralFile | None:
        rows = store.rows(
            "SELECT * FROM files WHERE station_id = ? AND file_id = ?", station_id, file_id
        )
        if not rows:
            return None
        r = rows[0]
        return CentralFile(key=r["key"], size=r["size"], sha256=r["sha256"], sm3=r["sm3"])

    @app.get(
        f"{PREFIX}/stations/{{station_id}}/files/{{file_id}}",
        dependencies=[Auth],
        response_model=CentralFile,
    )
    def get_file(station_id: str, file_id: int) -> CentralFile:
        """What the platform holds of a file (404: nothing yet)."""
        found = central_file(station_id, file_id)
        if found is None:
            raise HTTPException(404, "no copy of this file")
        return found

    @app.put(
        f"{PREFIX}/stations/{{station_id}}/files/{{file_id}}/content",
        dependencies=[Auth],
        response_model=CentralFile,
        openapi_extra=_BINARY_BODY,
        responses={409: {"description": "the file's metadata was not pushed first"}},
    )
    async def put_content(station_id: str, file_id: int, request: Request) -> CentralFile:
        """The footage itself (the request body); the answer carries the platform's hashes."""
        key = f"{station_id}:{file_id}"
        if not store.rows(
            "SELECT 1 FROM entries WHERE station_id = ? AND kind = 'file' AND key = ?",
            station_id,
            key,
        ):
            raise HTTPException(409, "push the file's metadata first")
        folder = data / "files" / station_id
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{file_id}.bin"
        part = folder / f"{file_id}.part"
        sha, sm3, size = hashlib.sha256(), hashlib.new("sm3"), 0
        started = time.monotonic()
        with open(part, "wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
                sha.update(chunk)
                sm3.update(chunk)
                size += len(chunk)
                if ingest_mb_s:
                    import asyncio

                    ahead = size / (ingest_mb_s * 1e6) - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, final)
        got = CentralFile(key=key, size=size, sha256=sha.hexdigest(), sm3=sm3.hexdigest())
        with store.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (station_id, file_id, key, size, got.sha256, got.sm3, str(final), _now()),
            )
        return got

    @app.get(
        f"{PREFIX}/stations/{{station_id}}/config",
        dependencies=[Auth],
        response_model=ConfigVersion,
    )
    def get_config(station_id: str) -> ConfigVersion:
        """The newest configuration version for this station (version 0: none)."""
        station_row(station_id)
        return newest_config(station_id)

    @app.get(
        f"{PREFIX}/stations/{{station_id}}/commands",
        dependencies=[Auth],
        response_model=Commands,
    )
    def get_commands(station_id: str) -> Commands:
        """Signed commands not yet answered by a receipt."""
        station_row(station_id)
        return Commands(commands=waiting(station_id))

    @app.put(
        f"{PREFIX}/stations/{{station_id}}/bundles/{{command_id}}",
        dependencies=[Auth],
        openapi_extra=_BINARY_BODY,
    )
    async def put_bundle(station_id: str, command_id: str, request: Request) -> dict[str, Any]:
        """A support bundle a `support_bundle` command asked for."""
        body = await request.body()
        folder = data / "bundles" / station_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{Path(command_id).name}.tar.gz").write_bytes(body)
        return {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    # --- the operator's side ------------------------------------------------------------

    def station_list() -> list[dict[str, Any]]:
        out = []
        now = time.time()
        for r in store.rows("SELECT * FROM stations ORDER BY station_id"):
            hb = json.loads(r["heartbeat"]) if r["heartbeat"] else {}
            period = r["heartbeat_s"] or 30.0
            last = r["last_heartbeat_at"]
            counts = dict(
                (k, n)
                for k, n in store.rows(
                    "SELECT kind, count(*) FROM entries WHERE station_id = ? GROUP BY kind",
                    r["station_id"],
                )
            )
            files = store.rows(
                "SELECT count(*) AS n FROM files WHERE station_id = ?", r["station_id"]
            )[0]["n"]
            out.append(
                {
                    "station_id": r["station_id"],
                    "platform_id": r["platform_id"],
                    "name": r["name"],
                    "software_version": r["software_version"],
                    "fingerprint": r["fingerprint"],
                    "online": last is not None and now - last < OFFLINE_AFTER_HEARTBEATS * period,
                    "last_heartbeat_at": (
                        dt.datetime.fromtimestamp(last, dt.UTC).isoformat(timespec="seconds")
                        if last
                        else None
                    ),
                    "outbox_depth": sum((hb.get("outbox_depth") or {}).values()),
                    "entries": counts,
                    "files_held": files,
                    "config_applied": r["config_applied"],
                    "config_report": json.loads(r["config_report"]) if r["config_report"] else None,
                    "alarms": hb.get("alarms", []),
                }
            )
        return out

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        """The stations, for people."""
        rows = "".join(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class='{}'>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                html.escape(s["station_id"]),
                html.escape(s["platform_id"]),
                html.escape(s["name"] or ""),
                "on" if s["online"] else "off",
                "online" if s["online"] else "offline",
                html.escape(s["last_heartbeat_at"] or "never"),
                s["outbox_depth"],
                s["files_held"],
                s["config_applied"] if s["config_applied"] is not None else "-",
                html.escape(", ".join(s["alarms"]) or "-"),
            )
            for s in station_list()
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Stations</title>"
            "<meta http-equiv='refresh' content='10'><style>body{font-family:sans-serif}"
            "td,th{padding:4px 10px;border-bottom:1px solid #ccc}.on{color:#070}.off{color:#b00}"
            "</style></head><body><h1>Stations</h1><table><tr><th>Station</th>"
            "<th>Platform id</th><th>Name</th><th>State</th><th>Last heartbeat</th>"
            "<th>Outbox</th><th>Files held</th><th>Config</th><th>Alarms</th></tr>"
            f"{rows}</table></body></html>"
        )

    @app.get("/admin/stations", dependencies=[Auth])
    def admin_stations() -> dict[str, Any]:
        return {"stations": station_list()}

    @app.get("/admin/stations/{station_id}/entries", dependencies=[Auth])
    def admin_entries(station_id: str, kind: str | None = None) -> dict[str, Any]:
        """What a station pushed, in the order it arrived."""
        sql = "SELECT kind, key, seq, body, received_at FROM entries WHERE station_id = ?"
        args: list[Any] = [station_id]
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        rows = store.rows(sql + " ORDER BY id", *args)
        return {"entries": [{**dict(r), "body": json.loads(r["body"])} for r in rows]}

    @app.post("/admin/stations/{station_id}/config", dependencies=[Auth])
    def admin_config(station_id: str, new: NewConfig) -> dict[str, Any]:
        with store.tx() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(version), 0) AS v FROM configs WHERE station_id = ?",
                (station_id,),
            ).fetchone()
            version = row["v"] + 1
            db.execute(
                "INSERT INTO configs VALUES (?, ?, ?, ?)",
                (station_id, version, json.dumps(new.settings), _now()),
            )
        return {"version": version}

    @app.post("/admin/stations/{station_id}/commands", dependencies=[Auth])
    def admin_command(station_id: str, new: NewCommand) -> Command:
        """Queue a command, signed with the platform's key."""
        if key is None:
            raise HTTPException(409, "this platform has no signing key (--signing-key)")
        cmd = signing.sign(
            Command(
                id=uuid.uuid4().hex,
                station_id=station_id,
                kind=new.kind,
                args=new.args,
                issued_at=_now(),
            ),
            key,
        )
        return queue(cmd)

    @app.post("/admin/stations/{station_id}/commands/raw", dependencies=[Auth])
    def admin_raw_command(station_id: str, cmd: Command) -> Command:
        """Queue a command exactly as given (unsigned, replayed, foreign: to test stations)."""
        return queue(cmd.model_copy(update={"station_id": cmd.station_id or station_id}))

    def queue(cmd: Command) -> Command:
        with store.tx() as db:
            db.execute(
                "INSERT INTO commands (id, station_id, envelope, created_at) VALUES (?, ?, ?, ?)",
                (cmd.id, cmd.station_id, cmd.model_dump_json(), _now()),
            )
        return cmd

    @app.get("/admin/stations/{station_id}/commands", dependencies=[Auth])
    def admin_commands(station_id: str) -> dict[str, Any]:
        rows = store.rows(
            "SELECT envelope, receipt FROM commands WHERE station_id = ? ORDER BY seq", station_id
        )
        return {
            "commands": [
                {
                    "command": json.loads(r["envelope"]),
                    "receipt": json.loads(r["receipt"]) if r["receipt"] else None,
                }
                for r in rows
            ]
        }

    return app


def openapi_document() -> str:
    """The protocol's OpenAPI document (docs/platform-openapi.json), the stations' routes only."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        doc = create_app(Path(tmp), "x").openapi()
    doc["paths"] = {k: v for k, v in doc["paths"].items() if k.startswith(PREFIX)}
    doc["servers"] = [{"url": "https://platform.example.police"}]
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}]
    return json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m station.platform.reference", description=__doc__)
    p.add_argument("--data", type=Path, help="folder for platform.db and files")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--token", help="the bearer token stations present")
    p.add_argument("--signing-key", type=Path, help="Ed25519 private key (PEM) for commands")
    p.add_argument("--new-key", type=Path, metavar="PREFIX",
                   help="write PREFIX.key and PREFIX.pub (a fresh key pair) and exit")  # fmt: skip
    p.add_argument("--ingest-mb-s", type=float, help="slow uploads down to this rate")
    p.add_argument("--openapi", action="store_true", help="print the protocol's OpenAPI document")
    p.add_argument("--workers-log", default="warning")
    args = p.parse_args(argv)
    if args.new_key:
        signing.new_key(args.new_key.with_suffix(".key"), args.new_key.with_suffix(".pub"))
        return
    if args.openapi:
        sys.stdout.write(openapi_document())
        return
    if args.data is None or not args.token:
        p.error("--data and --token are needed to serve")
    app = create_app(args.data, args.token, args.signing_key, ingest_mb_s=args.ingest_mb_s)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.workers_log, access_log=False)


if __name__ == "__main__":
    main()
