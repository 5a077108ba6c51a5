"""Browser sessions for the touchscreen and the console: cookies, CSRF, roles, login.

Separate from the central server's bearer tokens (`/api/v1/`): a browser
holds an HttpOnly, SameSite=Strict session cookie, and every state-changing
request must carry the CSRF token of that session in the `X-CSRF-Token`
header (before login: the token of a pre-session cookie). A request whose
`Origin` is another site is refused too.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from station import accounts
from station.accounts import Account
from station.playback import Transcoder
from web.i18n import N_
from web.settings import SettingsStore

if TYPE_CHECKING:
    from station.daemon import Station

SESSION_COOKIE = "station_session"
ANON_COOKIE = "station_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ACCESS_LOG_EVERY_S = 600  # one "viewed" event per session, file and way of viewing


@dataclass
class UIContext:
    """What the browser-facing routes share: the station, settings, transcoder, tickets."""

    station: Station
    settings: SettingsStore
    transcoder: Transcoder
    _seen: dict[tuple[str, int, str], float] = field(default_factory=dict)
    tickets: dict[str, tuple[float, int, list[int]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first_access(self, who: str, file_id: int, how: str) -> bool:
        """Whether this viewing is new (not the same person re-reading ranges of one file)."""
        now = time.monotonic()
        key = (who, file_id, how)
        with self.lock:
            last = self._seen.get(key)
            if last is not None and now - last < ACCESS_LOG_EVERY_S:
                return False
            self._seen[key] = now
            if len(self._seen) > 10_000:
                cutoff = now - ACCESS_LOG_EVERY_S
                self._seen = {k: v for k, v in self._seen.items() if v > cutoff}
            return True


def ui(request: Request) -> UIContext:
    return request.app.state.ui


UI = Annotated[UIContext, Depends(ui)]


def _expected_csrf(request: Request) -> list[str]:
    out = []
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        out.append(accounts.csrf_token(token))
    anon = request.cookies.get(ANON_COOKIE)
    if anon:
        out.append(anon)
    return out


def csrf_protect(request: Request) -> None:
    """Refuse a state-changing request without this browser's CSRF token, or from elsewhere."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin and origin not in (f"http://{host}", f"https://{host}"):
        raise HTTPException(403, N_("Request refused: it came from another site"))
    sent = request.headers.get(CSRF_HEADER, "")
    ok = False
    for want in _expected_csrf(request):
        ok |= hmac.compare_digest(sent.encode(), want.encode())
    if not sent or not ok:
        raise HTTPException(403, N_("Request refused: the page is out of date, reload it"))


def optional_user(request: Request, ctx: UI) -> Account | None:
    """The logged-in account of this browser, if any (looked up once per request)."""
    if hasattr(request.state, "account"):
        return request.state.account
    token = request.cookies.get(SESSION_COOKIE, "")
    account = (
        accounts.session_account(
            ctx.station.catalog, token, idle_minutes=ctx.settings.current().session_idle_minutes
        )
        if token
        else None
    )
    request.state.account = account
    return account


def require_login(account: Annotated[Account | None, Depends(optional_user)]) -> Account:
    """Logged in, even with an expired secret (enough to change it)."""
    if account is None:
        raise HTTPException(401, N_("Please log in"))
    return account


def require_user(account: Annotated[Account, Depends(require_login)]) -> Account:
    if account.must_change:
        raise HTTPException(403, N_("Your PIN or password has expired: change it first"))
    return account


def require_log_reader(account: Annotated[Account, Depends(require_user)]) -> Account:
    if not account.reads_log:
        raise HTTPException(403, N_("Only an administrator or an auditor may do this"))
    return account


def require_footage(account: Annotated[Account, Depends(require_user)]) -> Account:
    """Officers (their own files), administrators and auditors: the security and audit
    administrators have no access to footage (separation of duties)."""
    if not account.sees_footage:
        raise HTTPException(403, N_("This account has no access to footage"))
    return account


def require_security(account: Annotated[Account, Depends(require_user)]) -> Account:
    if not account.manages_users:
        raise HTTPException(403, N_("Only the security administrator manages accounts"))
    return account


def require_admin(account: Annotated[Account, Depends(require_user)]) -> Account:
    if not account.is_admin:
        raise HTTPException(403, N_("Only an administrator may do this"))
    return account


