"""Footage in the browser: view, play, read, download one file or a zip of several.

Every access to footage is an event in the system log: `file_viewed` (once per
session, file and way of viewing within 10 minutes, so the player's range
requests are not each an event) and `file_downloaded` / `files_downloaded`
(every time). A zip carries `MANIFEST.sha256` (check with `sha256sum -c`) and
`manifest.json`; the hashes in them are computed from the bytes as they are
put in the zip and compared with the catalog's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from station.api import (
    TEXT_EXTS,
    Account,
    StationAPI,
    StoredRef,
    browser_type,
    ext_of,
    read_text,
    safe_component,
)
from station.errors import NoSuchFile
from station.web.auth import FootageUser, csrf_protect
from station.web.deps import UI, ApiDep, UIContext
from station.web.i18n import N_
from station.web.schemas import Id
from station.web.ui import scope_of

TICKET_S = 120
MAX_ZIP_FILES = 500
CHUNK = 1 << 20


class ZipBody(BaseModel):
    ids: list[Id] = Field(min_length=1, max_length=MAX_ZIP_FILES)


def _ref(api: StationAPI, user: Account, file_id: int) -> StoredRef:
    refs = api.stored_refs([file_id], scope_officer_no=scope_of(user))
    if not refs:
        raise NoSuchFile(f"no stored file {file_id}")
    ref = refs[0]
    if not ref.path.is_file():
        raise HTTPException(410, N_("The stored file is missing from its disk"))
    return ref


def _viewed(
    api: StationAPI, ctx: UIContext, user: Account, request: Request, ref: StoredRef, how: str
) -> None:
    who = request.cookies.get("station_session", user.officer_no)
    if ctx.first_access(who, ref.id, how):
        api.audit(
            "file_viewed",
            f"{ref.name} ({how})",
            actor=user.officer_no,
            file_id=ref.id,
            officer_no=ref.officer_no,
            serial=ref.serial,
            how=how,
        )


def attachment(name: str) -> dict[str, str]:
    name = safe_component(name)  # no bidi or control characters from a recorder
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                         for c in name)  # fmt: skip
    return {
        "Content-Disposition": f'attachment; filename="{ascii_name}"; '
        f"filename*=UTF-8''{quote(name)}"
    }


router = APIRouter(prefix="/ui/media", dependencies=[Depends(csrf_protect)], tags=["ui"])
"""Footage: view, read, play, download, zip."""


@router.get("/{file_id}/view")
def view(file_id: Id, request: Request, user: FootageUser, api: ApiDep, ctx: UI) -> FileResponse:
    """A photo or an audio recording as stored (with range requests)."""
    ref = _ref(api, user, file_id)
    media_type = browser_type(ref.name, ref.kind)
    if media_type is None:
        raise HTTPException(415, N_("This file cannot be shown in the browser: download it"))
    _viewed(api, ctx, user, request, ref, "view")
    return FileResponse(ref.path, media_type=media_type, headers={"Cache-Control": "private"})


@router.get("/{file_id}/text")
def text(file_id: Id, request: Request, user: FootageUser, api: ApiDep, ctx: UI) -> dict[str, Any]:
    """A device log (or any small text file) as text."""
    ref = _ref(api, user, file_id)
    if ref.kind != "log" and ext_of(ref.name) not in TEXT_EXTS:
        raise HTTPException(415, N_("This file cannot be shown in the browser: download it"))
    _viewed(api, ctx, user, request, ref, "read")
    return {"name": ref.name, "text": read_text(ref.path)}


@router.get("/{file_id}/status")
def play_status(file_id: Id, user: FootageUser, api: ApiDep) -> dict[str, Any]:
    """How far the browser copy of a video is (starting it if needed)."""
    ref = _ref(api, user, file_id)
    if ref.kind != "video":
        raise HTTPException(415, N_("This file cannot be shown in the browser: download it"))
    state = api.video_state(ref)
    out: dict[str, Any] = {"state": state.state, "progress": state.progress}
    if state.error:
        out["error"] = state.error
    return out


@router.get("/{file_id}/play", response_model=None)
def play(
    file_id: Id, request: Request, user: FootageUser, api: ApiDep, ctx: UI
) -> FileResponse | StreamingResponse:
    """A video as H.264 MP4: the cached copy with ranges, or the copy being made, as it
    grows."""
    ref = _ref(api, user, file_id)
    if ref.kind != "video":
        raise HTTPException(415, N_("This file cannot be shown in the browser: download it"))
    _viewed(api, ctx, user, request, ref, "play")
    cached = api.video_copy(ref)
    if cached is not None:
        return FileResponse(cached, media_type="video/mp4", headers={"Cache-Control": "private"})
    return StreamingResponse(
        api.video_stream(ref),
        media_type="video/mp4",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/{file_id}/download")
def download(file_id: Id, user: FootageUser, api: ApiDep) -> FileResponse:
    """The original file, byte for byte."""
    ref = _ref(api, user, file_id)
    api.audit(
        "file_downloaded",
        ref.name,
        actor=user.officer_no,
        file_id=ref.id,
        officer_no=ref.officer_no,
        serial=ref.serial,
        sha256=ref.sha256,
    )
    return FileResponse(
        ref.path,
        media_type="application/octet-stream",
        headers={**attachment(ref.name), "X-Content-SHA256": ref.sha256},
    )


@router.post("/zip")
def zip_ticket(body: ZipBody, user: FootageUser, api: ApiDep, ctx: UI) -> dict[str, Any]:
    """Get a one-time link for a zip of the chosen files (the browser then follows it)."""
    refs = api.stored_refs(list(dict.fromkeys(body.ids)), scope_officer_no=scope_of(user))
    if len(refs) != len(set(body.ids)):
        raise NoSuchFile("a file asked for is not there")
    ticket = secrets.token_urlsafe(24)
    now = time.monotonic()
    with ctx.lock:
        ctx.tickets = {k: v for k, v in ctx.tickets.items() if v[0] > now}
        ctx.tickets[ticket] = (now + TICKET_S, user.id, [f.id for f in refs])
    return {"url": f"/ui/media/zip/{ticket}", "files": len(refs)}


@router.get("/zip/{ticket}")
def zip_download(ticket: str, user: FootageUser, api: ApiDep, ctx: UI) -> StreamingResponse:
    with ctx.lock:
        entry = ctx.tickets.get(ticket)
        if entry is not None and entry[1] == user.id:
            del ctx.tickets[ticket]  # good once, and only for the one who asked
        else:
            entry = None
    if entry is None or entry[0] < time.monotonic():
        raise HTTPException(404, N_("This download link has expired"))
    refs = api.stored_refs(entry[2], scope_officer_no=scope_of(user))
    stamp = api.now().strftime("%Y%m%d-%H%M%S")
    name = f"{api.station_id}-{stamp}.zip"
    api.audit(
        "files_downloaded",
        f"{len(refs)} file(s) as {name}",
        actor=user.officer_no,
        file_ids=[f.id for f in refs],
    )
    return StreamingResponse(
        zip_stream(api, user, refs, name),
        media_type="application/zip",
        headers=attachment(name),
    )


class _Sink:
    """A write-only, unseekable file for zipfile that hands its bytes to a generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def write(self, b: bytes) -> int:
        self.parts.append(bytes(b))
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _member_names(refs: list[StoredRef]) -> list[str]:
    """`officer/serial/name` for each file, every part made safe as the store's own names
    are (a recorder's `../`, backslashes, CR/LF or bidi controls stay out of the paths and
    the manifest), the file id put in front of a name that is taken."""
    names, seen = [], set()
    for f in refs:
        folder = (
            f"{safe_component(f.officer_no or 'unknown')}/{safe_component(f.serial or 'unknown')}"
        )
        n = f"{folder}/{safe_component(f.name)}"
        if n in seen:
            n = f"{folder}/{safe_component(f'{f.id}-{f.name}')}"
        seen.add(n)
        names.append(n)
    return names


