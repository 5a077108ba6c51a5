"""What a browser is told when the station refuses: one handler, by error kind.

A `station.errors.StationError` raised anywhere below a route becomes an answer with
the error's `http_status` and, in `detail`, the English message id of its `code`
(the page translates it, station/web/i18n.py). Nothing here reads an error's message text.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from station.errors import StationError
from station.web.i18n import N_

NOT_SAVED = N_("The change could not be saved")

MESSAGES: dict[str, str] = {
    # logins and PINs typed on the screen
    "login_refused": N_("Wrong officer number or PIN"),
    "account_locked": N_("Too many wrong PINs: this account is locked for 15 minutes"),
    "account_disabled": N_("This account is disabled"),
    # the console asks for the code when it sees this very message id (console.js)
    "second_factor": N_("Enter the code from your authenticator app"),
    "second_factor_unenrolled": N_("This account needs a second factor: ask for one"),
    "not_administrator": N_("Only an administrator may do this"),
    # accounts
    "secret_too_short": N_("The PIN must have at least 6 digits"),
    "secret_reused": N_("The new PIN or password must differ from the recent ones"),
    "user_exists": N_("A user with this officer number exists already"),
    "last_of_role": N_("The station must keep at least one active administrator"),
    "no_such_user": N_("No such user"),
    "account_refused": NOT_SAVED,
    # files
    "no_such_file": N_("No such file"),
    "protection_lowered": N_("Only an administrator may lower the grade of protected footage"),
    "imp_cannot_be_normal": N_("A file marked IMP on the recorder cannot be graded normal"),
    "annotation_refused": NOT_SAVED,
    "legal_hold": N_("This file is under legal hold: release the hold first"),
    "kept_permanently": N_(
        "This file is kept permanently: an administrator must take it out of its category first"
    ),
    "protected_unconfirmed": N_("This file is protected: confirm a second time to delete it"),
    "deletion_refused": NOT_SAVED,
    "video_unplayable": N_("This video cannot be played: download it"),
    # recorders, ports, settings
    "registration_refused": N_("This recorder cannot be registered"),
    "port_not_collecting": N_("This port is not collecting"),
    "settings_invalid": N_("Some settings are not valid"),
}

# a PIN or password the policy refuses, as the password page words it (the rest: not saved)
SECRET_CODES = ("secret_too_short", "secret_reused")


def message_for(error: StationError) -> str:
    """The message id shown for an error kind."""
    return MESSAGES.get(error.code, NOT_SAVED)


async def station_error(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler: a refusal's status and message id, from its kind alone."""
    assert isinstance(exc, StationError)
    return JSONResponse({"detail": message_for(exc)}, status_code=exc.http_status)