CurrentUser = Annotated[Account, Depends(require_user)]
LogUser = Annotated[Account, Depends(require_log_reader)]
FootageUser = Annotated[Account, Depends(require_footage)]
SecurityUser = Annotated[Account, Depends(require_security)]
AdminUser = Annotated[Account, Depends(require_admin)]
OptionalUser = Annotated[Account | None, Depends(optional_user)]


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def login_refusal(reason: str | None) -> HTTPException:
    """The answer to a refused login or PIN check (the same for an unknown number)."""
    if reason == "locked":
        return HTTPException(423, N_("Too many wrong PINs: this account is locked for 15 minutes"))
    if reason == "disabled":
        return HTTPException(403, N_("This account is disabled"))
    if reason == "second_factor":
        # the console asks for the code when it sees this very message id (console.js)
        return HTTPException(401, N_("Enter the code from your authenticator app"))
    if reason == "second_factor_unenrolled":
        return HTTPException(403, N_("This account needs a second factor: ask for one"))
    return HTTPException(401, N_("Wrong officer number or PIN"))


class LoginBody(BaseModel):
    officer_no: str = Field(min_length=1, max_length=32)
    secret: str = Field(min_length=1, max_length=256)
    code: str | None = Field(default=None, max_length=8)  # TOTP, where the policy asks


class PasswordBody(BaseModel):
    current: str = Field(min_length=1, max_length=256)
    new: str = Field(min_length=1, max_length=256)


def source_of(request: Request) -> str:
    """Where a request comes from, for lockout: its address (not a header it could forge)."""
    return request.client.host if request.client else "?"


def client_of(request: Request) -> str:
    return f"{source_of(request)} {request.headers.get('user-agent', '')}"[:128]


def router() -> APIRouter:
    """Session routes: who am I, log in, log out, change my PIN."""
    r = APIRouter(prefix="/ui/api", dependencies=[Depends(csrf_protect)], tags=["ui"])

    @r.get("/session")
    def session(request: Request, response: Response, user: OptionalUser) -> dict[str, Any]:
        """The logged-in user (or null) and the CSRF token to send with changes."""
        if user is not None:
            csrf = accounts.csrf_token(request.cookies[SESSION_COOKIE])
        else:
            if SESSION_COOKIE in request.cookies:
                response.delete_cookie(SESSION_COOKIE, path="/")
            csrf = request.cookies.get(ANON_COOKIE) or secrets.token_urlsafe(32)
            set_cookie(request, response, ANON_COOKIE, csrf)
        return {"user": user.as_dict() if user else None, "csrf": csrf}

    @r.post("/login")
    def login(body: LoginBody, request: Request, response: Response, ctx: UI) -> dict[str, Any]:
        catalog = ctx.station.catalog
        result = accounts.authenticate(
            catalog, body.officer_no, body.secret, source=source_of(request), code=body.code
        )
        if result.account is None:
            raise login_refusal(result.reason)
        old = request.cookies.get(SESSION_COOKIE)
        if old:
            accounts.end_session(catalog, old, "replaced")
        token = accounts.start_session(catalog, result.account, client=client_of(request))
        set_cookie(request, response, SESSION_COOKIE, token)
        return {"user": result.account.as_dict(), "csrf": accounts.csrf_token(token)}

    @r.post("/logout")
    def logout(request: Request, response: Response, ctx: UI) -> dict[str, Any]:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            accounts.end_session(ctx.station.catalog, token)
        response.delete_cookie(SESSION_COOKIE, path="/")
        csrf = request.cookies.get(ANON_COOKIE) or secrets.token_urlsafe(32)
        set_cookie(request, response, ANON_COOKIE, csrf)
        return {"user": None, "csrf": csrf}

    @r.post("/password")
    def change_password(
        body: PasswordBody,
        request: Request,
        response: Response,
        user: Annotated[Account, Depends(require_login)],
        ctx: UI,
    ) -> dict[str, Any]:
        """Change one's own PIN or password (the current one is asked again). Every
        session of the account ends; this browser gets a new one."""
        catalog = ctx.station.catalog
        result = accounts.authenticate(
            catalog, user.officer_no, body.current, source=source_of(request)
        )
        if result.account is None:
            raise login_refusal(result.reason)
        try:
            account = accounts.update_user(
                catalog, user.officer_no, by=user.officer_no, secret=body.new
            )
        except accounts.AccountError as e:
            raise HTTPException(400, secret_refusal(e)) from e
        token = accounts.start_session(catalog, account, client=client_of(request))
        set_cookie(request, response, SESSION_COOKIE, token)
        return {"changed": True, "user": account.as_dict(), "csrf": accounts.csrf_token(token)}

    return r


def secret_refusal(e: accounts.AccountError) -> str:
    """The message id for a PIN or password the policy refuses."""
    text = str(e)
    if "must differ" in text:
        return N_("The new PIN or password must differ from the recent ones")
    if "at least" in text and "characters" in text:
        return N_("The PIN must have at least 6 digits")
    return N_("The change could not be saved")


def cache_dir_for(station: Station) -> Path:
    """Where browser copies of videos are kept: beside the catalog, off the evidence disks."""
    return station.config.database_path.parent / "playback-cache"
