"""Recorders driven through their maker's GA/T 947.4 shared library, loaded with ctypes.

Every maker ships a library with the same C functions (shared/GAT947.md section
1): each returns success or failure and writes a status code into `*iRet`. The
makers differ in the details, so each library is described by its configuration:
the exported names, the C prototypes (`int` or `bool` returns, an `int` or
`unsigned short` status, an ID code that Init_Device fills in or takes as input,
an optional or differently named release call), and the officer block layout
(ZFY_INFO, codec in station/drivers/zfy.py): the common 94-byte one or the packed 89-byte
one. Status codes map to typed errors; a success that did not happen (a write
that returns TRUE with status 0) is caught by reading every write back.

Vendor libraries are rarely thread-safe and usually address "the" recorder, so
every call into one library file goes through one lock, shared by all drivers
configured with that file. A library with indexed calls drives several
recorders: Falcon-style (`Init_Device_UsbTotal` for the count, then `_ByIndex`
calls) or the reference library's (`GetDeviceCount` and `_ByIndex`). Every
session is matched to the docked USB device by serial (by default), and follows
its recorder if the index moves. A library without indexed calls drives one
recorder at a time; opening a second one while a session is open raises
`LibraryBusy` (the station retries). See docs/vendor-library.md.

Every call runs in a thread of its own with a deadline (`call_timeout_s`): ctypes
cannot interrupt a call that never returns, so on expiry the call is abandoned,
its port gets `LibraryHung` (its session is given up, without a release call),
and the library is marked hung: every other port using it waits (`LibraryBusy`
at open, `LibraryHung` in a session) instead of blocking on its lock, until the
stuck call returns, if ever. Ports on other libraries never wait for it.

Loading a vendor library runs the vendor's code inside the station: the file
and its folder must not be writable by group or others.

Why one module of about 1,200 lines: the ctypes prototypes, the status-code table and
the per-family variants (multi-device calls, release names, ID code in or out) describe
one library interface; split, each half would need the other to be read.
"""

from __future__ import annotations

import codecs
import ctypes
import datetime as dt
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from station.drivers import zfy
from station.drivers.base import (
    AuthFailed,
    DeviceBusy,
    DeviceGone,
    DockedDevice,
    OfficerInfo,
    ProtocolError,
    RecorderDriver,
    RecorderError,
    RecorderSession,
    WrongRecorder,
)

log = logging.getLogger(__name__)

# --- status codes (*iRet) ---------------------------------------------------------------

CONNECT_SUCCESS = 1
CONNECT_FAILED = 2
CHECK_PWD_SUCCESS = 3
CHECK_PWD_FAILED = 4
SET_SYSTEMTIME_SUCCESS = 5
SET_SYSTEMTIME_FAILED = 6
MSDC_SUCCESS = 7
MSDC_FAILED = 8

STATUS_NAMES = {
    CONNECT_SUCCESS: "CONNECT_SUCCESS",
    CONNECT_FAILED: "CONNECT_FAILED",
    CHECK_PWD_SUCCESS: "CHECK_PWD_SUCCESS",
    CHECK_PWD_FAILED: "CHECK_PWD_FAILED",
    SET_SYSTEMTIME_SUCCESS: "SET_SYSTEMTIME_SUCCESS",
    SET_SYSTEMTIME_FAILED: "SET_SYSTEMTIME_FAILED",
    MSDC_SUCCESS: "MSDC_SUCCESS",
    MSDC_FAILED: "MSDC_FAILED",
}
SUCCESS_CODES = frozenset(
    {CONNECT_SUCCESS, CHECK_PWD_SUCCESS, SET_SYSTEMTIME_SUCCESS, MSDC_SUCCESS}
)


class VendorLibraryError(RecorderError):
    """The vendor library cannot be used: not found, not loadable, unsafe, or incomplete."""

    template = "vendor library error: {detail}"


class LibraryBusy(DeviceBusy):
    """A single-device library is already driving a recorder on another port, or the
    library is hung in another port's call: try again later."""


class LibraryHung(ProtocolError):
    """A library call did not return within `call_timeout_s`, or the library is still
    stuck in such a call: the session cannot go on."""


def check_status(function: str, ret: int, status: int) -> None:
    """Map a call's return value and `*iRet` status to success or a typed error.

    A failure status wins over the return value: a library that returns 1 with
    CONNECT_FAILED has not succeeded. A success with no status written (0) is
    accepted, since some libraries only write `*iRet` on failure.
    """
    name = STATUS_NAMES.get(status)
    if status == CONNECT_FAILED:
        raise DeviceGone(f"{function}: the recorder does not answer (CONNECT_FAILED, status 2)")
    if status == CHECK_PWD_FAILED:
        raise AuthFailed(f"{function}: wrong device password (CHECK_PWD_FAILED, status 4)")
    if status == SET_SYSTEMTIME_FAILED:
        raise ProtocolError(
            f"{function}: the recorder did not set its clock (SET_SYSTEMTIME_FAILED, status 6)"
        )
    if status == MSDC_FAILED:
        raise ProtocolError(
            f"{function}: the recorder did not enter mass-storage mode (MSDC_FAILED, status 8)"
        )
    if ret != 0:
        if status in SUCCESS_CODES or status == 0:
            return
        raise ProtocolError(f"{function} returned {ret} with unknown status code {status}")
    if name is not None:
        raise ProtocolError(f"{function} failed (returned 0) although its status is {name}")
    if status == 0:
        raise ProtocolError(f"{function} failed (returned 0) without writing a status code")
    raise ProtocolError(f"{function} failed (returned 0) with unknown status code {status}")


# --- the officer block ------------------------------------------------------------------

# The codec is station/drivers/zfy.py. Read from a library: the serial and the officer number must
# decode exactly and not be empty; the display fields (names, unit number) are decoded with
# U+FFFD and a warning rather than refusing the recorder; in the 94 layout a field without
# its NUL is an error that points at the packed 89 layout. Written: nothing is truncated,
# empty identifiers and control characters are refused.


