"""Station accounts (S31): users, roles, argon2-hashed secrets, sessions and lockout.

Roles:

- `officer`: sees, annotates and downloads only the files collected for the
  catalog officer with the same officer number;
- `administrator`: every file, deletion, settings, users, registration;
- `auditor`: every file and the system log, read-only.

A secret (a PIN typed on the touchscreen's keypad, or a password) is stored
only as an argon2id hash. Five wrong secrets in a row from one source (an address)
lock the account from that source for `LOCK_MINUTES`, twice as long for each next lock,
at most a day (`station users unlock` or an administrator ends it sooner); while it is
locked even the right secret is refused there, and a wrong secret now and then never
adds up to a lock. A disabled account says so only to its right secret. Sessions are
random tokens of which only the SHA-256 is stored; they end on logout, after
`idle_minutes` without a request, or `MAX_SESSION_HOURS` after login. Logins,
failures, lockouts and account changes are events in the system log.

Why one module of over 500 lines: users, secrets, lockout, second factor and sessions
are one security boundary that a reviewer reads together (a login is policy, hash,
lockout, TOTP and a session in one transaction); split, each half would import the
other's private rules.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select, update

from station.catalog import Catalog, LoginThrottle, User, UserSession
from station.catalog.accounts_models import FOOTAGE_ROLES, KEEP_ONE, LOG_ROLES, ROLES
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.errors import (
    AccountError,
    LastOfRole,
    NoSuchUser,
    SecretReused,
    SecretTooShort,
    UserExists,
)

MAX_FAILURES = 5  # wrong secrets in a row from one source, each within FAILURE_WINDOW
LOCK_MINUTES = 15  # the first lock; each next one in a row lasts twice as long
MAX_LOCK = dt.timedelta(days=1)
FAILURE_WINDOW = dt.timedelta(minutes=LOCK_MINUTES)
MAX_SESSION_HOURS = 12
DEFAULT_IDLE_MINUTES = 15
MIN_SECRET = 6
TOUCH_EVERY_S = 20  # write last_seen_at at most this often per session

# argon2id at OWASP's 19 MiB, t=2: the station has 4 GB and a daemon budget of 200 MB, and
# lockout after MAX_FAILURES bounds guessing; RFC 9106's 64 MiB profile would add 64 MiB
# per concurrent login. Existing hashes keep their own parameters (argon2 stores them).
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# at most two hashes at once (a flood of logins must not cost a worker's 19 MiB each)
_hashing = threading.BoundedSemaphore(2)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the officer number is unknown, so both cases take as long."""
    return _hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class SecretPolicy:
    """How long a secret must be, how many old ones may not come back, and whose expire
    after how many days (configuration [accounts]; `configure`)."""

    min_length: int = MIN_SECRET
    history: int = 5
    max_age_days: int = 90
    max_age_roles: tuple[str, ...] = ("administrator", "security_admin", "audit_admin")
    second_factor_required: bool = False  # else: for accounts that have one
    second_factor_roles: tuple[str, ...] = ("administrator", "security_admin", "audit_admin")

    def expired(self, role: str, changed_at: dt.datetime, now: dt.datetime) -> bool:
        return (
            self.max_age_days > 0
            and role in self.max_age_roles
            and now - changed_at > dt.timedelta(days=self.max_age_days)
        )


_policy = SecretPolicy()


def configure(section: Any) -> None:
    """Apply the configuration's [accounts] section to this process's accounts."""
    global _policy
    _policy = SecretPolicy(
        section.min_secret_length,
        section.secret_history,
        section.secret_max_age_days,
        tuple(section.secret_max_age_roles),
        section.second_factor == "required",
        tuple(section.second_factor_roles),
    )


