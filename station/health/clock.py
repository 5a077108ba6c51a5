"""Is the station's own clock synchronised (NTP)? Asked of the kernel with adjtimex."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

TIME_ERROR = 5  # adjtimex: the clock is not synchronised
STA_UNSYNC = 0x0040


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h), x86_64: enough fields plus the padding the kernel writes
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # find_library runs `ldconfig -p` in a subprocess: once per process is enough
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


STA_NANO = 0x2000
TIMESYNCD_DROPIN = "/etc/systemd/timesyncd.conf.d/station.conf"  # systemd/install.sh --ntp


def _adjtimex() -> tuple[int, _Timex] | None:
    libc = _libc()
    if libc is None:
        return None
    tx = _Timex()  # modes 0: read only
    state = libc.adjtimex(ctypes.byref(tx))
    return None if state < 0 else (state, tx)


def clock_synchronized() -> bool | None:
    """True when the kernel says the clock is NTP-synchronised, None if it cannot tell."""
    got = _adjtimex()
    if got is None:
        return None
    state, tx = got
    return state != TIME_ERROR and not tx.status & STA_UNSYNC


def clock_status() -> dict[str, object]:
    """For the status: synchronised?, the kernel's last offset and error estimate, and the
    time servers the installer configured."""
    got = _adjtimex()
    servers: list[str] = []
    try:
        for line in open(TIMESYNCD_DROPIN, encoding="utf-8"):  # noqa: SIM115 - tiny file
            key, _, value = line.partition("=")
            if key.strip() == "NTP":
                servers = value.split()
    except OSError:
        pass
    if got is None:
        return {"synchronized": None, "offset_s": None, "est_error_s": None, "servers": servers}
    state, tx = got
    scale = 1e9 if tx.status & STA_NANO else 1e6
    return {
        "synchronized": state != TIME_ERROR and not tx.status & STA_UNSYNC,
        "offset_s": tx.offset / scale,
        "est_error_s": tx.esterror / 1e6,
        "servers": servers,
    }