def decode_officer_block(raw: bytes, layout: zfy.Layout, encoding: str) -> OfficerInfo:
    """Decode ZFY_INFO bytes; ProtocolError for a block the standard does not allow."""
    try:
        return zfy.decode(raw, layout, encoding, allow_control=True, lenient_text=True)
    except zfy.OfficerBlockError as e:
        raise ProtocolError(str(e)) from None


def encode_officer_block(info: OfficerInfo, layout: zfy.Layout, encoding: str) -> bytes:
    """Encode an officer block; ValueError (zfy.OfficerBlockError) for a value it cannot hold."""
    return zfy.encode(info, layout, encoding)


# --- configuration ----------------------------------------------------------------------

_USB_ID = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4})$")


class VendorLibraryConfig(BaseModel):
    """One maker's library: which USB devices it drives and how its officer block looks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    usb_ids: list[str]
    library: Path
    layout: zfy.Layout = "94"
    encoding: str = "gbk"
    # None: the station's [recorders] passwords, as passed to open()
    passwords: list[str] | None = None
    # hold a recorder whose officer-block serial and ID code are both not the docked
    # USB device's serial number: a library must never reach another port's recorder.
    # Off only for a maker whose USB serial is something else (then the recorder not
    # yet open elsewhere is taken, and only when it is the one candidate).
    require_serial_match: bool = True
    # the C prototypes: what the non-void calls return, and what *iRet points to
    return_type: Literal["int", "bool"] = "int"
    status_type: Literal["int", "uint16"] = "int"
    # per standard function (or its _ByIndex variant): the exported name, a whole C
    # prototype (its parameter names give their roles), or "" for "not exported"
    functions: dict[str, str] = {}
    # Init_Device takes this ID code as input (None: the library writes the ID code out)
    init_id_code: str | None = None
    # which calls reach several recorders: "auto" finds them in the library
    multi_device: Literal["auto", "usbtotal", "count", "none"] = "auto"
    # a library call that has not returned after this long is abandoned (LibraryHung)
    call_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("usb_ids")
    @classmethod
    def _usb_ids(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one USB id is needed")
        out = []
        for item in v:
            norm = item.strip().lower()
            if not _USB_ID.match(norm):
                raise ValueError(f"{item!r} is not a USB id like '1234:abcd' (hex vendor:product)")
            if norm not in out:
                out.append(norm)
        return out

    @field_validator("library")
    @classmethod
    def _library(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("the library path must be absolute")
        return v

    @field_validator("layout", mode="before")
    @classmethod
    def _layout(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None
        return v

    @field_validator("passwords")
    @classmethod
    def _passwords(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("leave passwords out to use the station's list")
        return v

    @field_validator("functions")
    @classmethod
    def _functions(cls, v: dict[str, str]) -> dict[str, str]:
        for name, spec in v.items():
            base = name.removesuffix("_ByIndex")
            if base not in STANDARD:
                known = ", ".join(STANDARD)
                raise ValueError(f"{name!r} is not one of the library calls ({known})")
            if spec.strip():
                parse_prototype(name, spec, "int", "int")  # ValueError says what is wrong
            elif base in REQUIRED and base == name:
                raise ValueError(f"{name} cannot be left out: the station needs it")
        return v

    @field_validator("init_id_code")
    @classmethod
    def _init_id_code(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\0" in v or len(v.encode()) >= IDCODE_BUFFER):
            raise ValueError("an ID code is 1 to 255 bytes without NUL")
        return v

    def usb_id_pairs(self) -> frozenset[tuple[int, int]]:
        """The configured USB ids as (vendor id, product id) integers."""
        return frozenset(
            (int(m.group(1), 16), int(m.group(2), 16))
            for m in (_USB_ID.match(i) for i in self.usb_ids)
            if m
        )


# --- C prototypes -----------------------------------------------------------------------

_CHAR_P = ctypes.POINTER(ctypes.c_char)
_INT_P = ctypes.POINTER(ctypes.c_int)
_U16_P = ctypes.POINTER(ctypes.c_uint16)

# The standard calls as the canonical header (EYLOG_DLL.h) declares them. A `_ByIndex`
# variant takes `int index` last. `Init_Device_UsbTotal` (Falcon) opens every recorder
# and says how many there are; `GetDeviceCount` is the reference library's own.
STANDARD: dict[str, str] = {
    "Init_Device": "int Init_Device(char *IDCode, int *iRet)",
    "UnInit_Device": "void UnInit_Device(int *iRet)",
    "GetIDCode": "int GetIDCode(char *IDCode, int *iRet)",
    "GetZFYInfo": "int GetZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet)",
    "WriteZFYInfo": "int WriteZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet)",
    "SyncDevTime": "int SyncDevTime(char *sPwd, int *iRet)",
    "SetMSDC": "int SetMSDC(char *sPwd, int *iRet)",
    "ReadDeviceResolution": (
        "int ReadDeviceResolution(int *Width, int *Height, char *sPwd, int *iRet)"
    ),
    "ReadDeviceBatteryDumpEnergy": (
        "int ReadDeviceBatteryDumpEnergy(int *Battery, char *sPwd, int *iRet)"
    ),
    "Init_Device_UsbTotal": "int Init_Device_UsbTotal(char *IDCode, int *iRet, int *Usb_TotalNum)",
    "GetDeviceCount": "int GetDeviceCount(int *iRet)",
}
# What a single-device library must export; the rest is optional.
REQUIRED = frozenset(
    {"Init_Device", "GetIDCode", "GetZFYInfo", "WriteZFYInfo", "SyncDevTime", "SetMSDC",
     "ReadDeviceBatteryDumpEnergy"}
)  # fmt: skip
# Indexed calls a multi-device library must have, per kind of count.
INDEXED_REQUIRED = {
    "usbtotal": ("GetZFYInfo", "WriteZFYInfo", "SetMSDC", "ReadDeviceBatteryDumpEnergy"),
    "count": ("Init_Device", "GetIDCode", "GetZFYInfo", "WriteZFYInfo", "SyncDevTime",
              "SetMSDC", "ReadDeviceBatteryDumpEnergy"),
}  # fmt: skip
COUNT_CALL = {"usbtotal": "Init_Device_UsbTotal", "count": "GetDeviceCount"}

# Room for an ID code: the standard's is 5 characters; a careless library may write more.
IDCODE_BUFFER = 256
# Room for an officer block of either layout, and then some.
_BLOCK_BUFFER = 128

_TYPES: dict[str, Any] = {
    "char*": _CHAR_P, "unsignedchar*": _CHAR_P, "BYTE*": _CHAR_P, "LPSTR": _CHAR_P,
    "int*": _INT_P, "INT*": _INT_P, "int32_t*": _INT_P,
    "unsignedshort*": _U16_P, "u16*": _U16_P, "uint16_t*": _U16_P, "WORD*": _U16_P,
    "USHORT*": _U16_P, "short*": _U16_P,
    "ZFY_INFO*": ctypes.c_void_p, "void*": ctypes.c_void_p,
    "int": ctypes.c_int, "INT": ctypes.c_int,
}  # fmt: skip
_RETURNS: dict[str, Any] = {
    "int": ctypes.c_int, "BOOL": ctypes.c_int, "INT": ctypes.c_int, "bool": ctypes.c_bool,
    "_Bool": ctypes.c_bool, "void": None, "VOID": None,
}  # fmt: skip
# A parameter's role, from its name; and the C types it may have.
_ROLES: dict[str, str] = {
    "idcode": "id_code", "iret": "status", "spwd": "password", "pwd": "password",
    "password": "password", "info": "info", "zfyinfo": "info", "pinfo": "info",
    "battery": "battery", "width": "width", "height": "height", "index": "index",
    "usb_index": "index", "nindex": "index", "usb_totalnum": "total", "total": "total",
}  # fmt: skip
_ROLE_TYPES: dict[str, tuple[Any, ...]] = {
    "id_code": (_CHAR_P,), "password": (_CHAR_P,), "info": (ctypes.c_void_p,),
    "status": (_INT_P, _U16_P), "battery": (_INT_P,), "width": (_INT_P,),
    "height": (_INT_P,), "index": (ctypes.c_int,), "total": (_INT_P,),
}  # fmt: skip
_DECORATION = re.compile(
    r'extern\s+"C"|_{1,2}declspec\s*\([^)]*\)|__cdecl|\b[A-Z_]+_(?:API|DLLIMPORT|EXPORT)\b'
)


@dataclass(frozen=True)
class Prototype:
    """One C function as the library exports it: its symbol, result and parameter roles."""

    symbol: str
    restype: Any  # ctypes type, or None for void
    params: tuple[tuple[str, Any], ...]  # (role, ctypes type)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r, _ in self.params)


def parse_prototype(name: str, spec: str, return_type: str, status_type: str) -> Prototype:
    """A standard call's prototype from configuration: a symbol name, or a C prototype.

    `spec` is either an exported name (the standard prototype is kept, with
    `return_type` and `status_type` applied) or a declaration such as
    ``bool Uninit_Device(char *IDCode, unsigned short *iRet)``, whose parameter
    names say what each one is (IDCode, iRet, sPwd, info, Battery, Width, Height,
    index, Usb_TotalNum). ValueError says what is wrong.
    """
    base = name.removesuffix("_ByIndex")
    indexed = name != base
    spec = spec.strip()
    if "(" not in spec:
        if not re.fullmatch(r"[A-Za-z_]\w*", spec):
            raise ValueError(f"{name}: {spec!r} is neither a C name nor a C prototype")
        std = _parse_c(base, STANDARD[base])
        restype = std.restype
        # GetDeviceCount returns the count, not success: it stays int
        if restype is ctypes.c_int and return_type == "bool" and base != "GetDeviceCount":
            restype = ctypes.c_bool
        params = [
            (r, _U16_P if r == "status" and status_type == "uint16" else t) for r, t in std.params
        ]
        if indexed:
            params.append(("index", ctypes.c_int))
        return Prototype(spec, restype, tuple(params))
    proto = _parse_c(name, spec)
    roles = set(proto.roles)
    if "status" not in roles:
        raise ValueError(f"{name}: no *iRet status parameter")
    if indexed and "index" not in roles:
        raise ValueError(f"{name}: an indexed call needs an int index parameter")
    needed = set(_parse_c(base, STANDARD[base]).roles)
    if not needed <= roles:
        raise ValueError(f"{name}: the prototype lacks {', '.join(sorted(needed - roles))}")
    return proto


def _parse_c(name: str, spec: str) -> Prototype:
    """Read one C declaration; the symbol defaults to `name`."""
    m = re.fullmatch(r"(?s)(?P<head>[^()]*)\((?P<params>.*)\)\s*;?\s*", _DECORATION.sub(" ", spec))
    if not m:
        raise ValueError(f"{name}: cannot read the C prototype {spec!r}")
    head = m.group("head").replace("*", " * ").split()
    if not head:
        raise ValueError(f"{name}: the prototype {spec!r} has no return type")
    symbol = name if len(head) == 1 else head[-1]
    ret_words = head if len(head) == 1 else head[:-1]
    ret = "".join(ret_words)
    if ret not in _RETURNS:
        raise ValueError(
            f"{name}: return type {' '.join(ret_words)!r} is not one of int, BOOL, bool, void"
        )
    params: list[tuple[str, Any]] = []
    text = m.group("params").strip()
    for raw in [] if text in ("", "void") else text.split(","):
        words = raw.replace("*", " * ").split()
        if len(words) < 2 or words[-1] == "*":
            raise ValueError(f"{name}: parameter {raw.strip()!r} needs a type and a name")
        pname, ptype = words[-1], "".join(words[:-1])
        role = _ROLES.get(pname.lower())
        if role is None:
            raise ValueError(
                f"{name}: the parameter name {pname!r} says nothing the station knows "
                "(IDCode, iRet, sPwd, info, Battery, Width, Height, index, Usb_TotalNum)"
            )
        ctype = _TYPES.get(ptype)
        if ctype is None or ctype not in _ROLE_TYPES[role]:
            raise ValueError(f"{name}: parameter {pname} cannot be {' '.join(words[:-1])!r}")
        if role in (r for r, _ in params):
            raise ValueError(f"{name}: two parameters are {role}")
        params.append((role, ctype))
    return Prototype(symbol, _RETURNS[ret], tuple(params))


class _Binding:
    """One library function, declared with its prototype; `call` checks its status."""

    def __init__(self, name: str, proto: Prototype, fn: Any, timeout_s: float = 30.0) -> None:
        self.name = name
        self.proto = proto
        fn.argtypes = [t for _, t in proto.params]
        fn.restype = proto.restype
        self.fn = fn
        self.timeout_s = timeout_s

    def call(self, lib: _Library, label: str, **values: Any) -> int:
        """Call with the values by role (status and index filled in); returns the result."""
        ret, status = self.call_raw(lib, label, **values)
        check_status(self.describe(label), ret, status)
        return ret

    def describe(self, label: str) -> str:
        what = f"{label}: {self.name}"
        if self.proto.symbol != self.name:
            what += f" ({self.proto.symbol})"
        return what

    def call_raw(self, lib: _Library, label: str, **values: Any) -> tuple[int, int]:
        """Call; the result (1 for a void call) and the status, not judged."""
        status_type = ctypes.c_int
        args: list[Any] = []
        status: Any = None
        for role, ctype in self.proto.params:
            if role == "status":
                status_type = ctypes.c_uint16 if ctype is _U16_P else ctypes.c_int
                status = status_type(0)
                args.append(ctypes.byref(status))
            elif role in values:
                args.append(values[role])
            else:
                raise ProtocolError(f"{label}: {self.name} needs a {role} the station cannot give")
        with lib.lock:
            ret = lib.run(self.fn, args, self.timeout_s, self.describe(label))
        if ret is None:  # a void call: only the status tells
            ret = 1
        return int(ret), int(status.value)


class _StuckCall:
    """A call that did not return by its deadline (and may never)."""

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.since = time.monotonic()
        self.at = dt.datetime.now().strftime("%H:%M:%S")

    def __str__(self) -> str:
        return f"{self.what} did not return within {self.timeout_s:g} s"


class _Library:
    """One loaded library file: its lock and its open sessions, shared by every driver."""

    def __init__(self, path: str, cdll: ctypes.CDLL) -> None:
        self.path = path
        self.cdll = cdll
        self.lock = threading.RLock()
        self.sessions: list[VendorLibrarySession] = []
        self.stuck: _StuckCall | None = None  # set while a call is past its deadline
        self._state = threading.Lock()  # guards `stuck` between a call and its waiter

    @property
    def hung(self) -> str | None:
        """Why the library cannot be called now (a call stuck in it), or None."""
        stuck = self.stuck
        if stuck is None:
            return None
        return f"{self.path} is hung: {stuck} (stuck since {stuck.at})"

    def run(self, fn: Any, args: list[Any], timeout_s: float, what: str) -> Any:
        """fn(*args) in a thread of its own, waited for at most `timeout_s`.

        On expiry the call is left running (ctypes cannot stop it; it keeps `args`
        alive, so whatever it writes later lands in its own buffers), the library is
        marked stuck until it returns, and LibraryHung is raised.
        """
        hung = self.hung
        if hung is not None:
            raise LibraryHung(hung)
        box: dict[str, Any] = {}
        done = threading.Event()
        call = _StuckCall(what, timeout_s)

        def go() -> None:
            try:
                box["ret"] = fn(*args)
            except BaseException as e:  # ctypes' own errors (a bad argument): the caller's
                box["error"] = e
            with self._state:
                done.set()
                if self.stuck is call:
                    self.stuck = None
                    log.warning(
                        "%s: %s returned after %.0f s: the library is used again",
                        self.path, what, time.monotonic() - call.since,
                    )  # fmt: skip

        threading.Thread(target=go, name=f"vendor-call {what}", daemon=True).start()
        if not done.wait(timeout_s):
            with self._state:
                if not done.is_set():
                    self.stuck = call
                    log.error("%s: %s: abandoned, the library is hung", self.path, call)
                    raise LibraryHung(f"{call}: the library is hung, the session is given up")
        if "error" in box:
            raise box["error"]
        return box.get("ret")


class _Api:
    """A library as one driver's configuration describes it: its calls and their kind."""

    def __init__(self, lib: _Library, config: VendorLibraryConfig) -> None:
        self.lib = lib
        self.path = lib.path
        self.lock = lib.lock
        self.calls: dict[str, _Binding] = {}
        for base in STANDARD:
            for name in (base, f"{base}_ByIndex"):
                if name.startswith(("Init_Device_UsbTotal_", "GetDeviceCount_")):
                    continue
                spec = config.functions.get(name, name)
                if not spec.strip():
                    continue
                try:
                    proto = parse_prototype(name, spec, config.return_type, config.status_type)
                except ValueError as e:
                    raise VendorLibraryError(f"{lib.path}: {e}") from None
                try:
                    fn = lib.cdll[proto.symbol]  # a fresh function object: its own prototype
                except AttributeError:
                    continue
                self.calls[name] = _Binding(name, proto, fn, config.call_timeout_s)
        missing = [n for n in sorted(REQUIRED) if n not in self.calls]
        if missing:
            raise VendorLibraryError(f"{lib.path} does not export {', '.join(missing)}")
        self.mode = self._mode(config.multi_device)
        self.id_code_in = config.init_id_code
        self.encoding = config.encoding
        self._total_id_code = ""

    def _mode(self, wanted: str) -> str:
        def complete(kind: str) -> list[str]:
            need = [COUNT_CALL[kind], *(f"{n}_ByIndex" for n in INDEXED_REQUIRED[kind])]
            return [n for n in need if n not in self.calls]

        if wanted in ("usbtotal", "count"):
            absent = complete(wanted)
            if absent:
                raise VendorLibraryError(
                    f"{self.path}: multi_device = {wanted!r} but it does not export "
                    + ", ".join(absent)
                )
            return wanted
        if wanted == "none":
            return "none"
        for kind in ("usbtotal", "count"):
            absent = complete(kind)
            if not absent:
                return kind
            if COUNT_CALL[kind] in self.calls:
                log.warning(
                    "%s exports %s but not %s: driving one recorder at a time",
                    self.path, COUNT_CALL[kind], ", ".join(absent),
                )  # fmt: skip
        return "none"

    @property
    def multi(self) -> bool:
        return self.mode != "none"

    def has(self, function: str, index: int | None) -> bool:
        return (function if index is None else f"{function}_ByIndex") in self.calls

    def call(self, label: str, function: str, index: int | None = None, **values: Any) -> int:
        """Call `function` (its _ByIndex variant with an index) by argument roles."""
        name = function if index is None else f"{function}_ByIndex"
        binding = self.calls.get(name)
        if binding is None:
            raise ProtocolError(f"{label}: {self.path} does not export {name}")
        if index is not None:
            values["index"] = index
        return binding.call(self.lib, label, **values)

    def id_code_buffer(self) -> ctypes.Array[ctypes.c_char]:
        """The IDCode argument: the configured input code, or room for the library's."""
        if self.id_code_in is not None:
            return ctypes.create_string_buffer(self.id_code_in.encode(self.encoding), IDCODE_BUFFER)
        return ctypes.create_string_buffer(IDCODE_BUFFER)

    def device_count(self, label: str) -> int:
        """How many recorders the library sees (0 if it sees none)."""
        total = ctypes.c_int(0)
        buf = self.id_code_buffer()
        try:
            if self.mode == "usbtotal":
                self.call(label, "Init_Device_UsbTotal", id_code=buf, total=ctypes.byref(total))
                count = total.value
                self._total_id_code = (
                    buf.raw.partition(b"\0")[0].decode(self.encoding, "replace").strip()
                )
            else:  # returns the count, not 1/0: only a failure status is judged
                binding = self.calls["GetDeviceCount"]
                count, status = binding.call_raw(self.lib, label)
                if status == CONNECT_FAILED:
                    return 0
                if status not in SUCCESS_CODES and status != 0:
                    check_status(binding.describe(label), 0, status)
        except DeviceGone:
            return 0
        if count < 0:
            raise ProtocolError(f"{label}: the library counts {count} recorders")
        return int(count)

    @property
    def family_id_code(self) -> str:
        """The ID code Init_Device_UsbTotal gave (one for the family), if any."""
        return self._total_id_code


