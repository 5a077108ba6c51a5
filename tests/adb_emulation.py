"""An adb server and Android recorder services, emulated on local sockets.

`AdbServer` implements the server side of the adb host protocol (the "smart
socket" protocol the `adb` command speaks to the server on port 5037): a request
is four hex digits of length and the request text; the answer is OKAY, or FAIL
with a hex length and a message. It knows `host:devices`,
`host:transport:<serial>` and, on a transport, `tcp:<port>`, after which the
connection is the stream to the device's service. It stands in for Debian's adb
server with real recorders behind it; the driver speaks to it exactly as to that.

`E12Recorder` is a recorder's service as the public E12 service code runs it:
messages framed by a 4-byte length (lowest byte first), commands `E12CMDS0xx`,
each answered `E12DATR880` and then the result; it checks no password and hands
its administrator password to `E12CMDS010`. `JsonRecorder` is the JSON family:
one object per line, the C calls rendered as JSON, the password checked by the
recorder (iRet 4).

The wire format is this module's own, written from the public E12 service code
(its ZFY_INFO under `#pragma pack(1)`: five GBK fields at fixed offsets, NUL-padded,
no terminator when full), never from the driver's codec (station/drivers/zfy.py), so that a
layout bug in the driver shows up as a disagreement instead of being mirrored here.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from station.drivers.base import OfficerInfo

# --- ZFY_INFO as the E12 service sends it (#pragma pack(1), 89 bytes) -------------------------

# (member, offset, width): char cSerial[7]; char userNo[6]; char userName[32];
# char unitNo[12]; char unitName[32]
E12_BLOCK_FIELDS = (
    ("cSerial", 0, 7),
    ("userNo", 7, 6),
    ("userName", 13, 32),
    ("unitNo", 45, 12),
    ("unitName", 57, 32),
)
E12_BLOCK_SIZE = 89
assert sum(w for _, _, w in E12_BLOCK_FIELDS) == E12_BLOCK_SIZE


def e12_pack(info: OfficerInfo) -> bytes:
    """The 89-byte block the service sends: each field GBK, NUL-padded to its width."""
    values = (info.serial, info.officer_no, info.officer_name, info.unit_no, info.unit_name)
    out = bytearray(E12_BLOCK_SIZE)
    for (member, offset, width), value in zip(E12_BLOCK_FIELDS, values, strict=True):
        raw = value.encode("gbk")
        if len(raw) > width:
            raise ValueError(f"{member}: {len(raw)} bytes do not fit {width}")
        struct.pack_into(f"{width}s", out, offset, raw)  # struct pads with NULs
    return bytes(out)


def e12_unpack(block: bytes) -> OfficerInfo:
    """A block the host wrote, as the service's memcpy sees it: each field up to its NUL."""
    if len(block) != E12_BLOCK_SIZE:
        raise ValueError(f"block of {len(block)} bytes")
    values = []
    for _, offset, width in E12_BLOCK_FIELDS:
        (raw,) = struct.unpack_from(f"{width}s", block, offset)
        values.append(raw.split(b"\0", 1)[0].decode("gbk"))
    if not values[0] or not values[1]:
        raise ValueError("no serial or officer number")
    return OfficerInfo(*values)


@dataclass
class RecorderState:
    """What one recorder holds; the services read and change it."""

    serial: str
    officer_no: str
    officer_name: str = "张三"
    unit_no: str = "110101"
    unit_name: str = "城关派出所"
    id_code: str = "ZFY01"
    password: str = "654321"
    battery: int = 67
    msdc: bool = False
    clock: str | None = None
    write_ignored: bool = False
    received: list[bytes] = field(default_factory=list)  # every message it was sent

    def info(self) -> OfficerInfo:
        return OfficerInfo(
            self.serial, self.officer_no, self.officer_name, self.unit_no, self.unit_name
        )

    def store(self, info: OfficerInfo) -> None:
        if not self.write_ignored:
            self.serial, self.officer_no = info.serial, info.officer_no
            self.officer_name, self.unit_no, self.unit_name = (
                info.officer_name,
                info.unit_no,
                info.unit_name,
            )


