"""The browser's routes besides sessions: registration, files, system log, users, settings.

All under `/ui/api/`, JSON, session-authenticated (station/web/auth.py); errors carry an
English message id in `detail`, which the page translates (a station refusal:
station/web/refusals.py, by its kind).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from station.api import LEVELS, Account, FileQuery
from station.web.auth import (
    AdminUser,
    FootageUser,
    LogUser,
    OptionalUser,
    SecurityUser,
    csrf_protect,
)
from station.web.deps import UI, ApiDep
from station.web.i18n import DEFAULT_LANGUAGE, LANGUAGES, N_, messages
from station.web.schemas import Id

STATIC = Path(__file__).parent / "static"


class ApproveBody(BaseModel):
    admin_no: str = Field(min_length=1, max_length=32)
    secret: str = Field(min_length=1, max_length=256)
    officer_no: str | None = Field(default=None, max_length=32)
    code: str | None = Field(default=None, max_length=8)  # TOTP, where the policy asks


class AckBody(BaseModel):
    admin_no: str = Field(min_length=1, max_length=32)
    secret: str = Field(min_length=1, max_length=256)
    code: str | None = Field(default=None, max_length=8)  # TOTP, where the policy asks


class AnnotateBody(BaseModel):
    level: Literal["normal", "important", "evidence"] | None = None
    note: str | None = Field(default=None, max_length=2000)
    case_no: str | None = Field(default=None, max_length=64)
    legal_hold: str | None = Field(default=None, max_length=64)
    # a 2016 permanent-retention category ("" takes the file out of it): administrator
    category: str | None = Field(default=None, max_length=32)


class DeleteBody(BaseModel):
    reason: str = Field(min_length=3, max_length=500)
    confirm_protected: bool = False


class NewUserBody(BaseModel):
    officer_no: str = Field(min_length=1, max_length=32)
    name: str = Field(default="", max_length=64)
    role: Literal["officer", "administrator", "auditor"]
    secret: str = Field(min_length=1, max_length=256)


class UserChangeBody(BaseModel):
    name: str | None = Field(default=None, max_length=64)
    role: Literal["officer", "administrator", "auditor"] | None = None
    active: bool | None = None
    secret: str | None = Field(default=None, max_length=256)
    unlock: bool = False


def scope_of(user: Account) -> str | None:
    """The officer number an account's file access is limited to (None: all files)."""
    return None if user.sees_all_files else user.officer_no


pages = APIRouter(include_in_schema=False)
"""The console page, the layout of the station screen and the translations."""


@pages.get("/ui/console")
def console() -> FileResponse:
    return FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-cache"})


@pages.get("/ui/layout")
def layout(api: ApiDep) -> dict[str, Any]:
    return api.layout()


@pages.get("/ui/i18n/{lang}.json")
def translations(lang: str) -> JSONResponse:
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    return JSONResponse(
        {"lang": lang, "messages": messages(lang)},
        headers={"Cache-Control": "no-cache"},
    )


router = APIRouter(prefix="/ui/api", dependencies=[Depends(csrf_protect)], tags=["ui"])
"""The console's and the screen's JSON routes."""

# --- registration (S36) -------------------------------------------------------------------


@router.post("/recorders/{serial}/approve")
def approve_recorder(serial: str, body: ApproveBody, api: ApiDep) -> dict[str, Any]:
    """An administrator registers a held recorder with their PIN, typed on the screen."""
    admin = api.administrator(body.admin_no, body.secret, body.code)
    officer_no = (body.officer_no or "").strip() or None
    return api.approve_recorder(serial, officer_no=officer_no, by=admin.officer_no)


# --- alarms ----------------------------------------------------------------------------------


@router.post("/alarms/{alarm_id}/ack")
def acknowledge_alarm(alarm_id: Id, body: AckBody, api: ApiDep) -> dict[str, Any]:
    """An administrator at the screen has seen an alarm (their PIN typed on the keypad);
    it stays raised until its cause is gone."""
    admin = api.administrator(body.admin_no, body.secret, body.code)
    if not api.acknowledge_alarm(alarm_id, admin.officer_no):
        raise HTTPException(404, N_("This alarm is no longer raised"))
    return {"acknowledged": alarm_id}