@dataclass(frozen=True)
class Account:
    """A user as the web layer sees it (no hash)."""

    id: int
    officer_no: str
    name: str
    role: str
    active: bool
    locked: bool
    failed_logins: int
    must_change: bool = False  # the secret expired: only changing it is allowed

    @property
    def is_admin(self) -> bool:
        return self.role == "administrator"

    @property
    def sees_all_files(self) -> bool:
        return self.role in ("administrator", "auditor")

    @property
    def sees_footage(self) -> bool:
        return self.role in FOOTAGE_ROLES

    @property
    def reads_log(self) -> bool:
        return self.role in LOG_ROLES

    @property
    def manages_users(self) -> bool:
        return self.role == "security_admin"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "officer_no": self.officer_no,
            "name": self.name,
            "role": self.role,
            "active": self.active,
            "locked": self.locked,
            "failed_logins": self.failed_logins,
            "must_change": self.must_change,
        }


@dataclass(frozen=True)
class LoginResult:
    """What a login attempt came to: an account, or a reason it was refused."""

    account: Account | None
    reason: str | None = None  # bad_credentials | locked | disabled


def _account(u: User, now: dt.datetime) -> Account:
    return Account(
        id=u.id,
        officer_no=u.officer_no,
        name=u.name,
        role=u.role,
        active=u.active,
        locked=u.locked_until is not None and u.locked_until > now,
        failed_logins=u.failed_logins,
        must_change=_policy.expired(u.role, u.password_changed_at, now),
    )


def hash_secret(secret: str) -> str:
    """The argon2id hash of a PIN or password."""
    with _hashing:
        return _hasher.hash(secret)


def check_secret_policy(secret: str) -> None:
    """Refuse a secret that is too short to survive guessing."""
    if len(secret) < _policy.min_length:
        raise SecretTooShort(
            f"the PIN or password must have at least {_policy.min_length} characters"
        )
    if len(secret) > 256:
        raise AccountError("the PIN or password is too long")


def _used_before(u: User, secret: str) -> bool:
    """The secret is the current one or one of the last `history` (argon2 checks)."""
    if _policy.history <= 0:
        return False
    try:
        old = [u.password_hash, *json.loads(u.secret_history or "[]")][: _policy.history]
    except ValueError:
        old = [u.password_hash]
    for digest in old:
        with _hashing:
            try:
                if _hasher.verify(digest, secret):
                    return True
            except (VerifyMismatchError, InvalidHashError):
                continue
    return False


def _valid_officer_no(officer_no: str) -> str:
    officer_no = officer_no.strip()
    if not officer_no or len(officer_no) > 32 or not officer_no.isprintable():
        raise AccountError("an officer number of 1 to 32 printable characters is needed")
    return officer_no


# --- users -------------------------------------------------------------------------------


def create_user(
    catalog: Catalog,
    officer_no: str,
    secret: str,
    *,
    role: str,
    name: str = "",
    by: str = "station",
) -> Account:
    """Add a user; refuses an unknown role, a weak secret or a number already in use."""
    officer_no = _valid_officer_no(officer_no)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    check_secret_policy(secret)
    digest = hash_secret(secret)
    with catalog.write() as s:
        if s.scalars(select(User).where(User.officer_no == officer_no)).first():
            raise UserExists(f"a user with officer number {officer_no} exists already")
        u = User(
            officer_no=officer_no,
            name=name.strip()[:64],
            role=role,
            password_hash=digest,
            created_by=by,
        )
        s.add(u)
        s.flush()
        append_event(
            s, "user_created", f"{officer_no} ({role})", actor=by, officer_no=officer_no, role=role
        )
        return _account(u, utcnow())


def list_users(catalog: Catalog) -> list[Account]:
    """Every user, by officer number."""
    now = utcnow()
    with catalog.read() as s:
        return [_account(u, now) for u in s.scalars(select(User).order_by(User.officer_no))]


def get_user(catalog: Catalog, officer_no: str) -> Account | None:
    with catalog.read() as s:
        u = s.scalars(select(User).where(User.officer_no == officer_no)).first()
        return _account(u, utcnow()) if u else None


def count_admins(catalog: Catalog) -> int:
    """Active administrators (the station must keep at least one)."""
    with catalog.read() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(User)
                .where(User.role == "administrator", User.active.is_(True))
            )
            or 0
        )


