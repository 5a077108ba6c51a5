"""Fault injection for the evidence-safety harness: named crash and failure points.

Off unless the environment arms them, so production never pays more than a
dictionary lookup. `STATION_CRASHPOINTS="after_link:3,copy_chunk:40"` kills
the daemon with SIGKILL the 3rd time it passes `after_link` (or the 40th
chunk copied); `STATION_FAILPOINTS="store_write_eio:/srv/disk1"` makes writes
to that disk fail with EIO, as a dying disk does. `STATION_CRASHPOINT_LOG=FILE`
appends the name of each point that fired, so a test can prove it did.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

CRASHPOINTS = (
    "copy_chunk",  # during a copy, after a chunk was written
    "after_fsync",  # temp file durable, not yet verified
    "after_sidecar",  # sidecar written at the final name, job not yet marked verified
    "after_verify",  # verified and sidecar written, not yet linked into place
    "link_before_unlink",  # final name linked, temp name not yet removed
    "after_link",  # in place, catalog row not yet committed
    "after_commit",  # committed, not yet deleted from the recorder
    "after_card_delete",  # deleted from the recorder, job not yet marked cleared
    "recovery_after_finish",  # start-up recovery committed one verified job, not the rest
)
RETENTION_CRASHPOINTS = (
    "retention_after_sidecar",  # sidecar marked deleted, catalog row not yet tombstoned
    "retention_after_tombstone",  # row tombstoned, file not yet removed
)

_lock = threading.Lock()


def _parse(var: str) -> dict[str, str]:
    out = {}
    for item in os.environ.get(var, "").split(","):
        name, _, arg = item.strip().partition(":")
        if name:
            out[name] = arg
    return out


_crash = {k: int(v or 1) for k, v in _parse("STATION_CRASHPOINTS").items()}
_fired_log = os.environ.get("STATION_CRASHPOINT_LOG")  # the tests' record of what fired
_fail = _parse("STATION_FAILPOINTS")


def crashpoint(name: str) -> None:
    """Die here, as a power cut would, when this point is armed and its count runs out."""
    if not _crash or name not in _crash:
        return
    with _lock:
        _crash[name] -= 1
        if _crash[name] > 0:
            return
        if _fired_log:
            with open(_fired_log, "a") as f:
                f.write(name + "\n")
    os.kill(os.getpid(), signal.SIGKILL)


def check_write(disk: str) -> None:
    """Raise EIO for writes to `disk` when the failpoint names it."""
    if _fail and _fail.get("store_write_eio") == disk:
        raise OSError(errno.EIO, "injected I/O error", disk)


def fail(name: str) -> None:
    """Raise EMFILE here while the failpoint `name` is armed (`name:N`: the first N times),
    as a daemon out of descriptors does."""
    if not _fail or name not in _fail:
        return
    with _lock:
        left = int(_fail[name] or 1)
        if left <= 0:
            return
        _fail[name] = str(left - 1)
    raise OSError(errno.EMFILE, "injected: too many open files", name)