@router.get("/alarms")
def alarm_page(user: AdminUser, api: ApiDep, active: bool = False) -> dict[str, Any]:
    """The alarms for the console's alarm page: raised ones, or the history too."""
    return {"items": api.alarm_list(active_only=active)}


@router.post("/alarms/{alarm_id}/seen")
def alarm_seen(alarm_id: Id, user: AdminUser, api: ApiDep) -> dict[str, Any]:
    """The logged-in administrator acknowledges an alarm from the console."""
    if not api.acknowledge_alarm(alarm_id, user.officer_no):
        raise HTTPException(404, N_("This alarm is no longer raised"))
    return {"acknowledged": alarm_id}


# --- recorders --------------------------------------------------------------------------------


@router.get("/recorders")
def recorder_list(user: AdminUser, api: ApiDep) -> dict[str, Any]:
    """Every recorder seen: registered or pending, to whom, when and where last seen."""
    return {"items": api.recorders()}


# --- priority (S30) -----------------------------------------------------------------------

Port = Annotated[int, PathParam(ge=1, le=64)]


@router.post("/ports/{port}/priority")
def collect_first(port: Port, api: ApiDep, user: OptionalUser) -> dict[str, Any]:
    """Collect this port first: anyone at the cabinet may pick the recorder they wait for."""
    api.set_priority(port, by=user.officer_no if user else "kiosk")
    return {"priority_port": port}


@router.delete("/ports/{port}/priority")
def collect_equally(port: Port, api: ApiDep, user: OptionalUser) -> dict[str, Any]:
    """Back to equal shares (only if `port` is the one first)."""
    return {"priority_port": api.clear_priority(port, by=user.officer_no if user else "kiosk")}


# --- files (S31, S34) ---------------------------------------------------------------------


@router.get("/files/media")
def media_info(
    user: FootageUser,
    api: ApiDep,
    ids: Annotated[str, Query(max_length=2000, pattern=r"^\d+(,\d+)*$")],
) -> dict[str, Any]:
    """Thumbnail and length of a page of files, as far as made (the rest is asked for,
    in the background: `pending`)."""
    wanted = [int(i) for i in ids.split(",")][:200]
    refs = api.stored_refs(wanted, scope_officer_no=scope_of(user))
    items: dict[str, Any] = {}
    for file_id, info in api.media_info(refs).items():
        items[str(file_id)] = (
            {"pending": True}
            if info.pending
            else {"thumbnail": info.thumbnail, "duration_s": info.duration_s}
        )
    return {"items": items}


