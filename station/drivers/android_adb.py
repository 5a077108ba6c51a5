"""Android recorders reached over adb: GA/T 947.4 calls on a socket the recorder serves.

Android recorders run a service on a TCP port of the device; the station reaches
it through the adb server (Debian's `adb` package, `adb start-server`), the way
`adb forward` does: on a connection to the server (127.0.0.1:5037) the host
protocol asks for `host:transport:<serial>` and then `tcp:<port>`, and the
connection becomes a stream to the recorder's service. See docs/android-adb.md.

Two message formats are spoken on that stream:

- "e12": the `E12CMDS...` strings of the public E12 service code. Every message
  is a 4-byte length and that many bytes (GBK text, or the packed 89-byte
  officer block). A command is answered `E12DATR880` ("working on it"), then
  its result: data, or an `E12DATR...` failure code. The recorder checks no
  password: the host reads the administrator password (`E12CMDS010`) and
  compares it itself, as that code's host side does.
- "json": one JSON object per line each way, a rendering of the C calls: the
  request names the call and its inputs as the C declarations do
  (`{"cmd": "GetZFYInfo", "sPwd": "..."}`), the answer carries the return value
  and the status (`{"ret": 1, "iRet": 1, "info": {...}}`), with the status codes
  of GA/T 947.4; the recorder checks the password (iRet 4).

The adb serial is the USB serial number: a session only talks to the device the
dock reports on its port, and the officer block's serial is checked against it.

Why one module of about 670 lines: the adb host protocol and the two message formats are
only ever used by this driver and are tested with it.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import json
import logging
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
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
    usb_present,
)

log = logging.getLogger(__name__)

_USB_ID = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4})$")
MAX_MESSAGE = 64 * 1024


class AndroidAdbConfig(BaseModel):
    """One family of Android recorders: how to reach their service and what it speaks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "android"
    usb_ids: Annotated[list[str], Field(min_length=1)]
    format: Literal["e12", "json"]
    device_port: Annotated[int, Field(ge=1, le=65535)]  # the recorder's service port
    adb_host: str = "127.0.0.1"
    adb_port: Annotated[int, Field(ge=1, le=65535)] = 5037
    start_server: bool = True  # run `adb start-server` when no server answers
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    encoding: str = "gbk"
    # e12: the byte order of the 4-byte message length
    length_order: Literal["little", "big"] = "little"
    # hold a recorder whose officer-block serial is not the USB (adb) serial
    require_serial_match: bool = True

    @field_validator("usb_ids")
    @classmethod
    def _usb_ids(cls, v: list[str]) -> list[str]:
        out = [s.strip().lower() for s in v]
        for s in out:
            if not _USB_ID.match(s):
                raise ValueError(f"{s!r} is not a USB id like '1234:abcd' (hex vendor:product)")
        return out

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None
        return v

    def usb_id_pairs(self) -> frozenset[tuple[int, int]]:
        return frozenset(
            (int(m.group(1), 16), int(m.group(2), 16))
            for m in (_USB_ID.match(i) for i in self.usb_ids)
            if m
        )


# --- the adb host protocol ----------------------------------------------------------------