_LIBRARIES: dict[str, _Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _check_safe(path: str) -> None:
    """Refuse a library that someone other than its owner could replace."""
    for p in (path, os.path.dirname(path)):
        st = os.stat(p)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
            raise VendorLibraryError(
                f"{path}: refusing to load, its {kind} {p} is writable by group or others"
            )


def load_library(path: Path) -> _Library:
    """Load (once per process) the library at `path`; VendorLibraryError names the path."""
    real = os.path.realpath(path)
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(real)
        if lib is not None:
            return lib
        if not os.path.isfile(real):
            raise VendorLibraryError(f"{path}: no such library file")
        _check_safe(real)
        try:
            cdll = ctypes.CDLL(real)
        except OSError as e:
            raise VendorLibraryError(f"cannot load {path}: {e}") from None
        lib = _Library(real, cdll)
        _LIBRARIES[real] = lib
        return lib


# --- sessions ---------------------------------------------------------------------------


def _buffer(text: str, encoding: str) -> ctypes.Array[ctypes.c_char]:
    """A writable NUL-terminated copy: the C signatures take `char *`, not `const char *`."""
    return ctypes.create_string_buffer(text.encode(encoding))


def _present(device: DockedDevice) -> bool | None:
    """Whether the docked USB device is still in sysfs; None when that cannot be told."""
    if device.kind == "usb" and device.path.startswith("/sys/"):
        return os.path.isdir(device.path)
    return None


@dataclass
class _Probe:
    """What one library index answered while looking for the docked recorder."""

    index: int
    id_code: str
    password: str | None = None
    info: OfficerInfo | None = None
    error: RecorderError | None = None


class VendorLibrarySession(RecorderSession):
    """An open recorder, reached through its maker's library.

    `index` is None for a single-device library. Every call first reads the
    officer block and checks the serial: a recorder swapped behind the library's
    back is DeviceGone, and with a multi-device library a recorder whose index
    moved is found again.
    """

    def __init__(
        self,
        driver: VendorLibraryDriver,
        api: _Api,
        device: DockedDevice,
        password: str,
        index: int | None,
        info: OfficerInfo,
        id_code: str,
    ) -> None:
        self.driver = driver
        self.lib = api
        self.device = device
        self.password = password
        self.index = index
        self.serial = info.serial
        self._id_code = id_code
        self._closed = False
        self._msdc = False

    # --- plumbing --------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"{self.driver.name} (port {self.device.port})"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The library's lock for one session call. A library hung (in this port's call
        or another's) is LibraryHung, whatever error the call path made of it."""
        with self.lib.lock:
            hung = self.lib.lib.hung
            if hung is not None:
                raise LibraryHung(f"{self._label}: {hung}")
            try:
                yield
            except RecorderError as e:
                hung = self.lib.lib.hung
                if hung is None or isinstance(e, LibraryHung):
                    raise
                raise LibraryHung(f"{self._label}: {hung}") from None

    def _call(self, function: str, **values: Any) -> int:
        try:
            return self.lib.call(self._label, function, self.index, **values)
        except DeviceGone as e:
            raise self.driver.connect_failed(self.device, e) from None

    def _current(self) -> OfficerInfo:
        """The officer block of this session's recorder, following it if its index moved.

        The recorder is known by its officer-block serial and by the ID code it gave at
        open (checked with GetIDCode where the library has it): two recorders with one
        serial (a factory default) are told apart by their ID codes. Following a moved
        recorder takes only a single candidate; two that answer as it is an error.
        """
        if self._closed:
            raise ProtocolError(f"{self._label}: session is closed")
        first_error: RecorderError | None = None
        try:
            info = self.driver.read_block(self.lib, self.index, self.password, self._label)
            id_code = self._id_code_at(self.index)
        except RecorderError as e:
            if self.index is None:
                raise self.driver.connect_failed(self.device, e) from None
            first_error = e
        else:
            if info.serial == self.serial and id_code in (None, self._id_code):
                return info
            if self.index is None:
                raise DeviceGone(
                    f"{self._label}: the library now answers for recorder {info.serial}, "
                    f"not {self.serial}"
                    + (f" (ID code {id_code}, not {self._id_code})" if id_code else "")
                )
        found: list[tuple[int, OfficerInfo]] = []
        for i in range(self.lib.device_count(self._label)):
            if i == self.index:
                continue
            try:
                code = self.driver.init(self.lib, i, self._label)
                block = self.driver.read_block(self.lib, i, self.password, self._label)
            except RecorderError:
                continue
            if block.serial == self.serial and code == self._id_code:
                found.append((i, block))
        if len(found) > 1:
            raise ProtocolError(
                f"{self._label}: recorder {self.serial} (ID code {self._id_code}) moved, and "
                f"{len(found)} recorders answer as it (indices "
                f"{', '.join(str(i) for i, _ in found)}): cannot tell which is docked here"
            )
        if found:
            i, block = found[0]
            log.info("%s: recorder %s moved to index %d", self._label, self.serial, i)
            self.index = i
            return block
        if first_error is not None and not isinstance(first_error, DeviceGone):
            raise first_error  # e.g. its password changed: say so, not "gone"
        raise self.driver.connect_failed(
            self.device,
            DeviceGone(f"{self._label}: recorder {self.serial} no longer answers the library"),
        )

    def _id_code_at(self, index: int | None) -> str | None:
        """GetIDCode at `index`; None when the library has no GetIDCode for it."""
        if not self.lib.has("GetIDCode", index):
            return None
        return self.driver.get_id_code(self.lib, index, self._label)

    # --- GA/T 947.4 calls ------------------------------------------------------------

    def id_code(self) -> str:
        with self._locked():
            self._current()
            if self.lib.has("GetIDCode", self.index):
                return self.driver.get_id_code(self.lib, self.index, self._label)
            return self._id_code

    def officer_info(self) -> OfficerInfo:
        with self._locked():
            return self._current()

    def write_officer_info(self, info: OfficerInfo) -> None:
        """WriteZFYInfo, then the block read back: a write is done only when it reads back.

        Some libraries answer TRUE with status 0 for a write the recorder never made.
        """
        layout, encoding = self.driver.config.layout, self.driver.config.encoding
        raw = encode_officer_block(info, layout, encoding)
        expected = decode_officer_block(raw, layout, encoding)
        # padded: a library with the other layout must not read past our buffer
        block = ctypes.create_string_buffer(raw, _BLOCK_BUFFER)
        with self._locked():
            self._current()
            self._call("WriteZFYInfo", info=block, password=self._pwd())
            try:
                back = self.driver.read_block(self.lib, self.index, self.password, self._label)
            except RecorderError as e:
                raise ProtocolError(
                    f"{self._label}: WriteZFYInfo answered success, but the block cannot be "
                    f"read back: {e}"
                ) from None
            if back != expected:
                raise ProtocolError(
                    f"{self._label}: WriteZFYInfo answered success, but the recorder holds "
                    f"{back} (serial {back.serial}, officer {back.officer_no}): not written"
                )
            self.serial = expected.serial

    def battery_percent(self) -> int:
        with self._locked():
            self._current()
            battery = ctypes.c_int(-1)
            self._call(
                "ReadDeviceBatteryDumpEnergy", battery=ctypes.byref(battery), password=self._pwd()
            )
        if not 0 <= battery.value <= 100:
            raise ProtocolError(f"{self._label}: battery level {battery.value} is not 0-100")
        return battery.value

    def resolution(self) -> tuple[int, int]:
        """ReadDeviceResolution: the recording width and height, in pixels."""
        width, height = ctypes.c_int(0), ctypes.c_int(0)
        with self._locked():
            self._current()
            self._call(
                "ReadDeviceResolution",
                width=ctypes.byref(width),
                height=ctypes.byref(height),
                password=self._pwd(),
            )
        if width.value <= 0 or height.value <= 0:
            raise ProtocolError(f"{self._label}: resolution {width.value}x{height.value}")
        return width.value, height.value

    def set_clock(self, now: dt.datetime) -> float | None:
        """SyncDevTime: the library sets the recorder to the host's own local time.

        The library cannot read the recorder clock, so the drift is unknown (None);
        `now` is only checked against the host's time zone. A multi-device library
        without SyncDevTime_ByIndex sets the clock only while it sees one recorder
        (the plain call would reach any of them).
        """
        if now.utcoffset() is not None and now.utcoffset() != now.astimezone().utcoffset():
            log.warning(
                "%s: SyncDevTime sets the host's local time (UTC%s), not the station's (UTC%s)",
                self._label,
                now.astimezone().strftime("%z"),
                now.strftime("%z"),
            )
        with self._locked():
            self._current()
            if self.index is not None and not self.lib.has("SyncDevTime", self.index):
                if self.lib.device_count(self._label) != 1:
                    log.warning(
                        "%s: no SyncDevTime_ByIndex and several recorders docked: "
                        "the clock of %s is not set",
                        self._label,
                        self.serial,
                    )
                    return None
                self.lib.call(self._label, "SyncDevTime", None, password=self._pwd())
                return None
            self._call("SyncDevTime", password=self._pwd())
        return None

    def enter_mass_storage(self) -> None:
        with self._locked():
            if self._msdc:
                return
            self._current()
            self._call("SetMSDC", password=self._pwd())
            self._msdc = True

    def card(self) -> None:
        """None: the recorder re-appears as a USB disk, which the station mounts."""
        return None

    def alive(self) -> bool:
        """Whether the recorder still answers as itself.

        After SetMSDC many recorders stop answering their library (they are now
        disks); then the USB device's presence in sysfs is the answer.
        """
        if self._closed:
            return False
        present = _present(self.device)
        if present is False:
            return False
        try:
            with self.lib.lock:
                self._current()
            return True
        except RecorderError:
            return bool(self._msdc and present)

    def close(self) -> None:
        with self.lib.lock:
            if self._closed:
                return
            self._closed = True
            if self in self.lib.lib.sessions:
                self.lib.lib.sessions.remove(self)
            if any(s.index == self.index for s in self.lib.lib.sessions):
                return  # another session (a quick re-dock) still uses this recorder
            self.driver.release(self.lib, self.index, self._label, self._id_code)

    def _pwd(self) -> ctypes.Array[ctypes.c_char]:
        return _buffer(self.password, self.driver.config.encoding)


# --- the driver -------------------------------------------------------------------------


class VendorLibraryDriver(RecorderDriver):
    """Recorders of one maker, driven through the maker's GA/T 947.4 shared library."""

    def __init__(self, config: VendorLibraryConfig) -> None:
        self.config = config
        self.name = config.name
        self._ids = config.usb_id_pairs()
        self._lib: _Api | None = None

    def load(self) -> _Api:
        """Load the library now (it is otherwise loaded at the first open)."""
        if self._lib is None:
            self._lib = _Api(load_library(self.config.library), self.config)
        return self._lib

    @property
    def multi_device(self) -> bool:
        """Whether the library drives several recorders at once (loads it)."""
        return self.load().multi

    def match(self, device: DockedDevice) -> int:
        if device.kind != "usb" or device.vendor_id is None or device.product_id is None:
            return 0
        return 100 if (device.vendor_id, device.product_id) in self._ids else 0

    @staticmethod
    def connect_failed(device: DockedDevice, error: RecorderError) -> RecorderError:
        """CONNECT_FAILED (or a recorder gone from the library) means "unplugged" only
        when the USB device is gone too: with the device still docked it is an error
        of its own, so that the station does not take it for a new docking."""
        if isinstance(error, DeviceGone) and _present(device) is True:
            return ProtocolError(
                f"{error.detail} although the recorder is still docked on port {device.port}"
            )
        return error

    # --- calls shared with the sessions ----------------------------------------------

    def init(self, lib: _Api, index: int | None, label: str | None = None) -> str:
        """Init_Device: open the recorder; returns its ID code (with an input ID code,
        or an indexed library without Init_Device_ByIndex, as GetIDCode tells it)."""
        label = label or self.name
        if index is not None and not lib.has("Init_Device", index):
            if lib.has("GetIDCode", index):
                return self.get_id_code(lib, index, label)
            if lib.family_id_code:
                return lib.family_id_code
            raise ProtocolError(f"{label}: the library gives no ID code for index {index}")
        buf = lib.id_code_buffer()
        lib.call(label, "Init_Device", index, id_code=buf)
        if self.config.init_id_code is not None:
            return self.get_id_code(lib, index, label)
        return self._decode_id_code(buf, label)

    def get_id_code(self, lib: _Api, index: int | None, label: str | None = None) -> str:
        """GetIDCode: the recorder's ID code."""
        label = label or self.name
        buf = ctypes.create_string_buffer(IDCODE_BUFFER)
        lib.call(label, "GetIDCode", index, id_code=buf)
        return self._decode_id_code(buf, label)

    def _decode_id_code(self, buf: ctypes.Array[ctypes.c_char], label: str) -> str:
        raw = buf.raw.partition(b"\0")[0]
        try:
            code = raw.decode(self.config.encoding).strip()
        except UnicodeDecodeError:
            raise ProtocolError(f"{label}: ID code is not valid text: {raw.hex(' ')}") from None
        if not code:
            raise ProtocolError(f"{label}: the recorder has an empty ID code")
        return code

    def read_block(
        self, lib: _Api, index: int | None, password: str, label: str | None = None
    ) -> OfficerInfo:
        """GetZFYInfo: read and decode the officer block."""
        label = label or self.name
        layout, encoding = self.config.layout, self.config.encoding
        # padded: a library with the other layout must not write past our buffer
        block = ctypes.create_string_buffer(_BLOCK_BUFFER)
        lib.call(label, "GetZFYInfo", index, info=block, password=_buffer(password, encoding))
        try:
            return decode_officer_block(block.raw[: zfy.block_size(layout)], layout, encoding)
        except ProtocolError as e:
            raise ProtocolError(f"{label}: {e.detail}") from None

    def release(self, lib: _Api, index: int | None, label: str, id_code: str = "") -> None:
        """UnInit_Device, when the library has one (many do not, or name it otherwise);
        not while the library is hung (the session is abandoned)."""
        if not lib.has("UnInit_Device", index):
            return
        hung = lib.lib.hung
        if hung is not None:
            log.warning("%s: session abandoned without UnInit_Device: %s", label, hung)
            return
        try:
            buf = _buffer(id_code, self.config.encoding)
            lib.call(label, "UnInit_Device", index, id_code=buf)
        except (RecorderError, UnicodeEncodeError) as e:
            (log.warning if isinstance(e, LibraryHung) else log.debug)(
                "%s: UnInit_Device: %s", label, e
            )

    def _authenticate(
        self,
        lib: _Api,
        index: int | None,
        passwords: list[str],
        label: str,
        device: DockedDevice,
    ) -> tuple[str, OfficerInfo]:
        """Try each password with GetZFYInfo; AuthFailed if none is accepted.

        A library may report a wrong password as CONNECT_FAILED: while the USB device
        is still docked, that moves to the next password too, and if every password
        got it, the recorder is reported as refusing them (not as unplugged).
        """
        connect_failed: DeviceGone | None = None
        for pw in passwords:
            try:
                return pw, self.read_block(lib, index, pw, label)
            except AuthFailed:
                continue
            except DeviceGone as e:
                if _present(device) is not True:
                    raise
                connect_failed = e
        where = "" if index is None else f" at index {index}"
        if connect_failed is not None:
            raise AuthFailed(
                f"{label}: the library answered CONNECT_FAILED to the passwords{where} "
                "although the recorder is docked (a library that reports a wrong password "
                "so): none of "
                f"{len(passwords)} configured passwords accepted"
            )
        raise AuthFailed(f"{label}: none of {len(passwords)} configured passwords accepted{where}")

    def _usable_passwords(self, passwords: list[str]) -> list[str]:
        out = []
        for pw in self.config.passwords if self.config.passwords is not None else passwords:
            if self._sendable(pw):
                out.append(pw)
            else:
                log.warning("%s: skipping a password that cannot be sent", self.name)
        if not out:
            raise AuthFailed(f"{self.name}: no device passwords configured")
        return out

    def _sendable(self, password: str) -> bool:
        if "\0" in password:
            return False
        try:
            password.encode(self.config.encoding)
        except UnicodeEncodeError:
            return False
        return True

    def _serial_matches(self, device: DockedDevice, info: OfficerInfo, id_code: str) -> bool:
        serial = (device.serial or "").strip()
        return bool(serial) and serial in (info.serial, id_code)

    # --- open ------------------------------------------------------------------------

    def open(self, device: DockedDevice, passwords: list[str]) -> VendorLibrarySession:
        lib = self.load()
        pws = self._usable_passwords(passwords)
        label = f"{self.name} (port {device.port})"
        with lib.lock:
            hung = lib.lib.hung
            if hung is not None:  # another port's call is stuck in it: wait, do not block
                raise LibraryBusy(f"{label}: {hung}; port {device.port} must wait")
            try:
                if lib.multi:
                    session = self._open_indexed(lib, device, pws, label)
                else:
                    session = self._open_single(lib, device, pws, label)
            except RecorderError as e:
                hung = lib.lib.hung
                if hung is not None and not isinstance(e, LibraryHung):
                    raise LibraryHung(f"{label}: {hung}") from None
                if isinstance(e, DeviceGone):
                    raise self.connect_failed(device, e) from None
                raise
            lib.lib.sessions.append(session)
        log.info(
            "%s: port %d is recorder %s (library index %s)",
            self.name,
            device.port,
            session.serial,
            session.index,
        )
        return session

    def _open_single(
        self, lib: _Api, device: DockedDevice, passwords: list[str], label: str
    ) -> VendorLibrarySession:
        if lib.lib.sessions:
            raise LibraryBusy(
                f"{label}: {lib.path} drives one recorder at a time and is in use "
                f"for port {lib.lib.sessions[0].device.port}; port {device.port} must wait"
            )
        id_code = self.init(lib, None, label)
        try:
            pw, info = self._authenticate(lib, None, passwords, label, device)
            if self.config.require_serial_match and not self._serial_matches(device, info, id_code):
                raise WrongRecorder(
                    f"{label}: the docked recorder's USB serial is {device.serial!r} but the "
                    f"library answers for recorder {info.serial} (ID code {id_code})"
                )
        except BaseException:
            self.release(lib, None, label, id_code)
            raise
        return VendorLibrarySession(self, lib, device, pw, None, info, id_code)

    def _probe(
        self, lib: _Api, device: DockedDevice, passwords: list[str], label: str
    ) -> list[_Probe]:
        probes = []
        for i in range(lib.device_count(label)):
            try:
                probe = _Probe(i, self.init(lib, i, label))
            except DeviceGone:
                continue  # gone since the count
            except RecorderError as e:
                probes.append(_Probe(i, "", error=e))
                continue
            try:
                probe.password, probe.info = self._authenticate(lib, i, passwords, label, device)
            except RecorderError as e:
                probe.error = e
            probes.append(probe)
        return probes

    def _open_indexed(
        self, lib: _Api, device: DockedDevice, passwords: list[str], label: str
    ) -> VendorLibrarySession:
        probes = self._probe(lib, device, passwords, label)
        if not probes:
            raise DeviceGone(f"{label}: {lib.path} sees no recorder")
        chosen = None
        try:
            pick = self._choose(lib, device, probes, label)
            assert pick.info is not None
            twins = [
                p.index
                for p in probes
                if p is not pick and p.info and p.info.serial == pick.info.serial
            ]
            if twins:
                raise WrongRecorder(
                    f"{label}: recorder {pick.info.serial} (index {pick.index}) shares its "
                    f"serial with the recorder at index {', '.join(map(str, twins))} (a "
                    "factory-default serial?): give each recorder its own serial"
                )
            chosen = pick
        finally:
            # an index another session holds is not released (nor re-initialised)
            held = {s.index for s in lib.lib.sessions}
            for p in probes:
                if p is not chosen and p.index not in held:
                    self.release(lib, p.index, label, p.id_code)
        assert chosen.info is not None and chosen.password is not None
        return VendorLibrarySession(
            self, lib, device, chosen.password, chosen.index, chosen.info, chosen.id_code
        )

    def _choose(self, lib: _Api, device: DockedDevice, probes: list[_Probe], label: str) -> _Probe:
        """The probe that is the docked device: by USB serial, else the only one left."""
        known = [p for p in probes if p.info is not None]
        unknown = [p for p in probes if p.info is None]
        serial = (device.serial or "").strip()
        exact = [p for p in known if p.info and self._serial_matches(device, p.info, p.id_code)]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise ProtocolError(f"{label}: {len(exact)} recorders answer to USB serial {serial!r}")
        for p in unknown:
            if serial and p.id_code == serial and p.error is not None:
                raise p.error
        if self.config.require_serial_match:
            if len(unknown) == 1 and unknown[0].error is not None:
                raise unknown[0].error
            raise WrongRecorder(
                f"{label}: none of the {len(probes)} recorders the library sees has "
                f"serial or ID code {serial!r}"
            )
        # The USB serial says nothing: the recorder not yet open on another port is ours.
        held = {s.serial for s in lib.lib.sessions}
        pool = [p for p in known if p.info and p.info.serial not in held] + unknown
        if len(pool) == 1:
            if pool[0].error is not None:
                raise pool[0].error
            return pool[0]
        if not pool:
            raise ProtocolError(
                f"{label}: the {len(probes)} recorders the library sees are all open "
                "on other ports; none is new here"
            )
        raise ProtocolError(
            f"{label}: cannot tell which of {len(pool)} recorders is docked here "
            f"(USB serial {serial or 'none'} matches no officer-block serial or ID code)"
        )