def update_user(
    catalog: Catalog,
    officer_no: str,
    *,
    by: str,
    name: str | None = None,
    role: str | None = None,
    active: bool | None = None,
    secret: str | None = None,
    unlock: bool = False,
) -> Account:
    """Change a user; a new secret, disabling or a role change ends their sessions."""
    if role is not None and role not in ROLES:
        raise AccountError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if secret is not None:
        check_secret_policy(secret)
        with catalog.read() as s:
            known = s.scalars(select(User).where(User.officer_no == officer_no)).first()
            if known is not None and _used_before(known, secret):
                raise SecretReused(
                    f"the new PIN or password must differ from the last {_policy.history}"
                )
    digest = hash_secret(secret) if secret is not None else None
    now = utcnow()
    with catalog.write() as s:
        u = s.scalars(select(User).where(User.officer_no == officer_no)).first()
        if u is None:
            raise NoSuchUser(f"no user with officer number {officer_no}")
        kept = u.role if u.role in KEEP_ONE and u.active else None
        changes = []
        if name is not None and name.strip() != u.name:
            u.name = name.strip()[:64]
            changes.append("name")
        if role is not None and role != u.role:
            u.role = role
            changes.append(f"role {role}")
        if active is not None and active != u.active:
            u.active = active
            changes.append("enabled" if active else "disabled")
        if digest is not None:
            try:
                history = json.loads(u.secret_history or "[]")
            except ValueError:
                history = []
            u.secret_history = json.dumps([u.password_hash, *history][: _policy.history])
            u.password_hash, u.password_changed_at = digest, now
            changes.append("secret changed")
        throttled = s.scalars(
            select(LoginThrottle).where(LoginThrottle.officer_no == officer_no)
        ).all()
        if unlock and (u.failed_logins or u.locked_until or throttled):
            u.failed_logins, u.locked_until = 0, None
            for th in throttled:
                s.delete(th)
            changes.append("unlocked")
        if kept and not (u.role == kept and u.active):
            others = s.scalar(
                select(func.count())
                .select_from(User)
                .where(User.role == kept, User.active.is_(True), User.id != u.id)
            )
            if not others:
                raise LastOfRole(f"the station must keep at least one active {kept}")
        if not changes:
            return _account(u, now)
        if digest is not None or active is False or role is not None:
            _end_sessions(s, u.id, "account changed", now)
        append_event(
            s,
            "user_changed",
            f"{officer_no}: {', '.join(changes)}",
            actor=by,
            officer_no=officer_no,
        )
        return _account(u, now)


# --- logging in ----------------------------------------------------------------------------


def _lock_for(locks: int) -> dt.timedelta:
    """How long the `locks`-th lock in a row lasts: LOCK_MINUTES, doubling, at most a day."""
    return min(dt.timedelta(minutes=LOCK_MINUTES * 2 ** (locks - 1)), MAX_LOCK)


