"""The browser's routes besides sessions: registration, files, system log, users, settings.

All under `/ui/api/`, JSON, session-authenticated (web/auth.py); errors carry an
English message id in `detail`, which the page translates.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from station import accounts, search
from station.annotations import AnnotationError, ProtectionError, annotate
from station.protection import LEVELS
from station.registration import RegistrationError, approve
from station.retention import DeletionRefused
from station.thumbnails import ThumbnailCache
from web.auth import (
    UI,
    AdminUser,
    FootageUser,
    LogUser,
    OptionalUser,
    SecurityUser,
    UIContext,
    cache_dir_for,
    csrf_protect,
    login_refusal,
    secret_refusal,
)
from web.i18n import DEFAULT_LANGUAGE, LANGUAGES, N_, messages
from web.schemas import Id
from web.settings import SettingsError

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


def scope_of(user: accounts.Account) -> str | None:
    """The officer number an account's file access is limited to (None: all files)."""
    return None if user.sees_all_files else user.officer_no


def pages() -> APIRouter:
    """The console page, the layout of the station screen and the translations."""
    r = APIRouter(include_in_schema=False)

    @r.get("/ui/console")
    def console() -> FileResponse:
        return FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-cache"})

    @r.get("/ui/layout")
    def layout(ctx: UI) -> dict[str, Any]:
        return ctx.settings.layout()

    @r.get("/ui/i18n/{lang}.json")
    def translations(lang: str) -> JSONResponse:
        if lang not in LANGUAGES:
            lang = DEFAULT_LANGUAGE
        return JSONResponse(
            {"lang": lang, "messages": messages(lang)},
            headers={"Cache-Control": "no-cache"},
        )

    return r