def zip_stream(
    api: StationAPI, user: Account, refs: list[StoredRef], zip_name: str
) -> Iterator[bytes]:
    """The zip, produced as it is sent: each file, then the two manifests."""
    sink = _Sink()
    entries = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for ref, member in zip(refs, _member_names(refs), strict=True):
            h = hashlib.sha256()
            size = 0
            info = zipfile.ZipInfo(member, date_time=time.localtime(ref.path.stat().st_mtime)[:6])
            info.compress_type = zipfile.ZIP_STORED
            with (
                open(ref.path, "rb") as src,
                zf.open(info, "w", force_zip64=ref.size > 0x7FFF0000) as dst,
            ):
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
                    yield sink.take()
            digest = h.hexdigest()
            entries.append(
                {
                    "path": member,
                    "file_id": ref.id,
                    "size": size,
                    "sha256": digest,
                    "catalog_sha256": ref.sha256,
                    "matches_catalog": digest == ref.sha256,
                    "officer_no": ref.officer_no,
                    "serial": ref.serial,
                    "level": ref.level,
                    "important": ref.important,
                }
            )
            if digest != ref.sha256:
                api.audit(
                    "file_hash_mismatch",
                    f"{ref.name}: read {digest}, catalog has {ref.sha256}",
                    actor=user.officer_no,
                    file_id=ref.id,
                )
            yield sink.take()
        zf.writestr(
            "MANIFEST.sha256",
            "".join(f"{e['sha256']}  {e['path']}\n" for e in entries),
        )
        zf.writestr(
            "manifest.json",
            json.dumps(
                {
                    "station": api.station_id,
                    "zip": zip_name,
                    "created_at": api.now().isoformat(timespec="seconds"),
                    "created_by": user.officer_no,
                    "files": entries,
                },
                ensure_ascii=False,
                indent=2,
            ),
        )
    yield sink.take()