def _recv(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class E12Recorder:
    """The E12 service on one connection (written from the public E12 service code)."""

    def __init__(self, state: RecorderState) -> None:
        self.s = state

    def send(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(struct.pack("<I", len(data)) + data)

    def recv(self, sock: socket.socket) -> bytes | None:
        head = _recv(sock, 4)
        if head is None:
            return None
        data = _recv(sock, struct.unpack("<I", head)[0])
        if data is not None:
            self.s.received.append(data)
        return data

    def serve(self, sock: socket.socket) -> None:
        while True:
            cmd = self.recv(sock)
            if cmd is None or not cmd.startswith(b"E12"):
                return  # the service drops a connection that does not speak E12
            text = cmd.decode("ascii", "replace")
            if text == "E12CMDS002":  # release
                self.send(sock, b"NULL")
                continue
            self.send(sock, b"E12DATR880")  # working on it
            s = self.s
            if text == "E12CMDS009":
                self.send(sock, s.id_code.encode())
            elif text == "E12CMDS010":
                self.send(sock, s.password.encode())
            elif text == "E12CMDS004":
                self.send(sock, e12_pack(s.info()))
            elif text == "E12CMDS005":
                block = self.recv(sock) or b""
                try:
                    s.store(e12_unpack(block))
                    self.send(sock, b"E12DATR021")
                except ValueError:
                    self.send(sock, b"E12DATR020")
            elif text == "E12CMDS003":
                s.clock = (self.recv(sock) or b"").decode()
                self.send(sock, b"E12DATR001")
            elif text == "E12CMDS008":
                s.msdc = True
                self.send(sock, b"E12DATR011")
            elif text == "E12CMDS006":
                self.send(sock, b"1920*1080")
            elif text == "E12CMDS007":
                self.send(sock, str(s.battery).encode())
            else:
                self.send(sock, b"E12DATR999")


class JsonRecorder:
    """The JSON family's service on one connection: the C calls as JSON objects."""

    def __init__(self, state: RecorderState) -> None:
        self.s = state

    def serve(self, sock: socket.socket) -> None:
        pending = b""
        while True:
            while b"\n" not in pending:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                pending += chunk
            line, _, pending = pending.partition(b"\n")
            self.s.received.append(line)
            sock.sendall(json.dumps(self.answer(json.loads(line))).encode() + b"\n")

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        s, cmd = self.s, req.get("cmd")
        if cmd in ("GetIDCode", "Init_Device"):
            return {"ret": 1, "iRet": 1, "IDCode": s.id_code}
        if cmd == "UnInit_Device":
            return {"ret": 1, "iRet": 1}
        if req.get("sPwd") != s.password:
            return {"ret": 0, "iRet": 4}
        if cmd == "GetZFYInfo":
            i = s.info()
            keys = ("cSerial", "userNo", "userName", "unitNo", "unitName")
            values = (i.serial, i.officer_no, i.officer_name, i.unit_no, i.unit_name)
            return {"ret": 1, "iRet": 1, "info": dict(zip(keys, values, strict=True))}
        if cmd == "WriteZFYInfo":
            b = req["info"]
            s.store(
                OfficerInfo(b["cSerial"], b["userNo"], b["userName"], b["unitNo"], b["unitName"])
            )
            return {"ret": 1, "iRet": 0 if s.write_ignored else 1}
        if cmd == "SyncDevTime":
            s.clock = req.get("sTime")
            return {"ret": 1, "iRet": 5}
        if cmd == "SetMSDC":
            s.msdc = True
            return {"ret": 1, "iRet": 7}
        if cmd == "ReadDeviceBatteryDumpEnergy":
            return {"ret": 1, "iRet": 1, "Battery": s.battery}
        if cmd == "ReadDeviceResolution":
            return {"ret": 1, "iRet": 1, "Width": 1920, "Height": 1080}
        return {"ret": 0, "iRet": 2}


class AdbServer:
    """The server side of the adb host protocol, with devices and their services."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.devices: dict[str, tuple[str, dict[int, Any]]] = {}  # serial -> state, services
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="adb-server").start()

    def add(self, serial: str, port: int, service: Any, state: str = "device") -> None:
        with self._lock:
            self.devices[serial] = (state, {port: service})

    def remove(self, serial: str) -> None:
        with self._lock:
            self.devices.pop(serial, None)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for s in list(self._open):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._open.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _request(self, conn: socket.socket) -> str | None:
        head = _recv(conn, 4)
        if head is None:
            return None
        body = _recv(conn, int(head, 16))
        text = None if body is None else body.decode()
        if text is not None:
            with self._lock:
                self.requests.append(text)
        return text

    @staticmethod
    def _fail(conn: socket.socket, message: str) -> None:
        data = message.encode()
        conn.sendall(b"FAIL" + b"%04x" % len(data) + data)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                req = self._request(conn)
                if req == "host:devices":
                    with self._lock:
                        text = "".join(f"{s}\t{st}\n" for s, (st, _) in self.devices.items())
                    conn.sendall(b"OKAY" + b"%04x" % len(text.encode()) + text.encode())
                    return
                if req is None or not req.startswith("host:transport:"):
                    self._fail(conn, f"unknown host service {req!r}")
                    return
                serial = req.removeprefix("host:transport:")
                with self._lock:
                    device = self.devices.get(serial)
                if device is None:
                    self._fail(conn, f"device '{serial}' not found")
                    return
                if device[0] != "device":
                    self._fail(conn, f"device {serial} is {device[0]}")
                    return
                conn.sendall(b"OKAY")
                req = self._request(conn)
                if req is None or not req.startswith("tcp:"):
                    self._fail(conn, f"unknown service {req!r}")
                    return
                service = device[1].get(int(req.removeprefix("tcp:")))
                if service is None:
                    self._fail(conn, "closed")  # nothing listens on that port of the device
                    return
                conn.sendall(b"OKAY")
                service.serve(conn)
            except OSError:
                return