class AdbError(ProtocolError):
    """The adb server refused a request (FAIL) or answered something else."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise DeviceGone(f"the connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def adb_request(sock: socket.socket, request: str) -> None:
    """Send one host-protocol request and read OKAY; AdbError with the FAIL message."""
    data = request.encode("ascii")
    sock.sendall(b"%04x" % len(data) + data)
    answer = _recv_exact(sock, 4)
    if answer == b"OKAY":
        return
    if answer == b"FAIL":
        n = int(_recv_exact(sock, 4), 16)
        raise AdbError(f"adb: {request}: {_recv_exact(sock, n).decode('utf-8', 'replace')}")
    raise AdbError(f"adb: {request}: unexpected answer {answer!r}")


class AdbClient:
    """The adb server, spoken to with the host protocol (as the `adb` command does)."""

    def __init__(self, config: AndroidAdbConfig) -> None:
        self.config = config
        self._started = False

    def _connect(self) -> socket.socket:
        address = (self.config.adb_host, self.config.adb_port)
        try:
            return socket.create_connection(address, timeout=self.config.timeout_s)
        except OSError as e:
            if not self.config.start_server or self._started:
                raise ProtocolError(f"no adb server on {address[0]}:{address[1]}: {e}") from None
        self._start_server()
        try:
            return socket.create_connection(address, timeout=self.config.timeout_s)
        except OSError as e:
            raise ProtocolError(f"no adb server on {address[0]}:{address[1]}: {e}") from None

    def _start_server(self) -> None:
        self._started = True
        adb = shutil.which("adb")
        if adb is None:
            raise ProtocolError("no adb server answers and the adb command is not installed")
        env_port = ["-P", str(self.config.adb_port)]
        subprocess.run(
            [adb, *env_port, "start-server"],
            check=False,
            capture_output=True,
            timeout=self.config.timeout_s * 3,
        )

    def devices(self) -> dict[str, str]:
        """host:devices: serial -> state ("device", "offline", "unauthorized", ...)."""
        with contextlib.closing(self._connect()) as sock:
            adb_request(sock, "host:devices")
            n = int(_recv_exact(sock, 4), 16)
            text = _recv_exact(sock, n).decode("utf-8", "replace")
        out = {}
        for line in text.splitlines():
            serial, _, state = line.partition("\t")
            if serial:
                out[serial] = state.strip()
        return out

    def open_stream(self, serial: str, port: int) -> socket.socket:
        """A stream to tcp:`port` on device `serial` (what `adb forward` carries)."""
        sock = self._connect()
        try:
            adb_request(sock, f"host:transport:{serial}")
            adb_request(sock, f"tcp:{port}")
        except AdbError as e:
            sock.close()
            if "not found" in str(e) or "offline" in str(e):
                raise DeviceGone(str(e)) from None
            raise
        except BaseException:
            sock.close()
            raise
        return sock


# --- the two message formats ---------------------------------------------------------------

E12_WORKING = "E12DATR880"
E12_COMMANDS = {
    "release": "E12CMDS002",
    "sync_time": "E12CMDS003",
    "get_info": "E12CMDS004",
    "write_info": "E12CMDS005",
    "resolution": "E12CMDS006",
    "battery": "E12CMDS007",
    "msdc": "E12CMDS008",
    "id_code": "E12CMDS009",
    "admin_password": "E12CMDS010",
}
E12_FAILED = {
    "sync_time": "E12DATR000",
    "get_info": "E12DATR120",
    "write_info": "E12DATR020",
    "resolution": "E12DATR130",
    "battery": "E12DATR140",
    "msdc": "E12DATR010",
    "id_code": "E12DATR150",
    "admin_password": "E12DATR030",
}
E12_DONE = {"sync_time": "E12DATR001", "write_info": "E12DATR021", "msdc": "E12DATR011"}
# the GA/T 947.4 status codes the JSON answers carry
CONNECT_FAILED, CHECK_PWD_FAILED = 2, 4
FAILURE_STATUS = {2: "CONNECT_FAILED", 4: "CHECK_PWD_FAILED", 6: "SET_SYSTEMTIME_FAILED",
                  8: "MSDC_FAILED"}  # fmt: skip


class _Stream:
    """The socket to the recorder's service, with the framing of one format."""

    def __init__(self, sock: socket.socket, config: AndroidAdbConfig, label: str) -> None:
        self.sock = sock
        self.config = config
        self.label = label
        self._pending = b""
        self._deadline: float | None = None

    def begin(self) -> None:
        """Start one exchange: `timeout_s` from now bounds all of it; nothing may be
        waiting from an earlier one (an answer nobody asked for: out of step)."""
        self._deadline = time.monotonic() + self.config.timeout_s
        stale = self._pending
        self.sock.settimeout(0)  # only what has already arrived
        try:
            while len(stale) <= MAX_MESSAGE:
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                stale += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            raise DeviceGone(f"{self.label}: receive: {e}") from None
        finally:
            self.sock.settimeout(self.config.timeout_s)
        if stale:
            self._pending = b""
            raise ProtocolError(
                f"{self.label}: the recorder sent an answer nobody asked for: {stale[:60]!r}"
            )

    def _recv(self, n: int) -> bytes:
        """Up to `n` bytes, waiting no longer than the exchange's deadline allows."""
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(min(left, self.config.timeout_s))
        return self.sock.recv(n)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._recv(n - len(buf))
            if not chunk:
                raise DeviceGone(f"the connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _io(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RecorderError:
            raise
        except TimeoutError:
            raise ProtocolError(
                f"{self.label}: {what}: the recorder did not answer within "
                f"{self.config.timeout_s:g} s"
            ) from None
        except OSError as e:
            raise DeviceGone(f"{self.label}: {what}: {e}") from None

    # e12: a 4-byte length and that many bytes
    def send_frame(self, data: bytes) -> None:
        head = struct.pack("<I" if self.config.length_order == "little" else ">I", len(data))
        self._io("send", self.sock.sendall, head + data)

    def recv_frame(self) -> bytes:
        head = self._io("receive", self._recv_exact, 4)
        (n,) = struct.unpack("<I" if self.config.length_order == "little" else ">I", head)
        if n > MAX_MESSAGE:
            raise ProtocolError(f"{self.label}: a message of {n} bytes")
        return bytes(self._io("receive", self._recv_exact, n))

    # json: one object per line
    def send_json(self, obj: dict[str, Any]) -> None:
        self._io("send", self.sock.sendall, json.dumps(obj, ensure_ascii=False).encode() + b"\n")

    def recv_json(self) -> dict[str, Any]:
        while b"\n" not in self._pending:
            chunk = self._io("receive", self._recv, 4096)
            if not chunk:
                raise DeviceGone(f"{self.label}: the recorder closed the connection")
            self._pending += chunk
            if len(self._pending) > MAX_MESSAGE:
                raise ProtocolError(f"{self.label}: an answer of more than {MAX_MESSAGE} bytes")
        line, _, self._pending = self._pending.partition(b"\n")
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            raise ProtocolError(
                f"{self.label}: an answer that is not JSON: {line[:80]!r}"
            ) from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"{self.label}: an answer that is not a JSON object")
        return obj