def router() -> APIRouter:
    r = APIRouter(prefix="/ui/api", dependencies=[Depends(csrf_protect)], tags=["ui"])

    # --- registration (S36) -------------------------------------------------------------

    @r.post("/recorders/{serial}/approve")
    def approve_recorder(serial: str, body: ApproveBody, ctx: UI) -> dict[str, Any]:
        """An administrator registers a held recorder with their PIN, typed on the screen."""
        catalog = ctx.station.catalog
        result = accounts.authenticate(catalog, body.admin_no, body.secret, code=body.code)
        if result.account is None:
            raise login_refusal(result.reason)
        if not result.account.is_admin:
            raise HTTPException(403, N_("Only an administrator may do this"))
        officer_no = (body.officer_no or "").strip() or None
        try:
            r = approve(catalog, serial, officer_no=officer_no, by=result.account.officer_no)
        except RegistrationError as e:
            raise HTTPException(409, N_("This recorder cannot be registered")) from e
        ctx.station.notify()
        return {"serial": r.serial, "status": r.status}

    # --- alarms ----------------------------------------------------------------------------

    @r.post("/alarms/{alarm_id}/ack")
    def acknowledge_alarm(alarm_id: Id, body: AckBody, ctx: UI) -> dict[str, Any]:
        """An administrator at the screen has seen an alarm (their PIN typed on the keypad);
        it stays raised until its cause is gone."""
        result = accounts.authenticate(
            ctx.station.catalog, body.admin_no, body.secret, code=body.code
        )
        if result.account is None:
            raise login_refusal(result.reason)
        if not result.account.is_admin:
            raise HTTPException(403, N_("Only an administrator may do this"))
        if not ctx.station.acknowledge_alarm(alarm_id, result.account.officer_no):
            raise HTTPException(404, N_("This alarm is no longer raised"))
        return {"acknowledged": alarm_id}

    @r.get("/alarms")
    def alarm_page(user: AdminUser, ctx: UI, active: bool = False) -> dict[str, Any]:
        """The alarms for the console's alarm page: raised ones, or the history too."""
        return {"items": ctx.station.alarm_list(active_only=active)}

    @r.post("/alarms/{alarm_id}/seen")
    def alarm_seen(alarm_id: Id, user: AdminUser, ctx: UI) -> dict[str, Any]:
        """The logged-in administrator acknowledges an alarm from the console."""
        if not ctx.station.acknowledge_alarm(alarm_id, user.officer_no):
            raise HTTPException(404, N_("This alarm is no longer raised"))
        return {"acknowledged": alarm_id}

    # --- recorders --------------------------------------------------------------------------

    @r.get("/recorders")
    def recorder_list(user: AdminUser, ctx: UI) -> dict[str, Any]:
        """Every recorder seen: registered or pending, to whom, when and where last seen."""
        return {"items": ctx.station.recorders()}

    # --- priority (S30) -----------------------------------------------------------------

    @r.post("/ports/{port}/priority")
    def collect_first(
        port: Annotated[int, PathParam(ge=1, le=64)], ctx: UI, user: OptionalUser
    ) -> dict[str, Any]:
        """Collect this port first: anyone at the cabinet may pick the recorder they wait for."""
        try:
            ctx.station.set_priority(port, by=user.officer_no if user else "kiosk")
        except ValueError as e:
            raise HTTPException(409, N_("This port is not collecting")) from e
        return {"priority_port": port}

    @r.delete("/ports/{port}/priority")
    def collect_equally(
        port: Annotated[int, PathParam(ge=1, le=64)], ctx: UI, user: OptionalUser
    ) -> dict[str, Any]:
        """Back to equal shares (only if `port` is the one first)."""
        if ctx.station.priority.port == port:
            ctx.station.set_priority(None, by=user.officer_no if user else "kiosk")
        return {"priority_port": ctx.station.priority.port}

    # --- files (S31, S34) ---------------------------------------------------------------

    thumbs: list[ThumbnailCache] = []  # made at the first use: the catalog folder's

    def thumbnails(ctx: UIContext) -> ThumbnailCache:
        with ctx.lock:
            if not thumbs:
                thumbs.append(ThumbnailCache(cache_dir_for(ctx.station).parent / "thumbnails"))
            return thumbs[0]

    @r.get("/files/media")
    def media_info(
        user: FootageUser,
        ctx: UI,
        ids: Annotated[str, Query(max_length=2000, pattern=r"^\d+(,\d+)*$")],
    ) -> dict[str, Any]:
        """Thumbnail and length of a page of files, as far as made (the rest is asked for,
        in the background: `pending`)."""
        wanted = [int(i) for i in ids.split(",")][:200]
        refs = search.stored_refs(ctx.station.catalog, wanted, scope_officer_no=scope_of(user))
        cache = thumbnails(ctx)
        items: dict[str, Any] = {}
        for ref in refs:
            info = cache.info(ref.sha256, ref.path, ref.kind) if ref.path.is_file() else None
            items[str(ref.id)] = (
                {"pending": True}
                if info is None
                else {"thumbnail": info.thumbnail, "duration_s": info.duration_s}
            )
        return {"items": items}

    @r.get("/files/{file_id}/thumbnail")
    def file_thumbnail(file_id: Id, user: FootageUser, ctx: UI, request: Request) -> FileResponse:
        """A small still of a video or photo (a view of the footage: logged as one)."""
        refs = search.stored_refs(ctx.station.catalog, [file_id], scope_officer_no=scope_of(user))
        jpeg = thumbnails(ctx).jpeg(refs[0].sha256) if refs else None
        if jpeg is None or not jpeg.is_file():
            raise HTTPException(404, N_("No such file"))
        who = request.cookies.get("station_session", user.officer_no)
        if ctx.first_access(who, file_id, "thumbnail"):
            accounts.audit(
                ctx.station.catalog,
                "file_viewed",
                f"{refs[0].name} (thumbnail)",
                actor=user.officer_no,
                file_id=file_id,
                officer_no=refs[0].officer_no,
                serial=refs[0].serial,
                how="thumbnail",
            )
        return FileResponse(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private"})

    @r.get("/files")
    def files(
        user: FootageUser,
        ctx: UI,
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
        q = search.FileQuery(
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
        return search.search_files(
            ctx.station.catalog,
            ctx.station.tz,
            q,
            scope_officer_no=scope_of(user),
            limit=limit,
            offset=offset,
        )

    def _file(ctx: UI, user: accounts.Account, file_id: int) -> dict[str, Any]:
        f = search.get_file(
            ctx.station.catalog, ctx.station.tz, file_id, scope_officer_no=scope_of(user)
        )
        if f is None:
            raise HTTPException(404, N_("No such file"))
        return f

    @r.get("/files/{file_id}")
    def file_detail(file_id: Id, user: FootageUser, ctx: UI) -> dict[str, Any]:
        f = _file(ctx, user, file_id)
        if user.sees_all_files:
            f["history"] = search.recent_events(ctx.station.catalog, file_id=file_id, limit=50)[
                "items"
            ]
        return f

    @r.post("/files/{file_id}/annotate")
    def annotate_file(
        file_id: Id, body: AnnotateBody, user: FootageUser, ctx: UI
    ) -> dict[str, Any]:
        """Level, note, case number (an officer on their own files; legal hold: administrator)."""
        if user.role == "auditor":
            raise HTTPException(403, N_("An auditor cannot change files"))
        if body.legal_hold is not None and not user.is_admin:
            raise HTTPException(403, N_("Only an administrator may do this"))
        _file(ctx, user, file_id)
        try:
            annotate(
                ctx.station.catalog,
                file_id,
                by=user.officer_no,
                level=body.level,
                note=body.note,
                case_no=body.case_no,
                legal_hold=body.legal_hold,
                admin=user.is_admin,
            )
        except ProtectionError as e:
            raise HTTPException(
                403, N_("Only an administrator may lower the grade of protected footage")
            ) from e
        except AnnotationError as e:
            if "IMP" in str(e):
                raise HTTPException(
                    409, N_("A file marked IMP on the recorder cannot be graded normal")
                ) from e
            raise HTTPException(409, N_("The change could not be saved")) from e
        return _file(ctx, user, file_id)

    @r.post("/files/{file_id}/delete")
    def delete_file(file_id: Id, body: DeleteBody, user: AdminUser, ctx: UI) -> dict[str, Any]:
        """Delete a file (administrator, with a reason; a protected file needs confirming)."""
        f = _file(ctx, user, file_id)
        if f["protected"] and not body.confirm_protected:
            raise HTTPException(
                409, N_("This file is protected: confirm a second time to delete it")
            )
        why = body.reason.strip()
        if f["protected"]:
            why = f"{why} (protected file: deletion confirmed twice)"
        if f["legal_hold"]:
            raise HTTPException(409, N_("This file is under legal hold: release the hold first"))
        try:
            deleted = ctx.station.retention.delete(
                file_id, why, by=user.officer_no, confirmed=body.confirm_protected
            )
        except DeletionRefused as e:
            if e.held:
                raise HTTPException(
                    409, N_("This file is under legal hold: release the hold first")
                ) from e
            raise HTTPException(
                409, N_("This file is protected: confirm a second time to delete it")
            ) from e
        if not deleted:
            raise HTTPException(404, N_("No such file"))
        ctx.station.notify()
        return {"deleted": file_id}

    # --- system log (S21) ---------------------------------------------------------------

    @r.get("/log")
    def system_log(
        user: LogUser,
        ctx: UI,
        before: Annotated[int | None, Query(ge=1)] = None,
        kind: Annotated[str | None, Query(max_length=200)] = None,
        officer_no: Annotated[str | None, Query(max_length=32)] = None,
        serial: Annotated[str | None, Query(max_length=32)] = None,
        actor: Annotated[str | None, Query(max_length=64)] = None,
        text: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        return search.recent_events(
            ctx.station.catalog,
            before=before,
            kind=kind or None,
            officer_no=officer_no or None,
            serial=serial or None,
            actor=actor or None,
            text=text or None,
            limit=limit,
        )

    # --- users ---------------------------------------------------------------------------

    @r.get("/users")
    def users(user: SecurityUser, ctx: UI) -> dict[str, Any]:
        return {"items": [a.as_dict() for a in accounts.list_users(ctx.station.catalog)]}

    @r.post("/users")
    def add_user(body: NewUserBody, user: SecurityUser, ctx: UI) -> dict[str, Any]:
        try:
            a = accounts.create_user(
                ctx.station.catalog,
                body.officer_no,
                body.secret,
                role=body.role,
                name=body.name,
                by=user.officer_no,
            )
        except accounts.AccountError as e:
            raise HTTPException(409, _account_error(e)) from e
        return a.as_dict()

    @r.post("/users/{officer_no}")
    def change_user(
        officer_no: str, body: UserChangeBody, user: SecurityUser, ctx: UI
    ) -> dict[str, Any]:
        if officer_no == user.officer_no and body.role not in (None, user.role):
            # one role per person: nobody gives themselves the duties of another
            raise HTTPException(403, N_("Nobody may change their own role"))
        try:
            a = accounts.update_user(
                ctx.station.catalog,
                officer_no,
                by=user.officer_no,
                name=body.name,
                role=body.role,
                active=body.active,
                secret=body.secret or None,
                unlock=body.unlock,
            )
        except accounts.AccountError as e:
            raise HTTPException(409, _account_error(e)) from e
        return a.as_dict()

    # --- settings ------------------------------------------------------------------------

    @r.get("/settings")
    def get_settings(user: AdminUser, ctx: UI) -> dict[str, Any]:
        return {
            "settings": ctx.settings.current().model_dump(),
            "levels": list(LEVELS),
            "retention_paused": ctx.station.retention_paused,
        }

    @r.post("/retention/resume")
    def resume_retention(user: AdminUser, ctx: UI) -> dict[str, Any]:
        """The administrator checked the station clock: deletion by age goes on (logged)."""
        ctx.station.confirm_clock(by=user.officer_no)
        return {"retention_paused": ctx.station.retention_paused}

    @r.post("/settings")
    def set_settings(changes: dict[str, Any], user: AdminUser, ctx: UI) -> dict[str, Any]:
        try:
            s = ctx.settings.update(changes, by=user.officer_no)
        except SettingsError as e:
            raise HTTPException(400, N_("Some settings are not valid")) from e
        return {"settings": s.model_dump(), "levels": list(LEVELS)}

    return r


def _account_error(e: accounts.AccountError) -> str:
    text = str(e)
    if ("at least" in text and "characters" in text) or "must differ" in text:
        return secret_refusal(e)
    if "exists already" in text:
        return N_("A user with this officer number exists already")
    if "must keep at least one active" in text:
        return N_("The station must keep at least one active administrator")
    if "no user" in text:
        return N_("No such user")
    return N_("The change could not be saved")
