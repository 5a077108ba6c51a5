"""A body-worn recorder made of a Linux USB gadget, for the HIL guest.

One process per recorder, inside the guest. It builds a configfs gadget with
two functions: a FunctionFS one (one interface of class 0xFF, two bulk
endpoints, FUNCTIONFS_ALL_CTRL_RECIP so that vendor requests to the device
reach us) whose EP0 this process answers with station/drivers/usb_vendor_proto.py's
ReferenceRecorder, and a mass_storage one whose LUN is the card image. It
starts in vendor mode with the vendor product id; SET_MSDC unbinds the gadget,
swaps the functions, sets the disk's product id and binds again, so the
recorder re-enumerates on its port as a USB disk, as real ones do.

It is driven through a FIFO, one command a line:
  dock     plug in, in vendor mode (a fresh recorder, as when docked)
  unplug   pull the cable (unbind from the UDC), whatever the mode
  quit     unplug and exit
and reports to a JSON state file: mode, requests served, clock offset, timings.

Usage: gadget_recorder.py SPEC.json   (keys: see RecorderSpec)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import selectors
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))  # PYTHONPATH, if set, comes first

from station.drivers import usb_vendor_proto as proto

GADGETS = Path("/sys/kernel/config/usb_gadget")
FFS_ROOT = Path("/dev/ffs")

# linux/usb/functionfs.h
DESCRIPTORS_MAGIC_V2 = 3
STRINGS_MAGIC = 2
HAS_FS_DESC = 1
HAS_HS_DESC = 2
ALL_CTRL_RECIP = 64
EVENT_SIZE = 12  # struct usb_functionfs_event: 8-byte setup, type, 3 pad
EVENT_NAMES = {0: "BIND", 1: "UNBIND", 2: "ENABLE", 3: "DISABLE", 4: "SETUP"}
EVENT_SETUP = 4
RESETTING_EVENTS = {0, 1, 2, 3}  # BIND, UNBIND, ENABLE, DISABLE: the host starts over
SWITCH_DELAY_S = 0.1  # let the status stage of SET_MSDC reach the host first


@dataclasses.dataclass
class RecorderSpec:
    """One gadget recorder, as the test plan describes it."""

    name: str  # configfs gadget and FunctionFS instance name
    udc: str  # dummy_udc.N: the dock port
    card: str  # block device or image file backing the card
    state_file: str
    control: str  # FIFO path
    serial: str
    officer_no: str
    officer_name: str = ""
    unit_no: str = ""
    unit_name: str = ""
    id_code: str = "ZFY01"
    password: str = "000000"
    battery_percent: int = 80
    clock_offset_s: float = 0.0
    vendor_id: int = 0x1209
    product_id: int = 0x0007  # vendor-interface mode
    disk_product_id: int = 0x0008  # mass-storage mode
    manufacturer: str = "HIL"
    product: str = "ZFY recorder"


def _descriptors() -> bytes:
    """FunctionFS v2 descriptors: one vendor interface with bulk IN and OUT, FS and HS."""

    def intf() -> bytes:
        return struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 2, 0xFF, 0, 0, 1)

    def ep(address: int, packet: int) -> bytes:
        return struct.pack("<BBBBHB", 7, 5, address, 2, packet, 0)

    fs = intf() + ep(0x81, 64) + ep(0x02, 64)
    hs = intf() + ep(0x81, 512) + ep(0x02, 512)
    flags = HAS_FS_DESC | HAS_HS_DESC | ALL_CTRL_RECIP
    body = struct.pack("<II", 3, 3) + fs + hs
    return struct.pack("<III", DESCRIPTORS_MAGIC_V2, 12 + len(body), flags) + body


def _strings() -> bytes:
    text = b"ZFYV recorder interface\0"
    body = struct.pack("<H", 0x0409) + text
    return struct.pack("<IIII", STRINGS_MAGIC, 16 + len(body), 1, 1) + body


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class GadgetRecorder:
    """The gadget, its EP0 responder and its mode switches."""

    def __init__(self, spec: RecorderSpec) -> None:
        self.spec = spec
        self.g = GADGETS / spec.name
        self.ffs_dir = FFS_ROOT / spec.name
        self.ffs_func = self.g / "functions" / f"ffs.{spec.name}"
        self.msc_func = self.g / "functions" / f"mass_storage.{spec.name}"
        self.config = self.g / "configs" / "c.1"
        state = proto.RecorderState(
            id_code=spec.id_code,
            password=spec.password,
            officer=proto.OfficerBlock(
                spec.serial, spec.officer_no, spec.officer_name, spec.unit_no, spec.unit_name
            ),
            battery_percent=spec.battery_percent,
            clock_offset_s=spec.clock_offset_s,
        )
        self.rec = proto.ReferenceRecorder(state)
        self.mode = "unplugged"
        self.ep0 = -1
        self.requests: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.history: list[dict[str, object]] = []
        self.errors: list[str] = []
        self.t0 = time.monotonic()

    # --- configfs ---------------------------------------------------------------------

    def create(self) -> None:
        """Build the gadget and open FunctionFS; bound to no UDC yet (unplugged)."""
        s = self.spec
        self.g.mkdir()
        _write(self.g / "idVendor", f"{s.vendor_id:#06x}")
        _write(self.g / "idProduct", f"{s.product_id:#06x}")
        _write(self.g / "bcdDevice", "0x0100")
        _write(self.g / "bcdUSB", "0x0200")
        strings = self.g / "strings" / "0x409"
        strings.mkdir()
        _write(strings / "manufacturer", s.manufacturer)
        _write(strings / "product", s.product)
        _write(strings / "serialnumber", s.serial)
        self.config.mkdir()
        _write(self.config / "MaxPower", "500")
        (self.config / "strings" / "0x409").mkdir()
        _write(self.config / "strings" / "0x409" / "configuration", "recorder")
        self.msc_func.mkdir()
        lun = self.msc_func / "lun.0"
        _write(lun / "removable", "1")
        _write(lun / "inquiry_string", f"{s.manufacturer:<8.8}{s.product:<16.16}0100")
        _write(lun / "file", s.card)
        self.ffs_func.mkdir()
        self.ffs_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "functionfs", s.name, str(self.ffs_dir)], check=True, timeout=30
        )
        self.ep0 = os.open(self.ffs_dir / "ep0", os.O_RDWR)
        os.write(self.ep0, _descriptors())
        os.write(self.ep0, _strings())

    def _link(self, function: Path) -> None:
        for entry in self.config.iterdir():
            if entry.is_symlink():
                entry.unlink()
        (self.config / function.name).symlink_to(function)

    def _bind(self) -> None:
        _write(self.g / "UDC", self.spec.udc)

    def _unbind(self) -> None:
        if (self.g / "UDC").read_text().strip():
            _write(self.g / "UDC", "\n")

    def dock(self) -> None:
        """Plug in as a fresh recorder in vendor mode."""
        self._unbind()
        self.rec.reset()
        _write(self.g / "idProduct", f"{self.spec.product_id:#06x}")
        self._link(self.ffs_func)
        self._bind()
        self._set_mode("vendor")

    def switch_to_disk(self) -> None:
        """SET_MSDC: leave, and come back as the card's USB disk on the same port."""
        time.sleep(SWITCH_DELAY_S)
        self._unbind()
        _write(self.g / "idProduct", f"{self.spec.disk_product_id:#06x}")
        self._link(self.msc_func)
        self._bind()
        self._set_mode("disk")

    def unplug(self) -> None:
        self._unbind()
        self.rec.reset()
        self._set_mode("unplugged")

    def destroy(self) -> None:
        """Take the gadget apart (best effort)."""
        try:
            self._unbind()
            for entry in self.config.iterdir():
                if entry.is_symlink():
                    entry.unlink()
            if self.ep0 >= 0:
                os.close(self.ep0)
                self.ep0 = -1
            subprocess.run(["umount", str(self.ffs_dir)], check=False, timeout=30)
            for d in (
                self.config / "strings" / "0x409",
                self.config,
                self.ffs_func,
                self.msc_func,
                self.g / "strings" / "0x409",
                self.g,
            ):
                d.rmdir()
        except OSError as e:
            self.errors.append(f"teardown: {e}")

    # --- EP0 ----------------------------------------------------------------------------

    def on_ep0(self) -> None:
        """One FunctionFS event."""
        try:
            raw = os.read(self.ep0, EVENT_SIZE)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN):
                return
            raise
        if len(raw) < EVENT_SIZE:
            return
        kind = raw[8]
        if kind in RESETTING_EVENTS:
            self.rec.reset()
            return
        if kind != EVENT_SETUP:
            return
        bm, request, value, index, length = struct.unpack("<BBHHH", raw[:8])
        name = proto.request_name(request)
        ok = self._answer(bm, request, value, index, length)
        counts = self.requests if ok else self.failures
        counts[name] = counts.get(name, 0) + 1
        if request == proto.Request.SET_TIME and ok:
            self._note("clock_set", clock_offset_s=round(self.rec.state.clock_offset_s, 3))
        if self.rec.switch_requested:
            self.rec.switch_requested = False
            self._note("set_msdc")
            self.switch_to_disk()
        elif request in (proto.Request.AUTH, proto.Request.SET_TIME):
            self.save()

    def _answer(self, bm: int, request: int, value: int, index: int, length: int) -> bool:
        """Answer one SETUP the way ReferenceRecorder's docstring says; True if it succeeded."""
        if bm & proto.DIR_IN:
            try:
                reply = self.rec.setup(bm, request, value, index, length)
            except proto.Stall:
                self._stall(read=True)
                return False
            os.write(self.ep0, reply or b"")
            return True
        if length:
            data = os.read(self.ep0, length)  # completes the data and status stages
            try:
                self.rec.setup(bm, request, value, index, data)
            except proto.Stall:
                return False  # the host reads LAST_STATUS after every OUT with data
            return True
        try:
            self.rec.setup(bm, request, value, index, b"")
        except proto.Stall:
            self._stall(read=False)
            return False
        os.read(self.ep0, 0)  # acknowledge the status stage
        return True

    def _stall(self, *, read: bool) -> None:
        """Halt EP0: FunctionFS stalls on the wrong-direction read or write."""
        try:
            if read:
                os.read(self.ep0, 0)
            else:
                os.write(self.ep0, b"")
        except OSError as e:
            if e.errno != errno.EL2HLT:
                self.errors.append(f"stall: {e}")

    # --- state ----------------------------------------------------------------------------

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        self._note(mode)
        self.save()

    def _note(self, what: str, **data: object) -> None:
        self.history.append({"at": round(time.monotonic() - self.t0, 3), "what": what, **data})

    def save(self) -> None:
        """Write the state file atomically."""
        state = {
            "name": self.spec.name,
            "serial": self.spec.serial,
            "mode": self.mode,
            "clock_offset_s": self.rec.state.clock_offset_s,
            "unix_offset_s": self.rec.unix_offset_s,
            "officer": dataclasses.asdict(self.rec.state.officer),
            "requests": self.requests,
            "failures": self.failures,
            "history": self.history,
            "errors": self.errors,
            "time": dt.datetime.now().isoformat(),
        }
        path = Path(self.spec.state_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    # --- main loop ------------------------------------------------------------------------

    def run(self) -> None:
        control_path = Path(self.spec.control)
        if not control_path.exists():
            os.mkfifo(control_path)
        control = os.open(control_path, os.O_RDWR | os.O_NONBLOCK)  # RDWR: never sees EOF
        sel = selectors.DefaultSelector()
        sel.register(self.ep0, selectors.EVENT_READ, "ep0")
        sel.register(control, selectors.EVENT_READ, "control")
        self.save()
        pending = b""
        while True:
            for key, _ in sel.select():
                if key.data == "ep0":
                    try:
                        self.on_ep0()
                    except OSError as e:
                        self.errors.append(f"ep0: {e}")
                        self.save()
                    continue
                pending += os.read(control, 4096)
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    command = line.decode().strip()
                    if command == "dock":
                        self.dock()
                    elif command == "unplug":
                        self.unplug()
                    elif command == "quit":
                        self.unplug()
                        return
                    elif command:
                        self.errors.append(f"unknown command {command!r}")


def main() -> int:
    spec = RecorderSpec(**json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
    gadget = GadgetRecorder(spec)
    try:
        gadget.create()
        gadget.run()
    finally:
        gadget.save()
        gadget.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
