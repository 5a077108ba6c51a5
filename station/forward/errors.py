"""Why a file was not forwarded this time."""

from __future__ import annotations


class ForwardError(Exception):
    """A file could not be forwarded this time; it is tried again later."""


class ForwardIntegrityError(ForwardError):
    """The local file no longer matches its catalog hash: it is not sent (alarm-worthy)."""


class ForwardVerifyError(ForwardError):
    """The object store's copy did not verify after the upload."""


class Interrupted(Exception):
    """`stop` was set, or the window closed, in the middle of a file."""