# --- the session ------------------------------------------------------------------------------


class AndroidAdbSession(RecorderSession):
    """An open Android recorder: its service's stream, one call at a time."""

    def __init__(self, driver: AndroidAdbDriver, device: DockedDevice, stream: _Stream) -> None:
        self.driver = driver
        self.config = driver.config
        self.device = device
        self.stream = stream
        self.label = stream.label
        self.password = ""
        self.serial = ""
        self._lock = threading.Lock()
        self._msdc = False
        self._closed = False

    # --- e12 ---------------------------------------------------------------------------

    def _e12(self, call: str, payload: bytes | None = None) -> bytes:
        """One E12 command: the command, the working signal, [the payload,] the result."""
        self.stream.begin()
        self.stream.send_frame(E12_COMMANDS[call].encode("ascii"))
        first = self.stream.recv_frame()
        if first != E12_WORKING.encode():
            raise ProtocolError(f"{self.label}: {E12_COMMANDS[call]} answered {first[:40]!r}")
        if payload is not None:
            self.stream.send_frame(payload)
        answer = self.stream.recv_frame()
        if answer == E12_FAILED.get(call, "").encode():
            raise ProtocolError(f"{self.label}: {E12_COMMANDS[call]} failed ({answer.decode()})")
        if call in E12_DONE and answer != E12_DONE[call].encode():
            raise ProtocolError(f"{self.label}: {E12_COMMANDS[call]} answered {answer[:40]!r}")
        return answer

    def _text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode(self.config.encoding).strip()
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.label}: {what} is not text: {raw[:40].hex(' ')}") from None

    def _check_password(self) -> None:
        """e12: the recorder's administrator password, compared here."""
        if not self.password or not self._password_is(self._e12("admin_password"), self.password):
            raise AuthFailed(
                f"{self.label}: the recorder's password is not the station's (compared on the host)"
            )

    def _password_is(self, stored: bytes, password: str) -> bool:
        """The stored password (a C string: up to its NUL, nothing stripped) is `password`."""
        try:
            wanted = password.encode(self.config.encoding)
        except UnicodeEncodeError:
            return False
        return bool(wanted) and stored.partition(b"\0")[0] == wanted

    # --- json ---------------------------------------------------------------------------

    def _json(self, cmd: str, **inputs: Any) -> dict[str, Any]:
        request = {"cmd": cmd, **inputs}
        if cmd not in ("Init_Device", "GetIDCode", "UnInit_Device"):
            request["sPwd"] = self.password
        self.stream.begin()
        self.stream.send_json(request)
        answer = self.stream.recv_json()
        if "cmd" in answer and answer["cmd"] != cmd:
            raise ProtocolError(f"{self.label}: {cmd} was answered for {answer['cmd']!r}")
        ret, status = answer.get("ret"), answer.get("iRet", 0)
        if not isinstance(ret, int) or not isinstance(status, int):
            raise ProtocolError(f"{self.label}: {cmd}: answer without ret/iRet: {answer}")
        if status == CHECK_PWD_FAILED:
            raise AuthFailed(f"{self.label}: {cmd}: wrong device password (CHECK_PWD_FAILED)")
        if status in FAILURE_STATUS or ret == 0:
            name = FAILURE_STATUS.get(status, f"status {status}")
            raise ProtocolError(f"{self.label}: {cmd} failed (ret {ret}, {name})")
        return answer

    # --- GA/T 947.4 calls ----------------------------------------------------------------

    def _call(self, fn: Any) -> Any:
        if self._closed:
            raise ProtocolError(f"{self.label}: session is closed")
        with self._lock:
            try:
                return fn()
            except DeviceGone as e:
                raise self.driver.still_docked(self.device, e) from None

    def id_code(self) -> str:
        def go() -> str:
            if self.config.format == "e12":
                code = self._text(self._e12("id_code"), "the ID code")
            else:
                code = str(self._json("GetIDCode").get("IDCode", "")).strip()
            if not code:
                raise ProtocolError(f"{self.label}: the recorder has an empty ID code")
            return code

        return self._call(go)

    def _read_info(self) -> OfficerInfo:
        if self.config.format == "e12":
            self._check_password()
            raw = self._e12("get_info")
            try:
                return zfy.decode(raw, "89", self.config.encoding, lenient_text=True)
            except zfy.OfficerBlockError as e:
                raise ProtocolError(f"{self.label}: {e}") from None
        info = self._json("GetZFYInfo").get("info")
        if not isinstance(info, dict):
            raise ProtocolError(f"{self.label}: GetZFYInfo answered no info object")
        fields = [info.get(k, "") for k in ("cSerial", "userNo", "userName", "unitNo", "unitName")]
        if not all(isinstance(f, str) for f in fields):
            raise ProtocolError(f"{self.label}: GetZFYInfo: a field is not text")
        out = OfficerInfo(*(f.strip() for f in fields))
        try:  # the same rules as a block: the limits, a serial and an officer number
            zfy.encode(out, "89", self.config.encoding)
        except zfy.OfficerBlockError as e:
            raise ProtocolError(f"{self.label}: {e}") from None
        return out

    def officer_info(self) -> OfficerInfo:
        return self._call(self._current)

    def _current(self) -> OfficerInfo:
        info = self._read_info()
        if self.serial and info.serial != self.serial:
            raise DeviceGone(f"{self.label}: the service now answers for {info.serial}")
        return info

    def write_officer_info(self, info: OfficerInfo) -> None:
        """WriteZFYInfo, then the block read back: done only when it reads back."""
        try:
            raw = zfy.encode(info, "89", self.config.encoding)
        except zfy.OfficerBlockError as e:
            raise ValueError(str(e)) from None
        expected = zfy.decode(raw, "89", self.config.encoding)

        def go() -> None:
            self._current()
            if self.config.format == "e12":
                self._check_password()
                self._e12("write_info", raw)
            else:
                block = dict(zip(("cSerial", "userNo", "userName", "unitNo", "unitName"),
                                 (expected.serial, expected.officer_no, expected.officer_name,
                                  expected.unit_no, expected.unit_name), strict=True))  # fmt: skip
                self._json("WriteZFYInfo", info=block)
            back = self._read_info()
            if back != expected:
                raise ProtocolError(
                    f"{self.label}: WriteZFYInfo answered success, but the recorder holds "
                    f"serial {back.serial}, officer {back.officer_no}: not written"
                )
            self.serial = expected.serial

        self._call(go)

    def battery_percent(self) -> int:
        def go() -> int:
            self._current()
            if self.config.format == "e12":
                self._check_password()
                text = self._text(self._e12("battery"), "the battery level")
                try:
                    value = int(text)
                except ValueError:
                    raise ProtocolError(f"{self.label}: battery level {text!r}") from None
            else:
                value = self._json("ReadDeviceBatteryDumpEnergy").get("Battery")
                if not isinstance(value, int):
                    raise ProtocolError(f"{self.label}: battery level {value!r}")
            if not 0 <= value <= 100:
                raise ProtocolError(f"{self.label}: battery level {value} is not 0-100")
            return value

        return self._call(go)

    def resolution(self) -> tuple[int, int]:
        """ReadDeviceResolution: the recording width and height."""

        def go() -> tuple[int, int]:
            self._current()
            if self.config.format == "e12":
                self._check_password()
                text = self._text(self._e12("resolution"), "the resolution")
                m = re.fullmatch(r"(\d+)\s*[*xX]\s*(\d+)", text)
                if not m:
                    raise ProtocolError(f"{self.label}: resolution {text!r}")
                return int(m.group(1)), int(m.group(2))
            a = self._json("ReadDeviceResolution")
            w, h = a.get("Width"), a.get("Height")
            if not isinstance(w, int) or not isinstance(h, int) or w <= 0 or h <= 0:
                raise ProtocolError(f"{self.label}: resolution {w}x{h}")
            return w, h

        return self._call(go)

    def set_clock(self, now: dt.datetime) -> float | None:
        """SyncDevTime with `now`'s wall-clock fields (e12 sends them as text); no drift."""

        def go() -> None:
            self._current()
            if self.config.format == "e12":
                self._check_password()
                self._e12("sync_time", now.strftime("%Y-%m-%d %H:%M:%S").encode("ascii"))
            else:
                self._json("SyncDevTime", sTime=now.strftime("%Y-%m-%d %H:%M:%S"))

        self._call(go)
        return None

    def enter_mass_storage(self) -> None:
        if self._msdc:
            return

        def go() -> None:
            self._current()
            if self.config.format == "e12":
                self._check_password()
                self._e12("msdc")
            else:
                self._json("SetMSDC")

        self._call(go)
        self._msdc = True

    def alive(self) -> bool:
        if self._closed:
            return False
        try:
            state = self.driver.adb.devices().get(self.device.serial or "")
        except RecorderError:
            return False
        return state == "device" or (self._msdc and state is not None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RecorderError, OSError), self._lock:
            if self.config.format == "e12":
                self.stream.send_frame(E12_COMMANDS["release"].encode("ascii"))
            else:
                self.stream.send_json({"cmd": "UnInit_Device"})
        self.stream.close()