@router.get("/files/{file_id}/thumbnail")
def file_thumbnail(
    file_id: Id, user: FootageUser, api: ApiDep, ctx: UI, request: Request
) -> FileResponse:
    """A small still of a video or photo (a view of the footage: logged as one)."""
    refs = api.stored_refs([file_id], scope_officer_no=scope_of(user))
    jpeg = api.thumbnail(refs[0]) if refs else None
    if jpeg is None:
        raise HTTPException(404, N_("No such file"))
    who = request.cookies.get("station_session", user.officer_no)
    if ctx.first_access(who, file_id, "thumbnail"):
        api.audit(
            "file_viewed",
            f"{refs[0].name} (thumbnail)",
            actor=user.officer_no,
            file_id=file_id,
            officer_no=refs[0].officer_no,
            serial=refs[0].serial,
            how="thumbnail",
        )
    return FileResponse(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private"})


@router.get("/files")
def files(
    user: FootageUser,
    api: ApiDep,
    officer_no: str | None = None,
    serial: str | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    kind: Literal["video", "audio", "photo", "log", "other", ""] = "",
    important: bool | None = None,
    level: Literal["normal", "important", "evidence", ""] = "",
    text: Annotated[str | None, Query(max_length=200)] = None,
    case_no: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    q = FileQuery(
        officer_no=officer_no or None,
        serial=serial or None,
        date_from=date_from,
        date_to=date_to,
        kind=kind or None,
        important=important,
        level=level or None,
        text=text or None,
        case_no=case_no or None,
    )
    return api.search_files(q, scope_officer_no=scope_of(user), limit=limit, offset=offset)


@router.get("/files/{file_id}")
def file_detail(file_id: Id, user: FootageUser, api: ApiDep) -> dict[str, Any]:
    f = api.file(file_id, scope_officer_no=scope_of(user))
    if user.sees_all_files:
        f["history"] = api.file_history(file_id, limit=50)
    return f


@router.post("/files/{file_id}/annotate")
def annotate_file(
    file_id: Id, body: AnnotateBody, user: FootageUser, api: ApiDep
) -> dict[str, Any]:
    """Level, note, case number (an officer on their own files; legal hold and retention
    category: administrator)."""
    if user.role == "auditor":
        raise HTTPException(403, N_("An auditor cannot change files"))
    if (body.legal_hold is not None or body.category is not None) and not user.is_admin:
        raise HTTPException(403, N_("Only an administrator may do this"))
    api.file(file_id, scope_officer_no=scope_of(user))
    api.annotate(
        file_id,
        by=user.officer_no,
        admin=user.is_admin,
        level=body.level,
        note=body.note,
        case_no=body.case_no,
        legal_hold=body.legal_hold,
        category=body.category,
    )
    return api.file(file_id, scope_officer_no=scope_of(user))


@router.post("/files/{file_id}/delete")
def delete_file(file_id: Id, body: DeleteBody, user: AdminUser, api: ApiDep) -> dict[str, Any]:
    """Delete a file (administrator, with a reason; a protected file needs confirming)."""
    api.delete_file(
        file_id,
        body.reason,
        by=user.officer_no,
        confirmed=body.confirm_protected,
        scope_officer_no=scope_of(user),
    )
    return {"deleted": file_id}


# --- system log (S21) ---------------------------------------------------------------------


@router.get("/log")
def system_log(
    user: LogUser,
    api: ApiDep,
    before: Annotated[int | None, Query(ge=1)] = None,
    kind: Annotated[str | None, Query(max_length=200)] = None,
    officer_no: Annotated[str | None, Query(max_length=32)] = None,
    serial: Annotated[str | None, Query(max_length=32)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    return api.recent_events(
        before=before,
        kind=kind or None,
        officer_no=officer_no or None,
        serial=serial or None,
        actor=actor or None,
        text=text or None,
        limit=limit,
    )


# --- users ---------------------------------------------------------------------------------


@router.get("/users")
def users(user: SecurityUser, api: ApiDep) -> dict[str, Any]:
    return {"items": [a.as_dict() for a in api.users()]}


@router.post("/users")
def add_user(body: NewUserBody, user: SecurityUser, api: ApiDep) -> dict[str, Any]:
    a = api.create_user(
        body.officer_no, body.secret, role=body.role, name=body.name, by=user.officer_no
    )
    return a.as_dict()


@router.post("/users/{officer_no}")
def change_user(
    officer_no: str, body: UserChangeBody, user: SecurityUser, api: ApiDep
) -> dict[str, Any]:
    if officer_no == user.officer_no and body.role not in (None, user.role):
        # one role per person: nobody gives themselves the duties of another
        raise HTTPException(403, N_("Nobody may change their own role"))
    a = api.update_user(
        officer_no,
        by=user.officer_no,
        name=body.name,
        role=body.role,
        active=body.active,
        secret=body.secret or None,
        unlock=body.unlock,
    )
    return a.as_dict()


# --- settings --------------------------------------------------------------------------------


@router.get("/settings")
def get_settings(user: AdminUser, api: ApiDep) -> dict[str, Any]:
    return {
        "settings": api.settings().model_dump(),
        "levels": list(LEVELS),
        "retention_paused": api.retention_paused,
    }


@router.post("/retention/resume")
def resume_retention(user: AdminUser, api: ApiDep) -> dict[str, Any]:
    """The administrator checked the station clock: deletion by age goes on (logged)."""
    api.confirm_clock(by=user.officer_no)
    return {"retention_paused": api.retention_paused}


@router.post("/settings")
def set_settings(changes: dict[str, Any], user: AdminUser, api: ApiDep) -> dict[str, Any]:
    s = api.update_settings(changes, by=user.officer_no)
    return {"settings": s.model_dump(), "levels": list(LEVELS)}
