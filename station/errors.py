"""The station's error kinds, each with its code and HTTP status, in one place.

As borg's `helpers/errors.py`: a refusal is a class, not a sentence. Every class
carries a short snake_case `code` (what the web layer maps to the message it shows,
and what a script can test) and the `http_status` of the answer a browser or the
central server gets. The message (`str(error)`) is for people and the logs; no
caller decides anything by reading it.

The domain modules raise these (`station.accounts`, `station.retention.annotations`,
`station.ingest.registration`, `station.retention.sweeper`, `station.settings`), and keep their
old names importable (`from station.retention.annotations import AnnotationError`).
"""

from __future__ import annotations

from typing import ClassVar


class StationError(Exception):
    """A request the station refuses or cannot carry out."""

    code: ClassVar[str] = "station_error"
    http_status: ClassVar[int] = 500


# --- accounts and logins ----------------------------------------------------------------


class AccountError(StationError):
    """A request about accounts that cannot be carried out; the message says why."""

    code = "account_refused"
    http_status = 409


class SecretTooShort(AccountError):
    """A PIN or password shorter than the policy's minimum."""

    code = "secret_too_short"


class SecretReused(AccountError):
    """A new PIN or password that is the current one or one of the recent ones."""

    code = "secret_reused"


class UserExists(AccountError):
    """A user with this officer number exists already."""

    code = "user_exists"


class NoSuchUser(AccountError):
    """No user has this officer number."""

    code = "no_such_user"


class LastOfRole(AccountError):
    """The change would leave the station without an active administrator (or security
    administrator)."""

    code = "last_of_role"


class LoginRefused(StationError):
    """A wrong officer number or secret (the same answer for an unknown number)."""

    code = "login_refused"
    http_status = 401


class AccountLocked(LoginRefused):
    code = "account_locked"
    http_status = 423


class AccountDisabled(LoginRefused):
    code = "account_disabled"
    http_status = 403


class SecondFactorNeeded(LoginRefused):
    """The policy asks this account for its TOTP code."""

    code = "second_factor"
    http_status = 401


class SecondFactorUnenrolled(LoginRefused):
    """The policy asks for a second factor the account does not have."""

    code = "second_factor_unenrolled"
    http_status = 403


_LOGIN_REFUSALS: dict[str | None, type[LoginRefused]] = {
    "locked": AccountLocked,
    "disabled": AccountDisabled,
    "second_factor": SecondFactorNeeded,
    "second_factor_unenrolled": SecondFactorUnenrolled,
}


def login_refused(reason: str | None) -> LoginRefused:
    """The error for a refused login (`station.accounts.LoginResult.reason`)."""
    return _LOGIN_REFUSALS.get(reason, LoginRefused)(reason or "bad_credentials")


class NotAdministrator(StationError):
    """The PIN typed is right, but it is not an administrator's."""

    code = "not_administrator"
    http_status = 403


# --- files ------------------------------------------------------------------------------


class NoSuchFile(StationError):
    """No live file with this id that the viewer may see (the same answer for both)."""

    code = "no_such_file"
    http_status = 404


class AnnotationError(StationError):
    """A change of a file's grade, note or case number is refused; the message says why."""

    code = "annotation_refused"
    http_status = 409


class ImportantOnRecorder(AnnotationError):
    """A file marked IMP by its recorder cannot be graded normal."""

    code = "imp_cannot_be_normal"


class ProtectionError(AnnotationError):
    """The change would take protection away, and the person may not do that."""

    code = "protection_lowered"
    http_status = 403


class DeletionError(StationError):
    """A person asked to delete a file that may not be deleted now."""

    code = "deletion_refused"
    http_status = 409


class UnderLegalHold(DeletionError):
    code = "legal_hold"


class KeptPermanently(DeletionError):
    """A file in a permanent retention category: an administrator takes it out first."""

    code = "kept_permanently"


class NotConfirmed(DeletionError):
    """A protected file: its deletion must be confirmed a second time."""

    code = "protected_unconfirmed"


# --- recorders, ports, settings ------------------------------------------------------------


class RegistrationError(StationError):
    """A recorder that cannot be registered as asked."""

    code = "registration_refused"
    http_status = 409


class PortNotCollecting(StationError):
    """Collect-first asked for a port that is not collecting."""

    code = "port_not_collecting"
    http_status = 409


class SettingsError(StationError):
    """Settings refused; the message names the bad fields."""

    code = "settings_invalid"
    http_status = 400


class NotPlayable(StationError):
    """A video the browser copy cannot be made of (download it instead)."""

    code = "video_unplayable"
    http_status = 422