# --- the driver -----------------------------------------------------------------------------


class AndroidAdbDriver(RecorderDriver):
    """Android recorders of one family, their service reached through the adb server."""

    def __init__(self, config: AndroidAdbConfig) -> None:
        self.config = config
        self.name = config.name
        self._ids = config.usb_id_pairs()
        self.adb = AdbClient(config)

    def match(self, device: DockedDevice) -> int:
        """The USB ids only: asking the adb server is left to `open`."""
        if device.kind != "usb" or device.vendor_id is None or device.product_id is None:
            return 0
        return 90 if (device.vendor_id, device.product_id) in self._ids else 0

    @staticmethod
    def still_docked(
        device: DockedDevice, error: DeviceGone, opening: bool = False
    ) -> RecorderError:
        """A lost service or an adb that does not list the device means "unplugged" only
        when the USB device is gone too. With it still in sysfs: while opening, busy (adb
        or the service may not be up yet: the station retries with a growing delay); in
        a session, an error of its own (so that the station does not re-dock it at once)."""
        if usb_present(device) is not True:
            return error
        detail = f"{error.detail} although the recorder is still docked on port {device.port}"
        return DeviceBusy(detail) if opening else ProtocolError(detail)

    def open(self, device: DockedDevice, passwords: list[str]) -> AndroidAdbSession:
        try:
            return self._open(device, passwords)
        except DeviceGone as e:
            raise self.still_docked(device, e, opening=True) from None

    def _open(self, device: DockedDevice, passwords: list[str]) -> AndroidAdbSession:
        label = f"{self.name} (port {device.port})"
        serial = (device.serial or "").strip()
        if not serial:
            raise WrongRecorder(f"{label}: the docked device has no USB serial to ask adb for")
        state = self.adb.devices().get(serial)
        if state is None:
            raise DeviceGone(f"{label}: adb does not see device {serial}")
        if state != "device":
            raise ProtocolError(f"{label}: adb sees {serial} as {state!r} (not authorised?)")
        sock = self.adb.open_stream(serial, self.config.device_port)
        sock.settimeout(self.config.timeout_s)
        session = AndroidAdbSession(self, device, _Stream(sock, self.config, label))
        try:
            session.password = self._find_password(session, passwords, label)
            info = session.officer_info()
            if self.config.require_serial_match and info.serial != serial:
                raise WrongRecorder(
                    f"{label}: adb device {serial} answers for recorder {info.serial}"
                )
            session.serial = info.serial
        except BaseException:
            session.close()
            raise
        return session

    def _find_password(self, session: AndroidAdbSession, passwords: list[str], label: str) -> str:
        if self.config.format == "e12":
            with session._lock:
                stored = session._e12("admin_password")
            for pw in passwords:
                if session._password_is(stored, pw):
                    return pw
            raise AuthFailed(f"{label}: none of {len(passwords)} configured passwords accepted")
        for pw in passwords:
            session.password = pw
            try:
                with session._lock:
                    session._json("ReadDeviceBatteryDumpEnergy")
            except AuthFailed:
                continue
            return pw
        raise AuthFailed(f"{label}: none of {len(passwords)} configured passwords accepted")