def authenticate(
    catalog: Catalog,
    officer_no: str,
    secret: str,
    *,
    source: str = "",
    now: dt.datetime | None = None,
    code: str | None = None,
) -> LoginResult:
    """Check a secret, and for the policy's roles the TOTP `code` of the account's second
    factor. `MAX_FAILURES` wrong ones in a row from one `source` (none more than
    `LOCK_MINUTES` after the last) lock the account from that source, for longer each
    time; a disabled account says so only to its right secret. A right secret without a
    code, where one is needed, is refused as "second_factor" (the client asks for it)."""
    now = now or utcnow()
    officer_no, source = officer_no.strip()[:32], source[:64]
    key = (officer_no, source)
    with catalog.read() as s:
        u = s.scalars(select(User).where(User.officer_no == officer_no)).first()
        digest = u.password_hash if u is not None else _dummy_hash()
        th = s.get(LoginThrottle, key)
        locked = th is not None and th.locked_until is not None and th.locked_until > now
    if u is not None and locked:
        with catalog.write() as s:
            append_event(s, "login_refused", f"account locked for {source or 'this source'}",
                         actor=officer_no, officer_no=officer_no, source=source)  # fmt: skip
        return LoginResult(None, "locked")
    with _hashing:  # argon2 takes tens of milliseconds and 19 MiB: outside the write lock
        try:
            ok = _hasher.verify(digest, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
    with catalog.write() as s:
        if u is None:
            append_event(s, "login_failed", "unknown officer number", actor=officer_no or "?",
                         source=source)  # fmt: skip
            return LoginResult(None, "bad_credentials")
        u = s.get(User, u.id)
        assert u is not None
        th = s.get(LoginThrottle, key)
        wrong = "wrong secret"
        if ok and u.active and _policy_wants_code(u):
            if u.totp_secret is None:
                append_event(s, "login_refused", "no second factor enrolled (`station users "
                             "totp`)", actor=officer_no, officer_no=officer_no,
                             source=source)  # fmt: skip
                return LoginResult(None, "second_factor_unenrolled")
            if not code:
                return LoginResult(None, "second_factor")
            step = _totp_step(u.totp_secret, code, now)
            if step is None or step <= u.totp_last_step:  # wrong, or used already
                ok, wrong = False, "wrong or reused second-factor code"
            else:
                u.totp_last_step = step
        if ok:
            if th is not None:
                s.delete(th)
            if not u.active:
                append_event(s, "login_refused", "account disabled", actor=officer_no,
                             officer_no=officer_no, source=source)  # fmt: skip
                return LoginResult(None, "disabled")
            u.failed_logins, u.locked_until, u.last_login_at = 0, None, now
            if _hasher.check_needs_rehash(u.password_hash):
                u.password_hash = hash_secret(secret)
            return LoginResult(_account(u, now))
        if th is None:
            th = LoginThrottle(officer_no=officer_no, source=source, failures=0, locks=0)
        if th.last_failure_at is None or now - th.last_failure_at > FAILURE_WINDOW:
            th.failures = 0  # one wrong secret now and then does not add up to a lock
        th.failures += 1
        th.last_failure_at = now
        s.add(th)
        u.failed_logins = th.failures
        append_event(s, "login_failed", f"{wrong} ({th.failures} in a row)",
                     actor=officer_no, officer_no=officer_no, source=source)  # fmt: skip
        if th.failures < MAX_FAILURES:
            return LoginResult(None, "bad_credentials")
        th.locks += 1
        th.failures = 0
        th.locked_until = now + _lock_for(th.locks)
        u.locked_until = max(u.locked_until or now, th.locked_until)
        minutes = int(_lock_for(th.locks).total_seconds() // 60)
        append_event(
            s,
            "account_locked",
            f"{MAX_FAILURES} wrong secrets in a row from {source or 'one source'}: "
            f"locked there for {minutes} min",
            actor="station",
            officer_no=officer_no,
            source=source,
        )
        return LoginResult(None, "locked")


def _policy_wants_code(u: User) -> bool:
    if u.role not in _policy.second_factor_roles:
        return False
    return u.totp_secret is not None or _policy.second_factor_required


def _totp_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The 30-second time step `code` is right for (now, or one step either side), or None."""
    totp = pyotp.TOTP(secret)
    code = code.strip()
    for drift in (0, -1, 1):
        at = now + dt.timedelta(seconds=30 * drift)
        if hmac.compare_digest(totp.at(at), code):
            return totp.timecode(at)
    return None


def enroll_totp(catalog: Catalog, officer_no: str, *, by: str, remove: bool = False) -> str:
    """Give an account a new TOTP secret (returned, for the authenticator app), or take it
    away; logged, and the account's sessions end."""
    secret = None if remove else pyotp.random_base32()
    now = utcnow()
    with catalog.write() as s:
        u = s.scalars(select(User).where(User.officer_no == officer_no)).first()
        if u is None:
            raise NoSuchUser(f"no user with officer number {officer_no}")
        u.totp_secret, u.totp_last_step = secret, 0
        _end_sessions(s, u.id, "second factor changed", now)
        append_event(
            s, "user_changed", f"{officer_no}: second factor "
            + ("removed" if remove else "enrolled"), actor=by, officer_no=officer_no,
        )  # fmt: skip
    return secret or ""


def totp_uri(secret: str, officer_no: str, station_id: str) -> str:
    """The otpauth:// URI an authenticator app scans (as a QR code) or takes typed in."""
    return pyotp.TOTP(secret).provisioning_uri(name=officer_no, issuer_name=station_id)


# --- sessions --------------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: derived from its secret cookie, never stored."""
    return hmac.new(session_token.encode(), b"station-csrf", hashlib.sha256).hexdigest()


def start_session(catalog: Catalog, account: Account, *, client: str = "") -> str:
    """Open a session for a logged-in account; returns the cookie token."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with catalog.write() as s:
        s.add(
            UserSession(
                token_hash=_token_hash(token),
                user_id=account.id,
                created_at=now,
                last_seen_at=now,
                expires_at=now + dt.timedelta(hours=MAX_SESSION_HOURS),
                client=client[:128],
            )
        )
        append_event(
            s,
            "login",
            f"{account.officer_no} ({account.role}) logged in",
            actor=account.officer_no,
            officer_no=account.officer_no,
            client=client[:128],
        )
    return token


def session_account(
    catalog: Catalog,
    token: str,
    *,
    idle_minutes: float = DEFAULT_IDLE_MINUTES,
    now: dt.datetime | None = None,
) -> Account | None:
    """The account of a live session (and note the activity); None if it has ended."""
    if not token:
        return None
    now = now or utcnow()
    th = _token_hash(token)
    with catalog.read() as s:
        row = s.scalars(select(UserSession).where(UserSession.token_hash == th)).first()
        if row is None or row.ended_at is not None:
            return None
        why = None
        if now >= row.expires_at:
            why = "expired"
        elif now - row.last_seen_at > dt.timedelta(minutes=idle_minutes):
            why = "idle"
        elif not row.user.active:
            why = "account disabled"
        account = _account(row.user, now)
        stale = (now - row.last_seen_at).total_seconds() > TOUCH_EVERY_S
        sid = row.id
    if why is not None:
        with catalog.write() as s:
            row = s.get(UserSession, sid)
            if row is not None and row.ended_at is None:
                row.ended_at, row.ended_why = now, why
                append_event(
                    s,
                    "session_ended",
                    f"{account.officer_no}: {why}",
                    actor="station",
                    officer_no=account.officer_no,
                )
        return None
    if stale:
        with catalog.write() as s:
            s.execute(update(UserSession).where(UserSession.id == sid).values(last_seen_at=now))
    return account


def end_session(catalog: Catalog, token: str, why: str = "logout") -> None:
    """Log out: the token stops working at once."""
    th = _token_hash(token)
    with catalog.write() as s:
        row = s.scalars(select(UserSession).where(UserSession.token_hash == th)).first()
        if row is None or row.ended_at is not None:
            return
        row.ended_at, row.ended_why = utcnow(), why
        append_event(
            s,
            "logout",
            f"{row.user.officer_no} logged out",
            actor=row.user.officer_no,
            officer_no=row.user.officer_no,
        )


def _end_sessions(s: Any, user_id: int, why: str, now: dt.datetime) -> None:
    s.execute(
        update(UserSession)
        .where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
        .values(ended_at=now, ended_why=why[:32])
    )


# --- the system log ----------------------------------------------------------------------------


def audit(
    catalog: Catalog,
    kind: str,
    message: str,
    *,
    actor: str,
    file_id: int | None = None,
    officer_no: str | None = None,
    serial: str | None = None,
    **data: Any,
) -> None:
    """Write one event to the system log on behalf of a user (access to footage, settings)."""
    with catalog.write() as s:
        append_event(
            s,
            kind,
            message,
            actor=actor,
            file_id=file_id,
            officer_no=officer_no,
            serial=serial,
            **data,
        )


def bootstrap_admin(catalog: Catalog, officer_no: str, secret: str, name: str = "") -> Account:
    """Create an administrator from the command line (the first one of a new station)."""
    return create_user(catalog, officer_no, secret, role="administrator", name=name, by="cli")
