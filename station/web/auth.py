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
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from station.api import Account, csrf_token
from station.errors import AccountError
from station.web.deps import ApiDep
from station.web.i18n import N_
from station.web.refusals import NOT_SAVED, SECRET_CODES, message_for

SESSION_COOKIE = "station_session"
ANON_COOKIE = "station_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _expected_csrf(request: Request) -> list[str]:
    out = []
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        out.append(csrf_token(token))
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


def optional_user(request: Request, api: ApiDep) -> Account | None:
    """The logged-in account of this browser, if any (looked up once per request)."""
    if hasattr(request.state, "account"):
        return request.state.account
    token = request.cookies.get(SESSION_COOKIE, "")
    account = api.session_account(token) if token else None
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


router = APIRouter(prefix="/ui/api", dependencies=[Depends(csrf_protect)], tags=["ui"])
"""Session routes: who am I, log in, log out, change my PIN."""


@router.get("/session")
def session(request: Request, response: Response, user: OptionalUser) -> dict[str, Any]:
    """The logged-in user (or null) and the CSRF token to send with changes."""
    if user is not None:
        csrf = csrf_token(request.cookies[SESSION_COOKIE])
    else:
        if SESSION_COOKIE in request.cookies:
            response.delete_cookie(SESSION_COOKIE, path="/")
        csrf = request.cookies.get(ANON_COOKIE) or secrets.token_urlsafe(32)
        set_cookie(request, response, ANON_COOKIE, csrf)
    return {"user": user.as_dict() if user else None, "csrf": csrf}


@router.post("/login")
def login(body: LoginBody, request: Request, response: Response, api: ApiDep) -> dict[str, Any]:
    opened = api.login(
        body.officer_no,
        body.secret,
        source=source_of(request),
        client=client_of(request),
        code=body.code,
        replacing=request.cookies.get(SESSION_COOKIE),
    )
    set_cookie(request, response, SESSION_COOKIE, opened.token)
    return {"user": opened.account.as_dict(), "csrf": opened.csrf}


@router.post("/logout")
def logout(request: Request, response: Response, api: ApiDep) -> dict[str, Any]:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        api.logout(token)
    response.delete_cookie(SESSION_COOKIE, path="/")
    csrf = request.cookies.get(ANON_COOKIE) or secrets.token_urlsafe(32)
    set_cookie(request, response, ANON_COOKIE, csrf)
    return {"user": None, "csrf": csrf}


@router.post("/password")
def change_password(
    body: PasswordBody,
    request: Request,
    response: Response,
    user: Annotated[Account, Depends(require_login)],
    api: ApiDep,
) -> dict[str, Any]:
    """Change one's own PIN or password (the current one is asked again). Every
    session of the account ends; this browser gets a new one."""
    try:
        opened = api.change_secret(
            user, body.current, body.new, source=source_of(request), client=client_of(request)
        )
    except AccountError as e:  # the password page answers a refused secret with 400
        raise HTTPException(400, message_for(e) if e.code in SECRET_CODES else NOT_SAVED) from e
    set_cookie(request, response, SESSION_COOKIE, opened.token)
    return {"changed": True, "user": opened.account.as_dict(), "csrf": opened.csrf}
